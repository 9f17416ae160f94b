"""From a trained run to a deployable artifact.

``export_run(run_dir, out_file)`` quantizes the run's final embeddings with exactly the
Q_b of training (:func:`hqgnn.loading.model_codes`) and writes one self-describing
artifact (:mod:`hqgnn.index.artifact`). A full-precision run exports float32 embeddings
(bits = 32), so both go through the same tools. Recommendations from an artifact are
:mod:`hqgnn.index.recommender`'s (re-exported here for older imports).

``export_run(..., format="faiss")`` (``hqgnn export RUN --format faiss OUT``) writes the item
codes as a FAISS index instead, for stacks that read FAISS
(:mod:`hqgnn.index.backends.faiss_export`; faiss is optional, ``hqgnn[faiss]``):

* 1 bit: ``IndexBinaryIDMap(IndexBinaryFlat)`` of the sign bits (``faiss.read_index_binary``);
  query with the user's packed sign bits, raw score ``d - 2 h`` (``h`` the Hamming distance);
* 2..7 bits: ``IndexIDMap(IndexScalarQuantizer(QT_8bit_direct_signed, METRIC_INNER_PRODUCT))``
  of the items' odd levels ``k_i = 2 c_i - m`` (``m = 2^b - 1``; one signed byte each,
  ``faiss.read_index``); query with the user's float32 levels ``k_u = 2 c_u - m``: faiss's
  inner product is the raw score ``<k_u, k_i>``, exact while ``d m^2 < 2^24`` (refused
  beyond; 8 bits, levels up to +-255, refused);
* float32: ``IndexIDMap(IndexFlatIP)`` of the embeddings, queried with the user embedding.

The model's score is ``raw * user_scale * item_scale / 4`` (codes). The faiss ids are the
original item ids, or the item indices where ids are strings (then ``OUT.json`` lists them);
``OUT.json`` describes all this and ``OUT.users.npz`` holds every user's query.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .errors import ConfigError
from .evaluation import seen_items
from .index.artifact import export_from_arrays
from .index.recommender import ArtifactRecommender, recommend_from_artifact, similar_from_artifact
from .loading import load_run, model_codes

__all__ = ["ArtifactRecommender", "export_faiss", "export_run", "model_codes", "recommend_from_artifact", "similar_from_artifact"]


FORMATS = ("hqgnn", "faiss")


def export_run(run_dir, out_file, data: Optional[str] = None, format: str = "hqgnn") -> dict:
    """Write the artifact of a trained run; returns a summary (sizes, checksum).

    ``format``: ``"hqgnn"`` (the artifact) or ``"faiss"`` (:func:`export_faiss`: a FAISS index
    of the item codes; ``run_dir`` may then also be an exported ``.hqgnn`` artifact).

    The model is built from the run's config and its ``model.pt`` weights
    (:func:`hqgnn.loading.load_run`; no trainer). The artifact's exclusion matrix is
    :func:`hqgnn.evaluation.seen_items` (training + validation interactions): what
    ``exclude_seen`` leaves out at every entry point. ``data``: the run's data, if it moved.

    Raises :class:`~hqgnn.errors.CheckpointError` (no run folder, damaged or non-finite
    ``model.pt``, other data) and :class:`~hqgnn.errors.ConfigError` (a model the integer
    index cannot serve: ``bigear``).
    """
    if format not in FORMATS:
        raise ConfigError(f"--format {format!r}: choose from {', '.join(FORMATS)}")
    if format == "faiss":
        return export_faiss(run_dir, out_file, data=data)
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


def export_faiss(source, out_file, data: Optional[str] = None) -> dict:
    """Write the item codes of a trained run folder or an exported ``.hqgnn`` artifact as a FAISS
    index at ``out_file`` (plus ``OUT.json`` and ``OUT.users.npz``; see the module docstring and
    :mod:`hqgnn.index.backends.faiss_export`). Returns the summary, with ``note`` when the
    faiss ids are item indices (string item ids).

    Raises :class:`~hqgnn.errors.ConfigError` when faiss is not installed or the codes' inner
    products would not be exact in float32, and what :func:`export_run` raises for the run."""
    try:
        from .index.backends import faiss_export
    except ImportError as exc:
        raise ConfigError(f"--format faiss needs faiss ({exc}); pip install 'hqgnn[faiss]' (faiss-cpu)") from None
    source = Path(source)
    if source.is_file():  # an exported artifact
        from .index.artifact import read_artifact
        from .index.batch import artifact_checksum
        from .index.engine import FloatIndex, QuantizedIndex

        art = read_artifact(source)  # checks the checksum
        ix = (FloatIndex if art.is_float else QuantizedIndex).from_artifact(art)
        origin = {"source": str(source), "artifact_sha256": artifact_checksum(source),
                  "dataset": art.extra.get("dataset")}
    else:
        from .index.engine import FloatIndex, QuantizedIndex

        run = load_run(source, data=data)
        codes = model_codes(run.model, run.adj)  # exactly what export_run writes (bigear refused alike)
        common = dict(user_ids=run.data.original_user_ids(), item_ids=run.data.original_item_ids(),
                      model=run.cfg.model)
        if codes["bits"] == 32:
            ix = FloatIndex.from_embeddings(codes["item_codes"], user_emb=codes["user_codes"], **common)
        else:
            ix = QuantizedIndex.from_codes(codes["item_codes"], codes["bits"], user_codes=codes["user_codes"],
                                           user_scale=codes["user_scale"], item_scale=codes["item_scale"], **common)
        origin = {"source": str(source), "dataset": run.data.name}
    return faiss_export.write_faiss(ix, out_file, source=origin)
