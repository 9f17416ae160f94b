"""From a trained run to a deployable artifact.

``export_run(run_dir, out_file)`` quantizes the run's final embeddings with exactly the
Q_b of training (:func:`hqgnn.loading.model_codes`) and writes one self-describing
artifact (:mod:`hqgnn.index.artifact`). A full-precision run exports float32 embeddings
(bits = 32), so both go through the same tools. Recommendations from an artifact are
:mod:`hqgnn.index.recommender`'s (re-exported here for older imports).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .evaluation import seen_items
from .index.artifact import export_from_arrays
from .index.recommender import ArtifactRecommender, recommend_from_artifact, similar_from_artifact
from .loading import load_run, model_codes

__all__ = ["ArtifactRecommender", "export_run", "model_codes", "recommend_from_artifact", "similar_from_artifact"]


def export_run(run_dir, out_file, data: Optional[str] = None) -> dict:
    """Write the artifact of a trained run; returns a summary (sizes, checksum).

    The model is built from the run's config and its ``model.pt`` weights
    (:func:`hqgnn.loading.load_run`; no trainer). The artifact's exclusion matrix is
    :func:`hqgnn.evaluation.seen_items` (training + validation interactions): what
    ``exclude_seen`` leaves out at every entry point. ``data``: the run's data, if it moved.

    Raises :class:`~hqgnn.errors.CheckpointError` (no run folder, damaged or non-finite
    ``model.pt``, other data) and :class:`~hqgnn.errors.ConfigError` (a model the integer
    index cannot serve: ``bigear``).
    """
    run = load_run(run_dir, data=data)
    codes = model_codes(run.model, run.adj)
    data_ = run.data
    return export_from_arrays(
        out_file,
        model=run.cfg.model,
        bits=codes["bits"],
        user_codes=codes["user_codes"],
        item_codes=codes["item_codes"],
        user_scale=codes["user_scale"],
        item_scale=codes["item_scale"],
        user_ids=data_.original_user_ids(),
        item_ids=data_.original_item_ids(),
        train_csr=seen_items(data_),
        data_fingerprint=data_.fingerprint(),
        extra_meta={"run_dir": str(Path(run_dir)), "dataset": data_.name, "dim": int(run.cfg.dim)},
    )
