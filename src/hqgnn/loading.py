"""From settings and run folders to what inference needs: data, a trained model, its codes, its index.

* :func:`prepare_data`: the data a :class:`~hqgnn.config.Config` names, preprocessed and split;
* :func:`load_run`: the trained model of a run folder, built by the model registry
  (:func:`hqgnn.models.build_model`) with its ``model.pt`` weights; never a trainer;
* :func:`model_codes`: what an artifact of the model holds (codes and scales, or float32
  embeddings);
* :func:`build_index`: those codes as an in-memory retrieval index, with the seen items
  excluded (:func:`hqgnn.evaluation.seen_items`).

:mod:`hqgnn.api` (``Recommender.load``, ``recommend``) and :mod:`hqgnn.export`
(``export_run``) both go through here, so the Python API, the exported artifact, the CLI and
the HTTP server rank with the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from .config import Config
from .data import InteractionData, check_trainable, load_dataset, with_validation
from .errors import CheckpointError, ConfigError
from .models import build_graph, build_model, load_weights, resolve_device, use_threads
from .runs import MODEL, RunFolder


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


@dataclass
class LoadedRun:
    """A trained run, ready for inference: ``cfg`` (its settings), ``model`` (a
    :class:`~hqgnn.models.ScoringModel` on ``adj``'s device), ``adj`` (its normalised
    adjacency, or None for 0 layers), ``data``, ``metrics`` (``metrics.json``, or None)."""

    cfg: Config
    model: torch.nn.Module
    adj: Optional[torch.Tensor]
    data: InteractionData
    metrics: Optional[dict]


def load_run(run_dir: Union[str, Path], data: Optional[Union[str, InteractionData]] = None,
             device: str = "cpu") -> LoadedRun:
    """Build the model of a run folder from its config and read its ``model.pt`` weights.

    ``data``: the run's data (an :class:`~hqgnn.data.InteractionData`, or a path when it
    moved; None reloads what the run's config names). Raises
    :class:`~hqgnn.errors.CheckpointError` when ``run_dir`` is no run folder, its ``model.pt``
    is missing, damaged, holds NaN / inf, does not match the config, or was trained on other
    data; :class:`~hqgnn.errors.DataError` for the data."""
    run = RunFolder(run_dir)
    cfg = run.read_config().updated({"device": device}, "load()")
    state = run.read_model()
    data = data if isinstance(data, InteractionData) else prepare_data(cfg, data)
    if state["data_fingerprint"] != data.fingerprint():
        raise CheckpointError(
            f"{run.file(MODEL)}: trained on other data (fingerprint {state['data_fingerprint']}, "
            f"given data {data.fingerprint()})"
        )
    use_threads(cfg.threads)
    model = build_model(cfg, data.n_users, data.n_items)
    load_weights(model, state, run.file(MODEL))
    target = resolve_device(device)
    model = model.to(target)
    adj = build_graph(model, data.train, target)
    return LoadedRun(cfg=cfg, model=model, adj=adj, data=data, metrics=run.read_metrics())


def model_codes(model, adj) -> dict:
    """What the artifact of a model holds: ``{"bits", "user_codes", "item_codes", "user_scale", "item_scale"}``.

    Quantized models: their unsigned b-bit codes and scales, exactly the Q_b of training
    (``model.export_codes``; a model the integer index cannot serve raises
    :class:`hqgnn.errors.ConfigError`). Full-precision models: their final float32
    embeddings (``bits`` 32, scales 1). :func:`hqgnn.export.export_run` writes these arrays and
    :func:`build_index` indexes them in memory for :meth:`hqgnn.api.Recommender.recommend`,
    so both rank with the same numbers.
    """
    if getattr(model, "quantized", False):
        return model.export_codes(adj)
    u, i = model.eval_embeddings(adj)
    return {"bits": 32, "user_codes": u.cpu().numpy().astype(np.float32),
            "item_codes": i.cpu().numpy().astype(np.float32), "user_scale": 1.0, "item_scale": 1.0}


def build_index(model, adj, data: InteractionData, model_name: str):
    """The in-memory retrieval index of a model: exactly what :func:`hqgnn.export.export_run`
    writes to an artifact (:func:`model_codes`, the original ids, the seen items of
    :func:`hqgnn.evaluation.seen_items` as the exclusion), as a
    :class:`~hqgnn.index.engine.QuantizedIndex` or :class:`~hqgnn.index.engine.FloatIndex`.
    A model the integer index cannot serve (``bigear``) gets a float index over its scoring
    embeddings. Propagates the graph once."""
    from .evaluation import seen_items
    from .index.engine import FloatIndex, QuantizedIndex

    try:
        codes = model_codes(model, adj)
    except ConfigError:  # a model the integer index cannot serve (bigear): its float scoring embeddings
        u, i = model.eval_embeddings(adj)
        codes = {"bits": 32, "user_codes": u.cpu().numpy().astype(np.float32),
                 "item_codes": i.cpu().numpy().astype(np.float32), "user_scale": 1.0, "item_scale": 1.0}
    common = dict(user_ids=data.original_user_ids(), item_ids=data.original_item_ids(), train=seen_items(data),
                  model=model_name, data_fingerprint=data.fingerprint())
    if codes["bits"] == 32:
        return FloatIndex.from_embeddings(codes["item_codes"], user_emb=codes["user_codes"], **common)
    return QuantizedIndex.from_codes(codes["item_codes"], codes["bits"], user_codes=codes["user_codes"],
                                     user_scale=codes["user_scale"], item_scale=codes["item_scale"], **common)
