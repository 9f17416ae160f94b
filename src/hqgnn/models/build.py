"""The one place that turns settings into a model: the method registry and its builder.

:data:`METHODS` names one class per method; each takes plain constructor arguments, and
:func:`build_model` is the only code that reads a :class:`~hqgnn.config.Config` to make
them. :func:`initial_model` adds the pre-trained start (``from_run``) that the CLI, the
API and the experiment runner call before training; :func:`build_graph` makes the graph
a model propagates over, for training and inference alike.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

from ..errors import CheckpointError, ConfigError
from ..graph import normalized_adjacency
from .base import ScoringModel
from .bigear import BiGeaRModel
from .encoder import LightGCN, propagation_layers, propagation_weights
from .quantized import HashGNNModel, HQGNNModel, LSHModel, PTQModel, STEModel

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Config

#: setting ``model`` -> the class of the method. ``mf`` is not a method: it is the old spelling
#: of ``model: lightgcn, layers: 0`` (:meth:`hqgnn.config.Config.validate` rewrites it).
METHODS: dict[str, type[ScoringModel]] = {
    "lightgcn": ScoringModel,
    "hqgnn": HQGNNModel,
    "ste": STEModel,
    "hashgnn": HashGNNModel,
    "bigear": BiGeaRModel,
    "ptq": PTQModel,
    "lsh": LSHModel,
}


def method_arguments(cfg: "Config") -> dict:
    """The constructor arguments (besides the encoder) of ``cfg.model``'s class, from ``cfg``."""
    method = cfg.model
    args: dict = {"negative_sampling": cfg.negative_sampling}
    if method in ("lightgcn", "bigear"):
        return args
    if method == "ptq":
        return {**args, "bits": cfg.bits, "seed": cfg.seed}
    if method == "lsh":
        return {**args, "seed": cfg.seed}
    args.update(scale_mode=cfg.scale_mode, window=cfg.ste_window, fp_loss_weight=cfg.fp_loss_weight)
    if method == "ste":
        return {**args, "bits": cfg.bits, "sign_loss_weight": cfg.sign_loss_weight}
    if method == "hqgnn":
        return {**args, "bits": cfg.bits, "sign_loss_weight": cfg.sign_loss_weight, "delta_every": cfg.delta_every, "delta_warmup": cfg.delta_warmup,
                "delta_scale": cfg.delta_scale, "hutchinson_probes": cfg.hutchinson_probes,
                "hutchinson_tol": cfg.hutchinson_tol, "hutchinson_batches": cfg.hutchinson_batches}
    if method == "hashgnn":
        return {**args, "soft": cfg.hashgnn_soft, "soft_p0": cfg.hashgnn_soft_p0, "soft_decay": cfg.hashgnn_soft_decay}
    raise ConfigError(f"setting model={method!r}: no such method (expected {' | '.join(METHODS)})")


def build_encoder(cfg: "Config", n_users: int, n_items: int, generator: Optional[torch.Generator] = None) -> LightGCN:
    """The LightGCN encoder of ``cfg`` (``dim``, ``layers``, ``layer_weights``, ``init_std``)."""
    return LightGCN(n_users, n_items, dim=cfg.dim, layers=cfg.layers, layer_weights=cfg.layer_weights,
                    init_std=cfg.init_std, generator=generator)


def build_model(cfg: "Config", n_users: int, n_items: int) -> ScoringModel:
    """A fresh model of the method ``cfg.model`` (:data:`METHODS`) for ``n_users`` x ``n_items``.

    The encoder's E^0 is drawn from N(0, ``init_std``^2) by a generator seeded with
    ``cfg.seed`` (the same numbers the global seed gave), on the CPU; move the model with
    ``.to(device)``. Old spellings in ``cfg`` (``model: mf``, ``estimator``) are resolved
    first (:meth:`~hqgnn.config.Config.validate`).

    Returns: the model (a :class:`~hqgnn.models.base.ScoringModel`), untrained and without
    a pre-trained start (that is :func:`initial_model`).

    Raises:
        ConfigError: a setting out of range, or an unknown method.
    """
    cfg = dataclasses.replace(cfg).validate()
    generator = torch.Generator().manual_seed(cfg.seed)
    encoder = build_encoder(cfg, n_users, n_items, generator)
    return METHODS[cfg.model](encoder, **method_arguments(cfg))


