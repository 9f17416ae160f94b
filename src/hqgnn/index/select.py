"""Exact top-K selection over blocks of scores, with excluded entries and deterministic ties.

:func:`select_topk` takes a ``(R, N)`` block of scores (larger is better) or costs
(smaller is better) and returns each row's best ``k`` columns, ties broken by the
lower column. Excluded entries carry the dtype's worst value (the *sentinel*:
``-inf`` / ``+inf`` or the integer min / max) and are never returned.

Method: a per-row threshold is read off a sample of the row (a per-row histogram
for uint8 costs, ``np.partition`` otherwise); every entry at or past it is gathered
with one ``flatnonzero``; the few candidates are ordered by one ``np.sort`` of packed
int64 keys (row, value rank, column). A row that the sampled threshold left with
fewer than ``k`` candidates is redone with its exact k-th value, so the result never
depends on the sample. The same helpers serve the streaming driver of
:mod:`hqgnn.index.kernels`, which thresholds chunk by chunk without materialising a
whole block of scores.
"""

from __future__ import annotations

import math

import numpy as np

#: Sampling stride of the per-row threshold estimate.
SAMPLE_STRIDE = 16


def sentinel(dtype, largest: bool):
    """The value written over excluded entries: the worst value of ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return -np.inf if largest else np.inf
    info = np.iinfo(dtype)
    return info.min if largest else info.max


def clamp_threshold(t: np.ndarray, dtype, largest: bool) -> np.ndarray:
    """Thresholds moved strictly past the sentinel, so that excluded entries never pass."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        edge = np.nextafter(dtype.type(sentinel(dtype, largest)), dtype.type(0))
    else:
        edge = sentinel(dtype, largest) + (1 if largest else -1)
    return (np.maximum(t, edge) if largest else np.minimum(t, edge)).astype(dtype, copy=False)


def exact_thresholds(S: np.ndarray, k: int, largest: bool) -> np.ndarray:
    """The k-th best value of every row of ``S`` (``1 <= k <= S.shape[1]``)."""
    n = S.shape[1]
    if S.dtype == np.uint8 and not largest:
        return _histogram_kth(S, k)
    if largest:
        return np.partition(S, n - k, axis=1)[:, n - k]
    return np.partition(S, k - 1, axis=1)[:, k - 1]


def _histogram_kth(S: np.ndarray, k: int) -> np.ndarray:
    """k-th smallest of every row of a uint8 array, from per-row histograms (no sort)."""
    R = S.shape[0]
    key = S + (np.arange(R, dtype=np.int64) * 256)[:, None]
    hist = np.bincount(key.reshape(-1), minlength=R * 256).reshape(R, 256)
    return np.argmax(np.cumsum(hist, axis=1) >= k, axis=1).astype(np.uint8)


def sample_size(k: int, stride: int, n_sample: int) -> int:
    """How many best entries of a 1-in-``stride`` sample set the threshold: ``k / stride`` plus a margin.

    About ``stride`` times this many entries of the full row then pass, comfortably above
    ``k`` (three standard deviations of the sampling noise, plus two).
    """
    expect = k / stride
    return max(1, min(n_sample, int(math.ceil(expect + 3.0 * math.sqrt(expect) + 2))))


def sample_thresholds(sample: np.ndarray, k: int, largest: bool, stride: int) -> np.ndarray:
    """Per-row thresholds from a ``(R, n_sample)`` sample of the rows (every ``stride``-th entry)."""
    return exact_thresholds(np.ascontiguousarray(sample), sample_size(k, stride, sample.shape[1]), largest)


def passing(S: np.ndarray, t: np.ndarray, largest: bool) -> np.ndarray:
    """Flat indices of the entries of ``S`` at or past their row's threshold ``t``."""
    mask = np.greater_equal(S, t[:, None]) if largest else np.less_equal(S, t[:, None])
    return np.flatnonzero(mask)


def _sortable_keys(vals: np.ndarray, largest: bool):
    """Values as non-negative int64 keys (smaller = better, order-preserving), their bit width,
    and the function that maps keys back to the values.

    Returns ``(None, 0, None)`` when no exact 32-bit key exists (float64 values that are not float32).
    """
    dtype = vals.dtype
    if dtype.kind == "f":
        v = vals.astype(np.float32) + np.float32(0.0)  # -0.0 -> +0.0 (they compare equal)
        if dtype != np.float32 and not np.array_equal(v.astype(dtype), vals):
            return None, 0, None
        u = v.view(np.uint32).astype(np.int64)
        # IEEE order: flip every bit of negatives, the sign bit of the others -> ascending uint32
        u = np.where(u & 0x80000000, u ^ 0xFFFFFFFF, u | 0x80000000)
        if largest:
            u = 0xFFFFFFFF - u

        def decode(key):
            w = 0xFFFFFFFF - key if largest else key
            w = np.where(w & 0x80000000, w ^ 0x80000000, w ^ 0xFFFFFFFF)
            return w.astype(np.uint32).view(np.float32).astype(dtype)

        return u, 32, decode
    v = vals.astype(np.int64)
    if largest:
        v = -v
    shift = int(v.min()) if len(v) else 0
    v = v - shift

    def decode(key):
        w = key + shift
        return (-w if largest else w).astype(dtype)

    return v, max(1, int(v.max()).bit_length() if len(v) else 1), decode


