"""Run settings, layered as in RecBole: defaults < YAML file < command line (--set key=value).

Every setting is a field of :class:`Config` with a type and a valid range; an
unknown key or an out-of-range value raises ``ConfigError`` naming both.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import ConfigError

#: the methods (setting ``model``), one spelling each; :data:`hqgnn.models.METHODS` holds their classes
MODELS = ("lightgcn", "hqgnn", "ste", "hashgnn", "bigear", "lsh", "ptq")
QUANTIZED_MODELS = ("hqgnn", "ste", "hashgnn", "bigear", "lsh", "ptq")
#: full-precision models, as settings and experiment cells spell them (``mf``: lightgcn with 0 layers)
FULL_PRECISION_MODELS = ("lightgcn", "mf")
ONE_BIT_MODELS = ("hashgnn", "bigear", "lsh")  # sign codes only: --bits does not apply
POST_HOC_MODELS = ("lsh", "ptq")
#: the trained quantized methods a teacher run can distil into (setting distill_from; hqgnn.models.distill)
DISTILLED_MODELS = ("hqgnn", "ste", "hashgnn")


@dataclass
class Config:
    """Every setting of a run, with its default; :meth:`load` layers files and flags over them.

    >>> cfg = Config.load("configs/ml-1m-hqgnn.yaml", overrides=["bits=2"], extra={"data": "synthetic"})

    Groups: the method and its encoder (``model``, ``dim``, ``layers``, ...), quantization
    (``bits``, ``scale_mode``, the GSTE's ``delta_*`` and ``hutchinson_*``, docs/method.md,
    'Quantizer' and 'GSTE'), training (``epochs``, ``lr``, ``batch_size``, ...; 'Training'),
    evaluation (``ks``, ``eval_split``; 'Protocol') and data (``data``, splits,
    preprocessing). Only :func:`hqgnn.models.build_model` turns the method settings into a
    model; the trainer reads the training settings.

    One spelling each; old spellings (run folders and configs written before) still read,
    and :meth:`validate` rewrites them, so a saved ``config.yaml`` holds the one spelling:

    * ``model: mf`` is ``model: lightgcn, layers: 0`` (matrix factorisation is LightGCN without
      propagation; any ``layers`` / ``layer_weights`` beside it are dropped, as they always were).
    * the STE is ``model: ste``; ``estimator: ste`` (with ``model: hqgnn``) reads as that, and
      ``estimator: gste`` (the old default) as nothing. ``delta_scale: 0`` is an ablation knob of
      ``hqgnn``: it trains exactly as ``ste`` (and still spends the trace estimates).

    Raises (from :meth:`load`, :meth:`updated`, :meth:`validate`):
    :class:`~hqgnn.errors.ConfigError` naming the setting, the value and where it came from.
    """

    # model
    model: str = "lightgcn"  # the method: lightgcn | hqgnn | ste | hashgnn | bigear | lsh | ptq
    dim: int = 64
    layers: int = 3  # LightGCN propagation depth; 0 is matrix factorisation
    layer_weights: Optional[list] = None
    init_std: float = 0.1
    # quantization (models hqgnn, ste, hashgnn, bigear, lsh, ptq)
    bits: int = 4
    scale_mode: str = "calibrated"  # calibrated (from each forward's statistics) | learned (LSQ gradient)
    fp_loss_weight: float = 0.0  # weight of an extra full-precision BPR term (ablation)
    # weight of a BPR term on the codes' sign plane (hqgnn / ste at bits >= 2): the nested loss
    # that trains the 1-bit prefix a cascade search ranks candidates with; 0 = none
    sign_loss_weight: float = 0.0
    ste_window: float = 1.0  # the straight-through gradient passes where |x| <= window * the grid's range
    hutchinson_probes: int = 50
    hutchinson_tol: float = 1e-3
    hutchinson_batches: int = 3
    delta_every: int = 10  # epochs between Hessian-trace estimates
    # multiplies the estimated delta: 1 is the formula of docs/method.md ('GSTE'), 0 trains as
    # model ste; an ablation knob.
    # A negative value reverses the GSTE's correction (a diagnostic of its direction, not the method)
    delta_scale: float = 1.0
    delta_warmup: int = 0  # epochs with delta = 0 before the first estimate
    hashgnn_soft: bool = False
    hashgnn_soft_p0: float = 1.0  # probability of using the continuous value at epoch 0
    hashgnn_soft_decay: float = 0.9  # multiplied into that probability each epoch
    # trained full-precision run: what lsh / ptq quantize; where the trained quantized models start
    # (a pre-training stage, as quantization-aware training from a full-precision model)
    from_run: Optional[str] = None
    # ranking distillation (hqgnn.models.distill, docs/method.md 'Distillation'): a trained float
    # lightgcn run on the same data as teacher (null = off); its top distill_top items of each user
    # (training items excluded), one drawn per BPR triple with probability ~ exp(-rank / distill_decay),
    # ranked above the triple's negative in a BPR term on the codes' scores, weighted distill_weight
    distill_from: Optional[str] = None
    distill_weight: float = 1.0
    distill_top: int = 50
    distill_decay: float = 25.0
    # training
    epochs: int = 1000
    batch_size: int = 2048
    lr: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine (from lr down to lr * lr_min_ratio over `epochs`)
    lr_min_ratio: float = 0.01
    weight_decay: float = 1e-4
    negatives: int = 1  # negative candidates drawn per positive
    negative_sampling: str = "uniform"  # uniform (BPR over every candidate) | hard (the top-scored candidate)
    # interactions: every training pair once per epoch | users: as many pairs, each a uniformly
    # drawn user and one of its items (the LightGCN authors' sampler; weighs users equally, as
    # the per-user averaged metrics do)
    positive_sampling: str = "interactions"
    max_train_seconds: Optional[float] = None
    eval_every: int = 10
    eval_split: str = "valid"  # split monitored during training: valid (if any) or test
    early_stop_metric: str = "recall@20"
    patience: int = 10  # evaluations without improvement before stopping; 0 disables
    val_fraction: float = 0.1
    seed: int = 2020
    device: str = "auto"
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    # distributed training (hqgnn.distributed, docs/distributed.md; ignored by the single-process trainer):
    # neighbours drawn per node at each of the `layers` hops (-1 = all; null = all at every hop)
    fanout: Optional[list] = None
    # the optimizer fused into the sharded table: rowwise_adagrad | adagrad | sgd | adam (CUDA only)
    sparse_optimizer: str = "rowwise_adagrad"
    # evaluation
    ks: list = field(default_factory=lambda: [20, 50, 100])
    eval_batch_size: int = 4096
    # data
    data: Optional[str] = None  # a LightGCN folder, a .inter/.csv/.tsv/.parquet file, or "synthetic"
    test_fraction: float = 0.2  # only for single-file inputs without a split
    split_seed: int = 2020
    user_column: Optional[str] = None
    item_column: Optional[str] = None
    rating_column: Optional[str] = None  # found by name (rating, score) when not set
    timestamp_column: Optional[str] = None  # found by name (timestamp, time, ts, date) when not set
    # preprocessing of single-file inputs, in this order (hqgnn.data.table):
    duplicates: str = "first"  # a repeated (user, item) keeps its first | last row (by timestamp, else file order)
    min_rating: Optional[float] = None  # keep rows rated at least this (explicit -> implicit feedback)
    min_user_interactions: int = 0  # k-core: users with fewer are removed, iterated with items to a fixed point
    min_item_interactions: int = 0
    split_method: str = "random"  # random | temporal | global_time | leave_one_out (test, then validation)
    # a (user, item) pair in both train and test of a pre-split input: error | drop (from test)
    train_test_overlap: str = "error"
    synthetic_users: int = 3000
    synthetic_items: int = 2000
    synthetic_seed: int = 0
    # an old spelling, read and resolved by validate(), never written: see the class docstring
    estimator: Optional[str] = field(default=None, repr=False, compare=False, metadata={"alias": True})

    # ------------------------------------------------------------ validation
    def validate(self) -> "Config":
        """Check every setting (raises :class:`~hqgnn.errors.ConfigError` naming the first one out
        of range) after rewriting old spellings in place (see the class docstring); returns self."""
        self._resolve_aliases()

        def need(cond: bool, key: str, expect: str) -> None:
            if not cond:
                raise ConfigError(f"setting {key}={getattr(self, key)!r} is out of range: expected {expect}")

        need(self.model in MODELS, "model", " | ".join(MODELS) + " (or mf: lightgcn with layers 0)")
        need(self.dim >= 1, "dim", ">= 1")
        need(self.layers >= 0, "layers", ">= 0")
        if self.layer_weights is not None:
            need(len(self.layer_weights) == self.layers + 1, "layer_weights", f"a list of layers + 1 = {self.layers + 1} numbers")
        need(self.init_std > 0, "init_std", "> 0")
        need(1 <= self.bits <= 8, "bits", "an integer from 1 to 8")
        need(self.scale_mode in ("learned", "calibrated"), "scale_mode", "learned | calibrated")
        need(self.fp_loss_weight >= 0, "fp_loss_weight", ">= 0")
        need(self.sign_loss_weight >= 0, "sign_loss_weight", ">= 0")
        if self.sign_loss_weight > 0 and (self.model not in ("hqgnn", "ste") or self.bits < 2):
            raise ConfigError(f"setting sign_loss_weight={self.sign_loss_weight:g} applies to hqgnn and ste at bits >= 2 "
                              f"(their codes' sign plane), not to model={self.model!r} with bits={self.bits}")
        need(self.ste_window > 0, "ste_window", "> 0")
        need(isinstance(self.negatives, int) and self.negatives >= 1, "negatives", "an integer >= 1")
        need(self.negative_sampling in ("uniform", "hard"), "negative_sampling", "uniform | hard")
        need(self.positive_sampling in ("interactions", "users"), "positive_sampling", "interactions | users")
        need(self.hutchinson_probes >= 1, "hutchinson_probes", ">= 1")
        need(self.hutchinson_tol >= 0, "hutchinson_tol", ">= 0")
        need(self.hutchinson_batches >= 1, "hutchinson_batches", ">= 1")
        need(self.delta_every >= 1, "delta_every", ">= 1")
        need(math.isfinite(self.delta_scale), "delta_scale", "a finite number")
        need(self.delta_warmup >= 0, "delta_warmup", ">= 0")
        need(math.isfinite(self.distill_weight) and self.distill_weight >= 0, "distill_weight", "a finite number >= 0")
        need(self.distill_top >= 1, "distill_top", "an integer >= 1")
        need(math.isfinite(self.distill_decay) and self.distill_decay > 0, "distill_decay", "a finite number > 0")
        need(0 <= self.hashgnn_soft_p0 <= 1, "hashgnn_soft_p0", "a probability in [0, 1]")
        need(0 <= self.hashgnn_soft_decay <= 1, "hashgnn_soft_decay", "in [0, 1]")
        need(self.epochs >= 0, "epochs", ">= 0")
        need(self.batch_size >= 1, "batch_size", ">= 1")
        need(self.lr > 0, "lr", "> 0")
        need(self.lr_schedule in ("constant", "cosine"), "lr_schedule", "constant | cosine")
        need(0 <= self.lr_min_ratio <= 1, "lr_min_ratio", "in [0, 1]")
        need(self.weight_decay >= 0, "weight_decay", ">= 0")
        need(self.max_train_seconds is None or self.max_train_seconds > 0, "max_train_seconds", "> 0 or null")
        need(self.eval_every >= 1, "eval_every", ">= 1")
        need(self.eval_split in ("valid", "test"), "eval_split", "valid | test")
        need(self.patience >= 0, "patience", ">= 0")
        need(0 <= self.val_fraction < 1, "val_fraction", "in [0, 1)")
        need(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device", "auto | cpu | cuda")
        need(self.threads >= 0, "threads", ">= 0")
        if self.fanout is not None:
            need(len(self.fanout) == self.layers and all(isinstance(f, int) and not isinstance(f, bool) and (f == -1 or f >= 1)
                                                         for f in self.fanout),
                 "fanout", f"a list of layers = {self.layers} integers, each -1 (all neighbours) or >= 1")
        need(self.sparse_optimizer in ("rowwise_adagrad", "adagrad", "sgd", "adam"), "sparse_optimizer",
             "rowwise_adagrad | adagrad | sgd | adam")
        need(len(self.ks) > 0 and all(isinstance(k, int) and k >= 1 for k in self.ks), "ks", "a list of integers >= 1")
        need(self.eval_batch_size >= 1, "eval_batch_size", ">= 1")
        need(0 < self.test_fraction < 1, "test_fraction", "in (0, 1)")
        need(self.duplicates in ("first", "last"), "duplicates", "first | last")
        need(self.min_rating is None or math.isfinite(self.min_rating), "min_rating", "a finite number or null")
        need(self.min_user_interactions >= 0, "min_user_interactions", ">= 0")
        need(self.min_item_interactions >= 0, "min_item_interactions", ">= 0")
        need(self.split_method in ("random", "temporal", "global_time", "leave_one_out"), "split_method",
             "random | temporal | global_time | leave_one_out")
        need(self.train_test_overlap in ("error", "drop"), "train_test_overlap", "error | drop")
        need(self.synthetic_users >= 10, "synthetic_users", ">= 10")
        need(self.synthetic_items >= 10, "synthetic_items", ">= 10")
        metric, _, k = self.early_stop_metric.partition("@")
        need(
            metric in ("recall", "ndcg", "precision", "hit_rate") and k.isdigit() and int(k) in self.ks,
            "early_stop_metric",
            f"recall|ndcg|precision|hit_rate @ one of ks {self.ks}"
            + (f" (ks changed: set early_stop_metric with it, e.g. early_stop_metric={metric or 'recall'}@{self.ks[0]})"
               if metric in ("recall", "ndcg", "precision", "hit_rate") and k.isdigit() and self.ks else ""),
        )
        if self.model in POST_HOC_MODELS and not self.from_run:
            raise ConfigError(f"setting model={self.model!r} needs from_run (a trained lightgcn run: --from RUN_DIR)")
        if self.from_run and self.model not in QUANTIZED_MODELS:
            raise ConfigError(f"setting from_run={self.from_run!r} does not apply to model={self.model!r} "
                              f"(only to {', '.join(QUANTIZED_MODELS)})")
        if self.distill_from and self.model not in DISTILLED_MODELS:
            raise ConfigError(f"setting distill_from={self.distill_from!r} does not apply to model={self.model!r} "
                              f"(only to {', '.join(DISTILLED_MODELS)})")
        if not self.distill_from:  # the distillation settings tune a teacher's term: without one they do nothing
            for key in DISTILL_SETTINGS:
                if getattr(self, key) != _DEFAULTS[key]:
                    raise ConfigError(f"setting {key}={getattr(self, key)!r} needs distill_from (the teacher: a "
                                      f"trained full-precision run folder); without it there is no distillation")
        return self

    def _resolve_aliases(self) -> None:
        if self.estimator is not None:
            if self.estimator not in ("gste", "ste"):
                raise ConfigError(f"setting estimator={self.estimator!r} is out of range: it is no longer a setting "
                                  f"(for the straight-through estimator write model: ste)")
            if self.estimator == "ste" and self.model == "hqgnn":
                self.model = "ste"
            self.estimator = None
        if self.model == "mf":
            self.model, self.layers, self.layer_weights = "lightgcn", 0, None

    # ------------------------------------------------------------ layering
    def to_dict(self) -> dict:
        """The settings as a plain dict (what ``config.yaml`` holds): every field but the old spellings."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in _ALIASES}

    def updated(self, values: dict, origin: str) -> "Config":
        known = {f.name: f for f in dataclasses.fields(self)}
        out = dataclasses.replace(self)
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"{origin}: unknown setting {key!r}")
            setattr(out, key, _coerce(key, value, getattr(self, key), known[key], origin))
        return out

    @classmethod
    def load(cls, path: Optional[str] = None, overrides: Optional[list] = None, extra: Optional[dict] = None,
             validate: bool = True) -> "Config":
        """Defaults, then the YAML file (and the files its ``base:`` names, base first), then
        ``extra`` (named CLI flags; None values are skipped), then ``--set`` pairs (``"key=value"``,
        values read as YAML); validated unless ``validate`` is False (for a caller that changes
        settings first and validates after, as ``--budget-bytes`` does). Raises
        :class:`~hqgnn.errors.ConfigError`: a missing or invalid file, an unknown setting, a value
        of the wrong type or out of range."""
        cfg = cls()
        if path:
            for file, values in read_config_chain(path):
                cfg = cfg.updated(values, file)
        if extra:
            cfg = cfg.updated({k: v for k, v in extra.items() if v is not None}, "command line")
        if overrides:
            cfg = cfg.updated(parse_overrides(overrides), "--set")
        return cfg.validate() if validate else cfg

    def save(self, path: Path) -> None:
        from .storage import write_text_atomic

        write_text_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