def initial_model(cfg: "Config", data) -> ScoringModel:
    """The model a new run of ``cfg`` on ``data`` starts training from: :func:`build_model`, then,
    when ``cfg.from_run`` names a trained full-precision run, its E^0 (the pre-trained start
    of the trained quantized models; what ``lsh`` / ``ptq`` quantize) by
    :func:`load_full_precision_run`. A resumed run takes E^0 from its checkpoint instead.

    Raises :class:`~hqgnn.errors.CheckpointError` when ``from_run`` is no such run."""
    model = build_model(cfg, data.n_users, data.n_items)
    if cfg.from_run:
        load_full_precision_run(cfg.from_run, model.encoder, data, cfg.model)
    return model


def build_graph(model, train, device="cpu") -> Optional[torch.Tensor]:
    """The graph ``model`` (a model or its :class:`LightGCN` encoder) propagates over: the
    normalised adjacency of the training interactions ``train`` on ``device``
    (:func:`hqgnn.graph.normalized_adjacency`), or None for an encoder of 0 layers."""
    encoder = getattr(model, "encoder", model)
    return normalized_adjacency(train, device) if encoder.layers > 0 else None


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as a
    device; raises :class:`~hqgnn.errors.ConfigError` for CUDA on a machine without it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"setting device={name!r}: CUDA is not available on this machine (use auto or cpu)")
    return torch.device(name)


def use_threads(threads: int) -> None:
    """Set torch's intra-op threads (setting ``threads``; 0 keeps torch's default)."""
    if threads:
        torch.set_num_threads(threads)


def load_full_precision_run(run_dir, encoder: LightGCN, data, model: str, device=None) -> None:
    """Copy E0 of a trained full-precision (``lightgcn``, any depth) run into ``encoder``, after
    checking that the run propagated the same layers with the same weights on the same data.

    ``model``: the method of the run being started (for the messages); ``device``: where the
    copy goes (the encoder's own device when None). Raises
    :class:`~hqgnn.errors.CheckpointError` naming ``from_run`` and ``run_dir`` (``no such
    folder``) when there is no such folder, else naming ``run_dir/model.pt`` when the run has no
    trained model, is quantized, or differs in depth, layer weights, data or ``dim``."""
    from ..config import FULL_PRECISION_MODELS
    from ..runs import MODEL, load_checkpoint
    from ..storage import folder_problem

    path = Path(run_dir) / MODEL
    problem = folder_problem(run_dir)  # a mistyped path is not a run that lacks its model
    if problem is not None:
        raise CheckpointError(f"setting from_run={str(run_dir)!r}: {problem} (the folder of a trained lightgcn run)")
    if not path.is_file():
        raise CheckpointError(f"{path}: from_run has no trained model (train a lightgcn run first)")
    state = load_checkpoint(path)
    run_cfg = state.get("config", {})
    if run_cfg.get("model") not in FULL_PRECISION_MODELS:
        raise CheckpointError(f"{path}: from_run must be a full-precision lightgcn run, got {run_cfg.get('model')!r}")
    # the codes must quantize the embeddings the run was trained to produce; a version-1 run
    # may spell its depth model: mf
    run_layers = propagation_layers(run_cfg.get("model"), run_cfg.get("layers"))
    if run_layers != encoder.layers:
        raise CheckpointError(f"{path}: from_run propagates {run_layers} layers, this {model} run "
                              f"{encoder.layers} (set layers={run_layers})")
    run_weights = propagation_weights(run_cfg.get("model"), run_layers, run_cfg.get("layer_weights"))
    if not all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(run_weights, encoder.layer_weights)):
        raise CheckpointError(f"{path}: from_run sums its layers with weights {list(run_weights)}, this "
                              f"{model} run with {list(encoder.layer_weights)} (set layer_weights to the run's)")
    if state.get("data_fingerprint") != data.fingerprint():
        raise CheckpointError(f"{path}: from_run was trained on other data (fingerprint {state.get('data_fingerprint')})")
    emb = state["model"].get("encoder.embedding")
    if emb is None or tuple(emb.shape) != tuple(encoder.embedding.shape):
        raise CheckpointError(f"{path}: embedding shape {tuple(emb.shape) if emb is not None else None} does not match dim={encoder.dim}")
    with torch.no_grad():
        encoder.embedding.copy_(emb.to(device if device is not None else encoder.embedding.device))


def load_weights(model: ScoringModel, state: dict, path) -> None:
    """Load the state dict ``state["model"]`` of a weights file (:func:`hqgnn.runs.load_checkpoint`)
    into ``model``; raises :class:`~hqgnn.errors.CheckpointError` naming ``path`` when it does not fit."""
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: does not match its config: {str(exc).splitlines()[0]}") from None
