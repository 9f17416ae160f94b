"""Writing an index's item codes as a FAISS index other stacks can read (``hqgnn export --format faiss``).

Imported only by that export (faiss is optional: ``pip install 'hqgnn[faiss]'``). Three files:

* ``OUT`` -- the FAISS index of the items, carrying the original item ids (int64) as its ids:

  - **1 bit**: ``IndexBinaryIDMap(IndexBinaryFlat(d8))``, ``d8 = 8 ceil(d / 8)``; read it with
    ``faiss.read_index_binary``. The codes are the sign bits in faiss's bit order (bit ``j``
    of a vector in byte ``j // 8`` at position ``j % 8``, LSB first: the byte view of the
    artifact's bit plane, :mod:`hqgnn.index.packing`), zero-padded to ``d8``. A query is the
    user's packed sign bits; faiss returns the Hamming distance ``h`` and the engine's raw
    score is ``d - 2h`` (the true ``d``). Ties come in insertion order, i.e. the lower item
    index first: the engine's order, so the top-K equals the engine's (seen items aside).
  - **2..7 bits**: ``IndexIDMap(IndexScalarQuantizer(d, QT_8bit_direct_signed, METRIC_INNER_PRODUCT))``
    holding the items' odd levels ``k_i = 2 c_i - m`` (``m = 2^b - 1``, so ``|k_i| <= 127``: one
    signed byte each, stored exactly); read it with ``faiss.read_index``. The query is the
    user's odd levels ``k_u = 2 c_u - m`` as float32, and faiss's inner product is the engine's
    raw score ``<k_u, k_i>`` itself -- exact while float32 holds every partial sum,
    ``d m^2 < 2^24`` (``d`` up to 1040 at 7 bits; refused beyond). Not ``QT_8bit_direct`` of
    the unsigned codes with a per-query offset: faiss 1.15's AVX2 byte kernel for that type
    casts the *query* to uint8 (wrong for negative levels; tested). 8-bit levels (up to
    ``+-255``) fit no signed byte: refused (use the ``.hqgnn`` artifact).
  - **float32**: ``IndexIDMap(IndexFlatIP(d))`` of the item embeddings (``faiss.read_index``);
    the query is the user embedding, the score the inner product (faiss's float32 rounding).

  For 2..8 bits and float32 faiss gives tied scores in no fixed order (and, for large K, may
  keep any of the items tied at the K-th place): sort its answer by (score desc, item index)
  for the engine's order. faiss knows no per-user exclusion of seen items: fetch K + the
  user's seen count and drop them, as :mod:`hqgnn.index.backends.faiss` does.
  String item ids cannot be faiss ids (int64 only): the faiss ids are then the item
  indices ``0 .. n-1`` and ``OUT.json`` lists the original ids in that order.
* ``OUT.json`` -- what the index holds and how to query it: bits, dims, the faiss class, the
  score formulas, the scales (model score = ``raw * user_scale * item_scale / 4``), the
  source artifact's sha256, and ``item_ids`` when they are strings.
* ``OUT.users.npz`` -- the queries, where the source holds user vectors: ``user_ids`` and
  ``queries`` (uint8 packed sign bits, float32 levels or float32 embeddings, one row per
  user).

Every file is written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np

from ...errors import ConfigError
from ...storage import atomic_path, write_text_atomic
from ..packing import codes_to_levels

FORMAT = "hqgnn-faiss/1"
#: float32 holds every integer up to 2^24 exactly
FLOAT32_EXACT = 2**24


def sidecar_paths(out) -> tuple[Path, Path]:
    """``(OUT.json, OUT.users.npz)`` beside the faiss file ``out``."""
    out = Path(out)
    return out.with_name(out.name + ".json"), out.with_name(out.name + ".users.npz")


def _faiss_ids(ix) -> tuple[np.ndarray, bool]:
    """The int64 faiss ids of the items (original ids, or item indices for string ids), and whether they are original."""
    ids = ix.item_map.ids
    if ids.dtype.kind in "iu":
        return np.ascontiguousarray(ids, dtype=np.int64), True
    return np.arange(ix.n_items, dtype=np.int64), False


def build_faiss(ix):
    """``(faiss index, queries or None, description)`` of a QuantizedIndex or FloatIndex."""
    ids, _ = _faiss_ids(ix)
    d = ix.dim
    has_users = ix._has_user_vectors()
    if ix.bits == 32:
        index = faiss.IndexIDMap(faiss.IndexFlatIP(d))
        index.add_with_ids(np.ascontiguousarray(ix.item_emb, dtype=np.float32), ids)
        queries = np.ascontiguousarray(ix.user_emb, dtype=np.float32) if has_users else None
        return index, queries, {
            "faiss_index": "IndexIDMap(IndexFlatIP)", "read_with": "faiss.read_index", "faiss_dim": d,
            "query": "the user's float32 embedding", "raw_score": "s (the inner product faiss returns)",
            "score": "raw"}
    if ix.bits == 1:
        nbytes = -(-d // 8)
        xb = np.ascontiguousarray(np.ascontiguousarray(ix.item_planes[0]).view(np.uint8)[:, :nbytes])
        index = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(8 * nbytes))
        index.add_with_ids(xb, ids)
        queries = None
        if has_users:
            queries = np.ascontiguousarray(np.ascontiguousarray(ix.user_planes[0]).view(np.uint8)[:, :nbytes])
        return index, queries, {
            "faiss_index": "IndexBinaryIDMap(IndexBinaryFlat)", "read_with": "faiss.read_index_binary",
            "faiss_dim": 8 * nbytes,
            "query": "the user's sign bits, packed LSB first (bit j in byte j // 8 at position j % 8), zero-padded",
            "raw_score": f"{d} - 2 h (h: the Hamming distance faiss returns)",
            "score": "raw * user_scale * item_scale / 4", "ties": "insertion order: the lower item index first"}
    m = 2**ix.bits - 1
    if ix.bits > 7:
        raise ConfigError(f"--format faiss: {ix.bits}-bit levels (up to +-{m}) do not fit faiss's signed 8-bit "
                          "scalar quantizer; 1..7-bit codes and float32 export to faiss")
    if d * m * m >= FLOAT32_EXACT:
        raise ConfigError(f"--format faiss: {ix.bits}-bit codes of dim {d} have inner products up to d m^2 = "
                          f"{d * m * m} >= 2^24, beyond what faiss's float32 sums hold exactly")
    sq = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit_direct_signed, faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexIDMap(sq)
    index.add_with_ids(codes_to_levels(ix.item_codes(), ix.bits, np.float32), ids)
    queries = codes_to_levels(ix.user_codes(), ix.bits, np.float32) if has_users else None
    return index, queries, {
        "faiss_index": "IndexIDMap(IndexScalarQuantizer(QT_8bit_direct_signed, METRIC_INNER_PRODUCT))",
        "read_with": "faiss.read_index", "faiss_dim": d, "levels": f"k = 2 c - {m} (odd, |k| <= {m})",
        "query": f"the user's odd levels k_u = 2 c_u - {m} as float32",
        "raw_score": "s (the inner product faiss returns: <k_u, k_i>, exact)",
        "score": "raw * user_scale * item_scale / 4"}


def write_faiss(ix, out, source: dict | None = None) -> dict:
    """Write ``ix``'s items as a FAISS index at ``out``, plus ``OUT.json`` and ``OUT.users.npz``
    (see the module docstring). ``source``: what to record of the origin (run folder, artifact
    sha256). Returns a summary: the paths, bits, dim, the faiss class, and ``note`` when the
    faiss ids are item indices (string ids). Raises :class:`~hqgnn.errors.ConfigError` for
    8-bit codes and for codes whose inner products float32 cannot hold exactly."""
    out = Path(out)
    meta_path, users_path = sidecar_paths(out)
    index, queries, desc = build_faiss(ix)
    _, original = _faiss_ids(ix)
    meta = {"format": FORMAT, "bits": int(ix.bits), "dim": int(ix.dim), "n_items": int(ix.n_items),
            "n_users": int(ix.n_users) if queries is not None else 0, "model": ix.model,
            "user_scale": float(getattr(ix, "user_scale", 1.0)), "item_scale": float(getattr(ix, "item_scale", 1.0)),
            **desc, "ids": "original item ids" if original else "item indices 0..n-1; original ids in item_ids",
            "queries": users_path.name if queries is not None else None, **(source or {})}
    note = None
    if not original:
        meta["item_ids"] = ix.item_map.ids.astype(str).tolist()
        note = (f"item ids are strings, which faiss ids cannot be: the faiss ids are item indices 0..n-1, "
                f"the original ids are in {meta_path.name}")
    # the sidecars first, the index last: a complete OUT means complete sidecars
    if queries is not None:
        arrays = {"user_ids": np.asarray(ix.user_map.ids), "queries": queries}
        with atomic_path(users_path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
    elif users_path.exists():
        users_path.unlink()  # an earlier export's queries do not belong to this index
    write_text_atomic(meta_path, json.dumps(meta, indent=1, sort_keys=True) + "\n")
    with atomic_path(out) as tmp:
        (faiss.write_index_binary if ix.bits == 1 else faiss.write_index)(index, str(tmp))
    summary = {"path": str(out), "format": "faiss", "bits": int(ix.bits), "dim": int(ix.dim),
               "n_items": int(ix.n_items), "faiss_index": desc["faiss_index"], "read_with": desc["read_with"],
               "bytes": out.stat().st_size, "meta": str(meta_path),
               "queries": str(users_path) if queries is not None else None}
    if note:
        summary["note"] = note
    return summary