_ALIASES = {f.name for f in dataclasses.fields(Config) if f.metadata.get("alias")}
#: the settings of the distillation term, which need distill_from (a non-default value without it is refused)
DISTILL_SETTINGS = ("distill_weight", "distill_top", "distill_decay")
_DEFAULTS = {key: getattr(Config, key) for key in DISTILL_SETTINGS}


def read_yaml(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def read_config_chain(path) -> list[tuple[str, dict]]:
    """A config file and the files it builds on, base first: a file's ``base: OTHER.yaml``
    (relative to the file) is read before it, so the file's own settings override its base's."""
    chain: list[tuple[str, dict]] = []
    seen: set[Path] = set()
    while path is not None:
        path = Path(path)
        key = path.resolve()
        if key in seen:
            raise ConfigError(f"{path}: 'base' chain returns to this file (a cycle)")
        seen.add(key)
        values = read_yaml(path)
        base = values.pop("base", None)
        if base is not None and (not isinstance(base, str) or not base):
            raise ConfigError(f"{path}: setting 'base' must be the path of another config file, got {base!r}")
        chain.append((str(path), values))
        path = path.parent / base if base else None
    return chain[::-1]


def parse_overrides(pairs: list) -> dict:
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            raise ConfigError(f"--set {pair!r}: cannot parse the value") from None
    return out


_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _coerce(key: str, value: Any, default: Any, fld, origin: str) -> Any:
    """Check a value against the field's type (taken from its default or annotation)."""
    ann = str(fld.type)
    if value is None:
        if "Optional" in ann:
            return None
        raise ConfigError(f"{origin}: setting {key} cannot be null")
    if "bool" in ann:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{origin}: setting {key}={value!r} must be true or false")
    if "int" in ann and "float" not in ann:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{origin}: setting {key}={value!r} must be an integer")
        return value
    if "float" in ann:
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{origin}: setting {key}={value!r} must be a number")
        return float(value)
    if "list" in ann:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{origin}: setting {key}={value!r} must be a list")
        return value
    if "str" in ann:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{origin}: setting {key}={value!r} must be a string")
        return str(value)
    return value
