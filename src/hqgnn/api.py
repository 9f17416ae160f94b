"""The Python API: a recommender object with fit / evaluate / recommend / save / load.

    >>> from hqgnn import Recommender
    >>> rec = Recommender(model="hqgnn", bits=4, epochs=50)
    >>> metrics = rec.fit("synthetic", out_dir="runs/demo")
    >>> items, scores = rec.recommend([0, 1], k=10)
    >>> rec2 = Recommender.load("runs/demo")

``fit`` writes a run folder (see ``hqgnn.training``) when ``out_dir`` is given;
``load`` reads one back.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .config import Config
from .data import SYNTHETIC, InteractionData, check_trainable, load_dataset, with_validation
from .errors import CheckpointError, ConfigError, DataError
from .training import Trainer, evaluate_model, load_checkpoint, resolve_device


def prepare_data(cfg: Config, spec: Optional[str] = None, check: bool = True) -> InteractionData:
    """Load the data a config names (with its preprocessing and split settings) and carve its
    validation split; ``check``: refuse data BPR cannot train on (``data.check_trainable``)."""
    spec = spec or cfg.data
    if not spec:
        raise ConfigError("setting data is missing: pass --data PATH (a LightGCN folder, a table file, or synthetic)")
    data = load_dataset(
        spec,
        test_fraction=cfg.test_fraction,
        split_seed=cfg.split_seed,
        user_column=cfg.user_column,
        item_column=cfg.item_column,
        rating_column=cfg.rating_column,
        timestamp_column=cfg.timestamp_column,
        min_rating=cfg.min_rating,
        min_user_interactions=cfg.min_user_interactions,
        min_item_interactions=cfg.min_item_interactions,
        duplicates=cfg.duplicates,
        split_method=cfg.split_method,
        train_test_overlap=cfg.train_test_overlap,
        synthetic_options={"n_users": cfg.synthetic_users, "n_items": cfg.synthetic_items, "seed": cfg.synthetic_seed},
    )
    data = with_validation(data, cfg.val_fraction, cfg.split_seed)
    if check:
        check_trainable(data)
    return data


class Recommender:
    """A trained (or trainable) model with its data, in the shape of ``implicit``'s models."""

    def __init__(self, model: str = "lightgcn", config: Optional[Union[str, Config]] = None, **settings):
        if isinstance(config, Config):
            base = config
        else:
            base = Config.load(config) if config else Config()
        self.cfg = base.updated({"model": model, **settings}, "Recommender()").validate()
        self.trainer: Optional[Trainer] = None
        self.data: Optional[InteractionData] = None
        self.metrics: Optional[dict] = None

    # ------------------------------------------------------------ training
    def fit(
        self,
        data: Union[str, Path, InteractionData],
        out_dir: Optional[Union[str, Path]] = None,
        resume: bool = False,
        progress: bool = True,
    ) -> dict:
        if isinstance(data, InteractionData):
            self.data = data
        else:
            self.cfg = self.cfg.updated({"data": str(data)}, "fit()")
            self.data = prepare_data(self.cfg)
        # a resumed run takes E0 from its checkpoint, not from the run it started from
        self.trainer = Trainer(self.cfg, self.data, out_dir, progress=progress, start_from_run=not resume)
        if resume:
            if out_dir is None or not (Path(out_dir) / "checkpoint.pt").is_file():
                raise CheckpointError(f"{out_dir}: nothing to resume (no checkpoint.pt)")
            self.trainer.resume()
        self.metrics = self.trainer.fit()
        return self.metrics

    # ------------------------------------------------------------ loading
    @classmethod
    def load(cls, run_dir: Union[str, Path], data: Optional[Union[str, InteractionData]] = None, device: str = "cpu") -> "Recommender":
        run_dir = Path(run_dir)
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise CheckpointError(f"{run_dir}: not a run folder (no config.yaml)")
        cfg = Config.load(cfg_path).updated({"device": device}, "load()")
        state = load_checkpoint(run_dir / "model.pt")
        obj = cls.__new__(cls)
        obj.cfg = cfg
        obj.data = data if isinstance(data, InteractionData) else prepare_data(cfg, data)
        if state["data_fingerprint"] != obj.data.fingerprint():
            raise CheckpointError(
                f"{run_dir / 'model.pt'}: trained on other data (fingerprint {state['data_fingerprint']}, "
                f"given data {obj.data.fingerprint()})"
            )
        obj.trainer = Trainer(cfg, obj.data, None, progress=False, start_from_run=False)
        try:
            obj.trainer.model.load_state_dict(state["model"])
        except (RuntimeError, KeyError) as exc:
            raise CheckpointError(f"{run_dir / 'model.pt'}: does not match its config: {str(exc).splitlines()[0]}") from None
        obj.metrics = None
        return obj

    def save(self, run_dir: Union[str, Path]) -> None:
        """Write the run folder (config, weights, metrics) to ``run_dir``."""
        self._need_model()
        self.trainer.out_dir = Path(run_dir)
        self.trainer.out_dir.mkdir(parents=True, exist_ok=True)
        self.cfg.save(self.trainer.out_dir / "config.yaml")
        self.metrics = self.trainer.finish()

    # ------------------------------------------------------------ use
    def _need_model(self) -> None:
        if self.trainer is None:
            raise ConfigError("the model is not trained: call fit() or Recommender.load()")

    @property
    def model(self):
        self._need_model()
        return self.trainer.model

    def evaluate(self, split: str = "test", ks: Optional[Sequence[int]] = None) -> dict:
        self._need_model()
        cfg = self.cfg
        if ks is not None:
            if not ks or any(int(k) < 1 for k in ks):
                raise ConfigError(f"ks={list(ks)!r}: expected integers >= 1")
            cfg = dataclasses.replace(cfg, ks=[int(k) for k in ks])
        out = evaluate_model(self.trainer.model, self.trainer.adj, self.data, split, cfg)
        out["split"] = split
        return out

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The scoring embeddings (dequantized for quantized models)."""
        self._need_model()
        return self.trainer.model.eval_embeddings(self.trainer.adj)

    def user_index(self, user_ids: Sequence) -> np.ndarray:
        """Dense indices of original user ids."""
        from .index.engine import IdMap  # the same id lookup as the retrieval engine

        return IdMap(self.data.original_user_ids(), self.data.n_users, "user").to_index(user_ids)

    def index(self):
        """The retrieval index that :meth:`recommend` answers from, built in memory once.

        It holds exactly what :func:`hqgnn.export.export_run` writes to an artifact
        (:func:`hqgnn.export.model_codes`, the original ids, and the seen items of
        :func:`hqgnn.evaluation.seen_items`), so the API, the CLI, the artifact engine
        and the HTTP server give one answer. Cached: rebuilt only when the model, its
        graph or any of its weights change (a new ``fit``, ``load``, or edited weights).
        """
        from .evaluation import seen_items
        from .export import model_codes
        from .index.engine import FloatIndex, QuantizedIndex

        self._need_model()
        key = self._index_key()
        cached = getattr(self, "_index_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        model, adj, data = self.trainer.model, self.trainer.adj, self.data
        try:
            codes = model_codes(model, adj)
        except ConfigError:  # a model the integer index cannot serve (bigear): its float scoring embeddings
            u, i = model.eval_embeddings(adj)
            codes = {"bits": 32, "user_codes": u.cpu().numpy().astype(np.float32),
                     "item_codes": i.cpu().numpy().astype(np.float32), "user_scale": 1.0, "item_scale": 1.0}
        common = dict(user_ids=data.original_user_ids(), item_ids=data.original_item_ids(), train=seen_items(data),
                      model=self.cfg.model, data_fingerprint=data.fingerprint())
        if codes["bits"] == 32:
            index = FloatIndex.from_embeddings(codes["item_codes"], user_emb=codes["user_codes"], **common)
        else:
            index = QuantizedIndex.from_codes(codes["item_codes"], codes["bits"], user_codes=codes["user_codes"],
                                              user_scale=codes["user_scale"], item_scale=codes["item_scale"], **common)
        # the key after building (calibrated scales are rewritten); holding the model, graph and
        # data keeps their ids from being reused by new objects while the key names them
        self._index_cache = (self._index_key(), index, (model, adj, data))
        return index

    def _index_key(self) -> tuple:
        model, adj = self.trainer.model, self.trainer.adj
        tensors = model.state_dict(keep_vars=True).values()
        return id(model), id(adj), id(self.data), tuple((id(t), t._version) for t in tensors)

    def recommend(self, user_ids: Sequence, k: int = 10, exclude_seen: bool = True) -> "TopK":
        """Top-k original item ids and model scores for each original user id, best first.

        Answered by the artifact engine (:meth:`index`): the same items and scores as
        ``hqgnn recommend`` / the HTTP server on the run's exported artifact. Seen items
        (``exclude_seen``) are training + validation interactions
        (:func:`hqgnn.evaluation.seen_items`). Ties go to the lower item index.

        Returns a :class:`TopK`: it unpacks as ``items, scores``, each of shape
        ``(len(user_ids), k)``. **Fewer than k:** a user with fewer than ``k`` eligible
        (unseen) items gets them all, best first, then padding: item id ``-1`` (``""``
        where item ids are strings) with score ``-inf``. ``result.found[r]`` is how many
        real items row ``r`` holds and ``result.valid`` is the ``(q, k)`` mask of them.
        """
        self._need_model()
        n_items = self.data.n_items
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= n_items:
            raise DataError(f"k={k!r} is out of range: expected 1 .. {n_items}")
        recs = self.index().recommend(np.atleast_1d(np.asarray(user_ids)), k=int(k), exclude_seen=exclude_seen)
        return TopK(recs.items, recs.values, recs.valid)


class TopK(tuple):
    """What :meth:`Recommender.recommend` returns: the pair ``(items, scores)``, plus counts.

    ``items``: ``(q, k)`` original item ids, best first; ``scores``: ``(q, k)`` float64
    model scores (dequantized for quantized models). Rows with fewer than ``k`` eligible
    items end in padding: item ``PAD_ITEM`` (``-1``; ``""`` for string item ids) with
    score ``-inf``. ``valid``: ``(q, k)`` bool, False on padding; ``found``: ``(q,)``
    int, the number of real items per row (``k`` unless the user has fewer unseen items).
    """

    PAD_ITEM = -1

    def __new__(cls, items: np.ndarray, scores: np.ndarray, valid: np.ndarray):
        obj = super().__new__(cls, (items, scores))
        obj.items, obj.scores, obj.valid = items, scores, valid
        obj.found = valid.sum(axis=1).astype(np.int64)
        return obj


__all__ = ["Recommender", "TopK", "prepare_data", "SYNTHETIC", "resolve_device"]
