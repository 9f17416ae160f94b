"""Compiled exact top-k over b-bit codes (``b <= 8``) by int8 dot products on AVX-512 VNNI.

Built only where :func:`~hqgnn.index.kernels.intrinsics.vnni_available`: the kernel calls
``vpdpbusd`` (``llvm.x86.avx512.vpdpbusd.512``) directly. Eight queries share each pass
over the items (a 16-item block is loaded once for all of them); the selection is that
of :mod:`~hqgnn.index.kernels.compiled_planes` (a sampled threshold, a 16-bit mask per
block and query, an exact fallback), from :mod:`~hqgnn.index.kernels.compiled_select`.
"""

from __future__ import annotations

import numpy as np

from .compiled_select import LOW_RANK_MAX, call_arrays, numba_threads
from .intrinsics import cgutils, intrinsic, ir, njit, numba, prange, types, vnni_available

__all__ = ["FusedDotSearch", "vnni_available", "DOT_QUERIES", "DOT_BLOCK"]

if numba is not None:  # the compiled pieces this loop inlines
    from .compiled_select import _collect_at_or_below, _drop_excluded, _low_rank_value, _write_topk  # noqa: F401
    from .intrinsics import _lowest_bit, _splat  # noqa: F401

DOT_QUERIES = 8     # queries scored together: each 16-item block is loaded once for all of them
DOT_BLOCK = 16      # items per block: one 512-bit register of int32 sums