def rank_candidates(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_rows: int, n_cols: int, k: int,
                    largest: bool, fill_value) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` candidates of each row, best first, ties to the lower column.

    ``rows`` / ``cols`` / ``vals`` list candidate entries (any order). Returns ``(cols,
    vals)``, each ``(n_rows, k)``, padded with column ``-1`` and ``fill_value``. Orders
    by one int64 ``np.sort`` of packed ``(row, value rank, column)`` keys when they fit in
    63 bits, else by ``lexsort``.
    """
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    out_cols = np.full((n_rows, k), -1, np.int64)
    out_vals = np.full((n_rows, k), fill_value, vals.dtype)
    if len(rows) == 0:
        return out_cols, out_vals
    key, vbits, decode = _sortable_keys(vals, largest)
    rbits, cbits = max(1, (n_rows - 1).bit_length()), max(1, (n_cols - 1).bit_length())
    if key is not None and rbits + vbits + cbits <= 63:
        packed = np.sort((((rows << vbits) | key) << cbits) | cols)
        cols = packed & ((1 << cbits) - 1)
        rows = packed >> (vbits + cbits)
        vals = decode((packed >> cbits) & ((1 << vbits) - 1))
    else:
        order = np.lexsort((cols, -vals.astype(np.float64) if largest else vals, rows))
        rows, cols, vals = rows[order], cols[order], vals[order]
    counts = np.bincount(rows, minlength=n_rows)
    starts = np.zeros(n_rows, np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    rank = np.arange(len(rows)) - starts[rows]  # position of each candidate within its row
    keep = rank < k
    out_cols[rows[keep], rank[keep]] = cols[keep]
    out_vals[rows[keep], rank[keep]] = vals[keep]
    return out_cols, out_vals


def select_topk(S: np.ndarray, k: int, largest: bool, sample_stride: int = SAMPLE_STRIDE
                ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of every row of ``S``, best first, ties to the lower column.

    ``S`` is an ``(R, N)`` array of scores (``largest=True``) or costs (``largest=False``);
    entries equal to the dtype's worst value (``-inf`` / ``+inf``, the integer min / max)
    are excluded. Returns ``(cols, vals)``, each ``(R, k)``; a row with fewer than ``k``
    eligible entries is padded with column ``-1`` and the sentinel value.
    """
    R, N = S.shape
    fill = sentinel(S.dtype, largest)
    if R == 0 or N == 0:
        return np.full((R, k), -1, np.int64), np.full((R, k), fill, S.dtype)
    S = np.ascontiguousarray(S)
    k_eff = min(k, N)
    if N >= 4 * sample_stride * max(k_eff, 8):
        t = sample_thresholds(_spread_sample(S, sample_stride), k_eff, largest, sample_stride)
    else:
        t = exact_thresholds(S, k_eff, largest)
    flat = passing(S, clamp_threshold(t, S.dtype, largest), largest)
    rows = flat // N
    short = np.flatnonzero(np.bincount(rows, minlength=R) < k_eff)
    if len(short):
        # redo these rows with their exact k-th value (rare: the sample under-estimated them,
        # or the row has fewer than k eligible entries)
        keep = ~np.isin(rows, short)
        sub = S[short]
        sub_flat = passing(sub, clamp_threshold(exact_thresholds(sub, k_eff, largest), S.dtype, largest), largest)
        flat = np.concatenate([flat[keep], short[sub_flat // N] * N + sub_flat % N])
        rows = flat // N
    return rank_candidates(rows, flat - rows * N, S.reshape(-1)[flat], R, N, k, largest, fill)


def _spread_sample(S: np.ndarray, stride: int, run: int = 64) -> np.ndarray:
    """About one entry in ``stride`` of each row, taken as runs of ``run`` consecutive entries.

    Runs keep the copy cache-friendly (a plain ``S[:, ::stride]`` touches every cache line
    of a float32 row); they are spread evenly over the row.
    """
    R, N = S.shape
    period = run * stride
    n_runs = N // period
    if n_runs < 4 or not S.flags.c_contiguous:
        return S[:, ::stride]
    item = S.itemsize
    return np.lib.stride_tricks.as_strided(S, shape=(R, n_runs, run), strides=(S.strides[0], period * item, item),
                                           writeable=False).reshape(R, n_runs * run)


# ---------------------------------------------------------------- exclusion
def csr_rows(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sub-CSR ``(indptr, indices)`` of the given rows (vectorised gather)."""
    rows = np.asarray(rows, dtype=np.int64)
    starts = np.asarray(indptr, dtype=np.int64)[rows]
    lens = np.asarray(indptr, dtype=np.int64)[rows + 1] - starts
    sub_ptr = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lens, out=sub_ptr[1:])
    gather = np.repeat(starts - sub_ptr[:-1], lens) + np.arange(sub_ptr[-1])
    return sub_ptr, np.asarray(indices)[gather].astype(np.int64, copy=False)


def excluded_pairs(indptr: np.ndarray, indices: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rows - lo, cols)`` of the excluded entries of CSR rows ``lo .. hi-1``."""
    a, b = int(indptr[lo]), int(indptr[hi])
    lens = np.diff(np.asarray(indptr[lo:hi + 1], dtype=np.int64))
    return np.repeat(np.arange(hi - lo), lens), np.asarray(indices[a:b], dtype=np.int64)
