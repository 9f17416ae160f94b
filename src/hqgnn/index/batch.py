"""Top-K for every user of an artifact, streamed to Parquet: what ``hqgnn recommend --all-users`` runs.

:func:`recommend_all` walks the users of one shard (``shard=(i, n)``: the i-th of n
contiguous ranges of dense user indices) in blocks of ``batch_users``; each block is one
batched :meth:`~hqgnn.index.engine.QuantizedIndex.search` (the engine's kernels and
threads, seen items excluded unless ``exclude_seen=False``), turned into rows without a
Python loop over users, and written as one Parquet row group (by a second thread, while
the next block is searched). Every user's rows are exactly
:meth:`~hqgnn.index.recommender.ArtifactRecommender.recommend` of that user: the same
items in the same order with the same scores -- bit for bit for b-bit codes (integer
scores); for float32 embeddings the scores may differ in the last bits of float32,
because BLAS rounds an sgemm of a block of users and the sgemv of one user differently
(ties at that level aside, the items are the same).

The file, long format, one row per (user, recommended item):

=========  ===========================  ==============================================
column     type                         value
=========  ===========================  ==============================================
``user``   int64 or string              original user id (the artifact's id type)
``rank``   int32                        1 .. K (1 = best); ties to the lower item index
``item``   int64 or string              original item id (the artifact's id type)
``score``  float64                      the model's score: ``(s_u s_i / 4) <k_u, k_i>``
                                        for b-bit codes (exactly the recommender's
                                        ``scores``), the float32 inner product (widened
                                        exactly) for float artifacts
=========  ===========================  ==============================================

A user with fewer than K eligible (unseen) items gets only the real ones (ranks
1 .. found): there is no padding. Rows come in dense user order, so the shards
``1/n .. n/n`` concatenated are the unsharded file (float32 scores: up to the rounding above).
Encodings: :func:`_encodings`. The schema's metadata key
``hqgnn`` holds JSON: the artifact's sha256 (the checksum in its preamble), ``k``,
``shard``, the user index range, ``exclude_seen``, ``backend``, model and bits.

The file is written atomically (:func:`hqgnn.storage.atomic_path`): an error or Ctrl-C
leaves nothing at ``out`` (and an older file there untouched).
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..errors import ConfigError
from ..storage import atomic_path
from .artifact import PREAMBLE, read_artifact
from .ids import check_k

__all__ = ["DEFAULT_BATCH_USERS", "artifact_checksum", "check_parquet_out", "parse_shard", "recommend_all",
           "shard_range"]

#: Users per batched search and per Parquet row group (204,800 rows at K = 100).
DEFAULT_BATCH_USERS = 2048
#: At most this many rows per block (so per row group), whatever ``batch_users``: a large K
#: gets fewer users per block, and the memory of a block stays bounded (~40 MB of rows).
MAX_BLOCK_ROWS = 1 << 20


def check_parquet_out(out, flag: Optional[str] = None) -> None:
    """Refuse an output path ``out`` that is not named ``*.parquet`` (any case), the only format
    :func:`recommend_all` writes, before any work: the rule of ``hqgnn recommend --all-users``.

    Raises :class:`~hqgnn.errors.ConfigError`, one line naming the argument and ``out`` as given:
    ``out='x.csv': ...`` (``flag``: a CLI flag to name instead, ``--out x.csv: ...``)."""
    suffix = Path(out).suffix
    if suffix.lower() != ".parquet":
        what = f"suffix {suffix!r} is not supported" if suffix else "no .parquet suffix"
        shown = f"out={str(out)!r}" if flag is None else f"{flag} {out}"
        writer = "recommend_all" if flag is None else "--all-users"
        raise ConfigError(f"{shown}: {what}: {writer} writes Parquet only (name the file *.parquet)")


def parse_shard(shard: Union[None, str, tuple]) -> tuple[int, int]:
    """``"i/n"`` (or ``(i, n)``; None is ``1/1``) as ``(i, n)`` with ``1 <= i <= n``.

    Raises :class:`~hqgnn.errors.ConfigError` with a one-line message otherwise."""
    if shard is None:
        return 1, 1
    text = shard if isinstance(shard, str) else "/".join(str(x) for x in shard)
    try:
        i, n = (int(x) for x in text.strip().split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected i/n, e.g. 2/4 (the i-th of n user ranges)") from None
    if not 1 <= i <= n:
        raise ConfigError(f"--shard {text!r}: expected i/n with 1 <= i <= n")
    return i, n


def shard_range(n_users: int, shard: Union[None, str, tuple]) -> tuple[int, int]:
    """The dense user indices ``lo .. hi-1`` of shard ``i/n``: ``[(i-1) N // n, i N // n)``."""
    i, n = parse_shard(shard)
    return (i - 1) * n_users // n, i * n_users // n


def _open(source, backend: Optional[str], backend_params: Optional[dict], threads: Optional[int]):
    """``(index, artifact path or None)`` of an artifact path, an ArtifactRecommender or an index
    (a view of it when another backend is asked for: the caller's index is left as it is)."""
    from .base import _Index
    from .engine import FloatIndex, QuantizedIndex

    path = None
    if hasattr(source, "index") and hasattr(source, "artifact"):  # an ArtifactRecommender
        source, path = source.index, Path(source.artifact.path)
    if isinstance(source, _Index):
        if (backend is not None and backend != source.backend) or backend_params:
            source = source.with_backend(backend or source.backend, **(backend_params or source.backend_params))
        return source, path
    art = read_artifact(source, mmap=True)  # checks the checksum
    cls = FloatIndex if art.is_float else QuantizedIndex
    return cls.from_artifact(art, backend=backend or "exact", backend_params=backend_params, threads=threads), \
        Path(art.path)


def artifact_checksum(path) -> str:
    """The sha256 an artifact's preamble records (what :func:`read_artifact` verifies), as hex; "" for None."""
    if path is None:
        return ""
    with open(path, "rb") as fh:
        return PREAMBLE.unpack(fh.read(PREAMBLE.size))[3].hex()


def _id_column(ids: np.ndarray):
    """An Arrow array of all ids of one side (int64 or string), to ``take`` rows from."""
    import pyarrow as pa

    ids = np.asarray(ids)
    if ids.dtype.kind in "iub":
        return pa.array(ids.astype(np.int64), type=pa.int64())
    return pa.array(ids.astype(str), type=pa.string())


def _encodings(index, items) -> dict:
    """Parquet encodings by what each column holds (measured on Gowalla, K = 100: 9.9 MB at 4 bits,
    14.9 MB float32, against 10.9 / 21.6 MB with dictionaries everywhere): dictionaries for users,
    ranks and string item ids; integer item ids plain (40k distinct values per row group);
    scores of b-bit codes (a few hundred distinct values) in a dictionary, float32 scores
    byte-stream-split (their widened float64 bytes compress well column by column)."""
    import pyarrow as pa

    is_float = index.bits == 32
    dictionary = ["user", "rank"] + (["item"] if items.type == pa.string() else []) + ([] if is_float else ["score"])
    return {"use_dictionary": dictionary, "use_byte_stream_split": ["score"] if is_float else False}


def recommend_all(source, k: int, out, *, shard: Union[None, str, tuple] = None, backend: Optional[str] = None,
                  backend_params: Optional[dict] = None, batch_users: int = DEFAULT_BATCH_USERS,
                  threads: Optional[int] = None, exclude_seen: bool = True, progress: bool = False,
                  compression: str = "zstd") -> dict:
    """Write the top-``k`` of every user of one shard to the Parquet file ``out`` (see the module docstring).

    ``source``: an artifact path, an :class:`~hqgnn.index.recommender.ArtifactRecommender`,
    or a :class:`~hqgnn.index.engine.QuantizedIndex` / :class:`~hqgnn.index.engine.FloatIndex`
    holding user vectors. ``shard``: ``"i/n"`` or ``(i, n)``, the i-th of n contiguous user
    ranges (default all users). ``backend`` / ``backend_params``: the index backend and its
    settings (default: the source's, or ``"exact"``). ``batch_users``: users per batched
    search and per row group (fewer where ``batch_users * k`` would pass
    :data:`MAX_BLOCK_ROWS`). ``threads``: search threads (default every CPU). ``exclude_seen``: leave out the artifact's seen items
    (training + validation). ``progress``: a tqdm bar on stderr. ``compression``: Parquet codec.

    Returns ``{"path", "users", "rows", "k", "shard", "seconds", "users_per_s", "bytes",
    "artifact_sha256"}``. Raises :class:`~hqgnn.errors.ConfigError` (``out`` not named
    ``*.parquet``: :func:`check_parquet_out`; bad shard, batch size, backend),
    :class:`~hqgnn.index.errors.RetrievalError` (bad ``k``, an index without user vectors) or :class:`~hqgnn.errors.CheckpointError` (bad artifact); nothing is left at
    ``out`` after any error.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    check_parquet_out(out)  # the only format written: refused before the artifact is read
    i, n = parse_shard(shard)
    if isinstance(batch_users, bool) or not isinstance(batch_users, (int, np.integer)) or batch_users < 1:
        raise ConfigError(f"batch_users={batch_users!r} must be an integer >= 1")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))
                                or threads < 1):
        raise ConfigError(f"threads={threads!r} must be an integer >= 1")
    start = time.perf_counter()
    index, art_path = _open(source, backend, backend_params, threads)
    k = check_k(k, index.n_items)
    if not index._has_user_vectors():
        from .errors import RetrievalError

        raise RetrievalError("this artifact holds no user vectors: there are no users to recommend for")
    lo, hi = shard_range(index.n_users, (i, n))
    users, items = _id_column(index.user_map.ids), _id_column(index.item_map.ids)
    scale = index._user_value_scale()
    meta = {"artifact": art_path.name if art_path else "", "artifact_sha256": artifact_checksum(art_path), "k": k,
            "shard": f"{i}/{n}", "users": [lo, hi], "n_users": index.n_users, "exclude_seen": bool(exclude_seen),
            "backend": index.backend, "backend_params": dict(index.backend_params), "model": index.model,
            "bits": index.bits,
            "score": "model score, float64: (s_u s_i / 4) <k_u, k_i> for b-bit codes, the float32 inner product "
                     "for float embeddings", "rank": "1..found, ties to the lower item index"}
    schema = pa.schema([("user", users.type), ("rank", pa.int32()), ("item", items.type), ("score", pa.float64())],
                       metadata={"hqgnn": json.dumps(meta, sort_keys=True)})
    ranks = np.arange(1, k + 1, dtype=np.int32)
    rows_written = 0
    bar = tqdm(total=hi - lo, unit="user", desc=f"top-{k} {i}/{n}", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, leave=False)
    pending = None  # the row group being written, by a second thread, while the next block is searched
    try:
        with atomic_path(out) as tmp, ThreadPoolExecutor(1, thread_name_prefix="parquet") as pool:
            writer = pq.ParquetWriter(str(tmp), schema, compression=compression, **_encodings(index, items))
            try:
                step = max(1, min(batch_users, MAX_BLOCK_ROWS // k))
                for b_lo in range(lo, hi, step):  # loop over blocks of users
                    rows = np.arange(b_lo, min(hi, b_lo + step), dtype=np.int64)
                    found_items, raw = index.search(rows, k, exclude="train" if exclude_seen else None,
                                                    threads=threads)
                    valid = found_items >= 0
                    table = pa.Table.from_arrays([
                        users.take(pa.array(np.repeat(rows, valid.sum(axis=1)))),
                        pa.array(np.broadcast_to(ranks, valid.shape)[valid]),
                        items.take(pa.array(found_items[valid])),
                        pa.array(raw[valid].astype(np.float64) * scale),
                    ], schema=schema)
                    if pending is not None:
                        pending.result()  # one row group in flight at a time, in order; its error surfaces here
                    pending = pool.submit(writer.write_table, table, row_group_size=max(1, len(table)))
                    rows_written += len(table)
                    bar.update(len(rows))
                if pending is not None:
                    pending.result()
            finally:
                if pending is not None:
                    wait([pending])  # never close the writer under a write in flight (error, Ctrl-C)
                writer.close()
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    return {"path": str(out), "users": hi - lo, "rows": rows_written, "k": k, "shard": f"{i}/{n}",
            "seconds": round(seconds, 3), "users_per_s": round((hi - lo) / seconds, 1) if seconds > 0 else None,
            "bytes": Path(out).stat().st_size, "artifact_sha256": meta["artifact_sha256"]}
