"""Packing of b-bit unsigned codes into 64-bit words (bit planes), and back.

Code definition (``hqgnn.models.quantizer``): an entry's odd level is
``k in {-(2^b - 1), ..., 2^b - 1}``, its unsigned code ``c = (k + 2^b - 1) / 2``
in ``[0, 2^b - 1]`` (uint8, one row of ``d`` codes per user / item).

Packed layout ("bitplanes-u64le"), for ``n`` rows of ``d`` codes of ``b`` bits:

* ``planes`` is a ``(b, n, W)`` array of little-endian uint64 words,
  ``W = ceil(d / 64)``; plane ``j`` holds bit ``j`` of every code;
* dimension ``t`` of a row is bit ``t % 64`` of word ``t // 64``;
* the ``pad = 64 W - d`` trailing bits of the last word are zero.

For ``b = 1`` there is a single plane, the sign bits, so ``planes[0]`` is the
usual binary code of Hamming retrieval. Zero padding cannot change a score:
it adds nothing to ``popcount(a AND b)``, nothing to ``popcount(a XOR b)``,
and the kernels use the true ``d`` (never ``64 W``) in their score formulas.
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 64
LAYOUT = "bitplanes-u64le"


def words_per_row(dim: int) -> int:
    """Number of 64-bit words that hold ``dim`` bits."""
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    return -(-dim // WORD_BITS)


def pad_bits(dim: int) -> int:
    """Zero bits appended to each row to fill whole words: ``64 * words_per_row(dim) - dim``."""
    return WORD_BITS * words_per_row(dim) - dim


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack an ``(n, d)`` array of 0/1 values into ``(n, ceil(d/64))`` little-endian uint64 words."""
    bits = np.asarray(bits)
    if bits.ndim != 2:
        raise ValueError(f"expected an (n, d) array of bits, got shape {bits.shape}")
    n, d = bits.shape
    w = words_per_row(d)
    packed = np.packbits(bits.astype(bool, copy=False), axis=1, bitorder="little")  # (n, ceil(d/8))
    out = np.zeros((n, 8 * w), dtype=np.uint8)
    out[:, : packed.shape[1]] = packed
    return out.view("<u8").astype(np.uint64, copy=False).reshape(n, w)


def unpack_bits(words: np.ndarray, dim: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``(n, W)`` uint64 words to an ``(n, dim)`` uint8 array of 0/1."""
    words = np.ascontiguousarray(words, dtype="<u8")
    if words.ndim != 2 or words.shape[1] != words_per_row(dim):
        raise ValueError(f"expected (n, {words_per_row(dim)}) words for dim={dim}, got shape {words.shape}")
    as_bytes = words.view(np.uint8).reshape(words.shape[0], 8 * words.shape[1])
    return np.unpackbits(as_bytes, axis=1, count=dim, bitorder="little")


def check_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Validate unsigned codes (integers in ``[0, 2^bits - 1]``, shape ``(n, d)``); return them as uint8."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must be an (n, d) array, got shape {codes.shape}")
    if codes.dtype.kind not in "iub":
        raise ValueError(f"codes must be integers, got dtype {codes.dtype}")
    if codes.size and (codes.min() < 0 or codes.max() > 2**bits - 1):
        raise ValueError(f"codes must lie in [0, {2**bits - 1}] for bits={bits}, "
                         f"got values in [{codes.min()}, {codes.max()}]")
    return codes.astype(np.uint8, copy=False)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack ``(n, d)`` unsigned codes of ``bits`` bits into ``(bits, n, W)`` uint64 bit planes."""
    codes = check_codes(codes, bits)
    return np.stack([pack_bits((codes >> j) & 1) for j in range(bits)])


def unpack_codes(planes: np.ndarray, bits: int, dim: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``(bits, n, W)`` planes to ``(n, dim)`` uint8 codes."""
    planes = np.asarray(planes)
    if planes.ndim != 3 or planes.shape[0] != bits:
        raise ValueError(f"expected ({bits}, n, W) bit planes, got shape {planes.shape}")
    out = np.zeros((planes.shape[1], dim), dtype=np.uint8)
    for j in range(bits):  # loop over bit planes, not rows
        out |= unpack_bits(planes[j], dim) << np.uint8(j)
    return out


def codes_to_levels(codes: np.ndarray, bits: int, dtype=np.int32) -> np.ndarray:
    """Odd levels ``k = 2 c - (2^bits - 1)`` of unsigned codes ``c`` (exact in any dtype used here)."""
    return (2 * np.asarray(codes, dtype=np.int32) - (2**bits - 1)).astype(dtype, copy=False)


def levels_to_codes(levels: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned codes ``c = (k + 2^bits - 1) / 2`` of odd levels ``k`` (uint8); rejects even or out-of-range k."""
    k = np.asarray(levels).astype(np.int64)
    top = 2**bits - 1
    if k.size and (np.abs(k).max() > top or not np.all(k % 2 == 1)):
        raise ValueError(f"levels must be odd integers in [-{top}, {top}] for bits={bits}")
    return ((k + top) // 2).astype(np.uint8)


def code_sums(codes: np.ndarray) -> np.ndarray:
    """Per-row sum of unsigned codes (int64): the per-item term of the b-bit score formula."""
    return np.asarray(codes).sum(axis=1, dtype=np.int64)


def packed_bytes_per_row(bits: int, dim: int) -> int:
    """Bytes of one packed row: ``bits`` planes of ``W`` 8-byte words (float32 rows: ``4 dim``)."""
    if bits == 32:
        return 4 * dim
    return bits * words_per_row(dim) * 8