if numba is not None and vnni_available():
    _I32 = ir.IntType(32)
    _V16 = ir.VectorType(_I32, 16)

    def _make_dot_costs(nq):
        """An intrinsic that scores ``nq`` queries against one block of 16 items.

        ``items``: int32 words, block-major: block ``b``, group ``g`` of 4 dimensions holds
        16 words (4 int8 levels of each item) at ``base + 16 g``. ``queries``: ``(nq, G)``
        int32 words of 4 uint8 codes. Per query, ``vpdpbusd`` sums the 16 dot products,
        then ``cost = scale * dot + bias[item0 .. item0 + 16]``; the costs go to
        ``out[q, :16]``, the 16-bit mask of ``cost <= thresholds[q]`` to bits ``16 q ..``
        of ``masks[q // 4]`` and the function returns whether any mask is nonzero."""

        @intrinsic
        def dot_costs(typingctx, items, base, queries, groups, bias, item0, scale, thresholds, out, masks):
            sig = types.boolean(items, types.intp, queries, types.intp, bias, types.intp, types.int32,
                                thresholds, out, masks)

            def codegen(context, builder, signature, args):
                it, b0, q, ng, bi, i0, sc, th, o, mk = args
                arr = lambda k, v: context.make_array(signature.args[k])(context, builder, v)  # noqa: E731
                ita, qa, bia, tha, oa, mka = arr(0, it), arr(2, q), arr(4, bi), arr(7, th), arr(8, o), arr(9, mk)
                vnni = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(_V16, [_V16, _V16, _V16]), "llvm.x86.avx512.vpdpbusd.512")
                zero = ir.Constant(_V16, None)
                accs = [cgutils.alloca_once_value(builder, zero) for _ in range(nq)]
                g_ty = ng.type
                with cgutils.for_range(builder, ng) as loop:
                    g = loop.index
                    ptr = builder.gep(ita.data, [builder.add(b0, builder.mul(g, ir.Constant(g_ty, DOT_BLOCK)))])
                    iv = builder.load(builder.bitcast(ptr, _V16.as_pointer()), align=4)
                    for j in range(nq):
                        qword = builder.load(builder.gep(qa.data, [builder.add(builder.mul(
                            ir.Constant(g_ty, j), ng), g)]))
                        builder.store(builder.call(vnni, [builder.load(accs[j]), _splat(builder, _V16, qword), iv]),
                                      accs[j])
                bias_v = builder.load(builder.bitcast(builder.gep(bia.data, [i0]), _V16.as_pointer()), align=4)
                scale_v = _splat(builder, _V16, sc)
                any_hit = ir.Constant(ir.IntType(64), 0)
                words = [ir.Constant(ir.IntType(64), 0) for _ in range((nq + 3) // 4)]
                for j in range(nq):
                    cost = builder.add(builder.mul(builder.load(accs[j]), scale_v), bias_v)
                    optr = builder.gep(oa.data, [ir.Constant(g_ty, j * DOT_BLOCK)])
                    builder.store(cost, builder.bitcast(optr, _V16.as_pointer()), align=4)
                    t = builder.trunc(builder.load(builder.gep(tha.data, [ir.Constant(g_ty, j)])), _I32)
                    hit = builder.zext(builder.bitcast(builder.icmp_signed("<=", cost, _splat(builder, _V16, t)),
                                                       ir.IntType(16)), ir.IntType(64))
                    words[j // 4] = builder.or_(words[j // 4], builder.shl(hit, ir.Constant(ir.IntType(64),
                                                                                          16 * (j % 4))))
                    any_hit = builder.or_(any_hit, hit)
                for w, word in enumerate(words):
                    builder.store(word, builder.gep(mka.data, [ir.Constant(g_ty, w)]))
                return builder.icmp_unsigned("!=", any_hit, ir.Constant(ir.IntType(64), 0))

            return sig, codegen

        return dot_costs

    _dot_costs_batch = _make_dot_costs(DOT_QUERIES)
    _dot_costs_one = _make_dot_costs(1)

    @njit(cache=True, nogil=True, inline="always")
    def _score_block(nb, items, base, qb, groups, bias, item0, scale, th, costs, masks):
        """One block against the batch's queries: a single query (a lone request) runs the
        1-query intrinsic instead of eight copies of itself."""
        if nb == 1:
            return _dot_costs_one(items, base, qb[:1], groups, bias, item0, scale, th[:1], costs[:1], masks[:1])
        return _dot_costs_batch(items, base, qb, groups, bias, item0, scale, th, costs, masks)

    @njit(cache=True, nogil=True, parallel=True)
    def _dot_topk(q, items, n_items, groups, bias, sample, sample_bias, n_sample, stride, scale,
                  user_offset, k, ex_indptr, ex_indices, max_cost, n_chunks, out_items, out_scores):
        R = q.shape[0]
        N = n_items
        n_blocks = bias.shape[0] // DOT_BLOCK
        s_blocks = sample_bias.shape[0] // DOT_BLOCK
        ns = n_sample
        QB = DOT_QUERIES
        sentinel = np.int32(max_cost + 1)
        for chunk in prange(n_chunks):
            r_lo = chunk * R // n_chunks
            r_hi = (chunk + 1) * R // n_chunks
            qb = np.empty((QB, groups), np.int32)
            th = np.empty(QB, np.int64)
            costs = np.empty((QB, DOT_BLOCK), np.int32)
            masks = np.empty((QB + 3) // 4, np.uint64)
            samp = np.empty((QB, s_blocks * DOT_BLOCK), np.int32)
            cand_i = np.empty((QB, N), np.int64)
            cand_c = np.empty((QB, N), np.int32)
            count = np.zeros(QB, np.int64)
            order = np.empty(N, np.int64)
            full = np.empty(n_blocks * DOT_BLOCK, np.int32)
            one_t = np.empty(1, np.int64)
            one_m = np.empty(1, np.uint64)
            for b_lo in range(r_lo, r_hi, QB):
                nb = min(QB, r_hi - b_lo)
                for j in range(QB):  # a short last batch repeats its last query
                    qb[j] = q[b_lo + min(j, nb - 1)]
                    th[j] = -(1 << 31)  # int32 minimum: a padding query passes nothing
                # 1. thresholds from the sample: the cost of rank (k + seen) // stride + 3
                for sb in range(s_blocks):
                    _score_block(nb, sample, sb * groups * DOT_BLOCK, qb, groups, sample_bias, sb * DOT_BLOCK,
                                 scale, th, costs, masks)
                    for j in range(nb):
                        samp[j, sb * DOT_BLOCK:(sb + 1) * DOT_BLOCK] = costs[j]
                for j in range(nb):
                    r = b_lo + j
                    need = k + ex_indptr[r + 1] - ex_indptr[r]
                    rank = need // stride + 3
                    if rank < ns:
                        if rank < LOW_RANK_MAX:
                            th[j] = _low_rank_value(samp[j], ns, rank, sentinel)
                        else:
                            th[j] = np.partition(samp[j, :ns], rank)[rank]
                    else:
                        th[j] = max_cost  # every item is a candidate
                # 2. one pass over the blocks for the whole batch
                count[:] = 0
                for blk in range(n_blocks):
                    if not _score_block(nb, items, blk * groups * DOT_BLOCK, qb, groups, bias, blk * DOT_BLOCK,
                                        scale, th, costs, masks):
                        continue
                    for j in range(nb):
                        hits = (masks[j // 4] >> np.uint64(16 * (j % 4))) & np.uint64(0xFFFF)
                        while hits != np.uint64(0):
                            i = _lowest_bit(hits)
                            item = blk * DOT_BLOCK + i
                            if item < N:
                                cand_i[j, count[j]] = item
                                cand_c[j, count[j]] = costs[j, i]
                                count[j] += 1
                            hits &= hits - np.uint64(1)
                # 3. per query: drop excluded items; too few left -> exact over every item
                for j in range(nb):
                    r = b_lo + j
                    s0 = ex_indptr[r]
                    s1 = ex_indptr[r + 1]
                    m = _drop_excluded(cand_i[j], cand_c[j], count[j], ex_indices, s0, s1)
                    if m < k:
                        one_t[0] = max_cost
                        for blk in range(n_blocks):
                            _dot_costs_one(items, blk * groups * DOT_BLOCK, qb[j:j + 1], groups, bias,
                                           blk * DOT_BLOCK, scale, one_t, full[blk * DOT_BLOCK:(blk + 1) * DOT_BLOCK],
                                           one_m)
                        for p in range(s0, s1):
                            full[ex_indices[p]] = sentinel
                        t = np.partition(full[:N], min(k, N) - 1)[min(k, N) - 1]
                        m = _collect_at_or_below(full, N, t, max_cost, cand_i[j], cand_c[j])
                    # 4. order by cost (a merge sort: candidates are in index order, ties go to the lower index)
                    order[:m] = np.argsort(cand_c[j, :m], kind="mergesort")
                    _write_topk(cand_i[j], cand_c[j], order, m, k, r, user_offset[r], 1, out_items, out_scores)


def _blocked_levels(levels: np.ndarray) -> tuple[np.ndarray, int]:
    """``(N, d)`` int8 levels as the int32 words the dot kernel reads: blocks of 16 items,
    groups of 4 dimensions (zero-padded to both), block-major. Returns ``(words, groups)``."""
    n, d = levels.shape
    groups = max(1, -(-d // 4))
    n_pad = max(DOT_BLOCK, -(-n // DOT_BLOCK) * DOT_BLOCK)
    padded = np.zeros((n_pad, groups * 4), np.int8)
    padded[:n, :d] = levels
    blocked = padded.reshape(n_pad // DOT_BLOCK, DOT_BLOCK, groups, 4).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(blocked).view(np.int32).reshape(-1), groups


class FusedDotSearch:
    """Exact top-k over b-bit codes (``b <= 8``) by int8 dot products on AVX-512 VNNI.

    Integer-only: ``vpdpbusd`` multiplies the user's codes (uint8) by the items' int8
    levels and sums in int32; the score is that product scaled plus a per-item and a
    per-user integer (below). Eight queries share each pass over the items, so a block of
    16 items is loaded once for all eight; the selection is the bit-plane loop's (a
    sampled threshold, a 16-bit mask per block and query, an exact fallback).

    With codes ``c`` and levels ``k = 2c - m`` (``m = 2^b - 1``):
    ``b <= 7``: ``<k_u, k_i> = 2 <c_u, k_i> - m sum(k_i)`` (``k_i`` fits int8);
    ``b = 8``: with ``s_i = c_i - 128`` (int8), ``k_i = 2 s_i + 1`` and
    ``<k_u, k_i> = 4 <c_u, s_i> - 510 sum(s_i) + sum(k_u)``.
    """

    sample_stride = 16

    def __init__(self, codes: np.ndarray, bits: int):
        if not vnni_available():  # pragma: no cover - checked by callers
            raise RuntimeError("the int8 dot kernel needs numba and AVX-512 VNNI")
        codes = np.asarray(codes)
        self.bits, self.dim = bits, codes.shape[1]
        self.m = 2**bits - 1
        c = codes.astype(np.int16)
        levels = (c - 128).astype(np.int8) if bits == 8 else (2 * c - self.m).astype(np.int8)
        self.scale = np.int32(-4 if bits == 8 else -2)
        bias = (510 if bits == 8 else self.m) * levels.sum(axis=1, dtype=np.int64)
        self.n_items = codes.shape[0]
        self.items, self.groups = _blocked_levels(levels)
        self.bias = _padded_bias(bias, self.items.size // (self.groups * DOT_BLOCK))
        sample = levels[:: self.sample_stride]
        self.n_sample = sample.shape[0]
        self.sample, _ = _blocked_levels(sample)
        self.sample_bias = _padded_bias(bias[:: self.sample_stride], self.sample.size // (self.groups * DOT_BLOCK))
        self.max_cost = 2 * self.dim * self.m * self.m  # |cost| = |user term - score| <= 2 d m^2 < 2^31

    def search(self, codes: np.ndarray, k: int, exclude=None, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """``codes``: ``(Q, d)`` query codes. Returns ``(items int64, scores int32)``, each ``(Q, k)``."""
        codes = np.asarray(codes)
        nq = codes.shape[0]
        q = np.zeros((nq, self.groups * 4), np.uint8)
        q[:, : self.dim] = codes
        q = q.view(np.int32)
        if self.bits == 8:
            offset = (2 * codes.astype(np.int64) - self.m).sum(axis=1)
        else:
            offset = np.zeros(nq, np.int64)
        indptr, indices, out_items, out_scores = call_arrays(exclude, nq, k)
        if nq == 0:
            return out_items, out_scores
        with numba_threads(threads) as threads:
            _dot_topk(q, self.items, self.n_items, self.groups, self.bias, self.sample, self.sample_bias,
                      self.n_sample, self.sample_stride, self.scale, offset, k, indptr, indices,
                      self.max_cost, min(-(-nq // DOT_QUERIES), 8 * threads), out_items, out_scores)
        return out_items, out_scores


def _padded_bias(bias: np.ndarray, n_blocks: int) -> np.ndarray:
    out = np.zeros(n_blocks * DOT_BLOCK, np.int32)
    out[: len(bias)] = bias
    return out
