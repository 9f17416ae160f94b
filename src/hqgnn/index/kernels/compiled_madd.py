"""Compiled exact top-k over b-bit codes (``b <= 8``) by integer multiply-adds on AVX2.

Why written by hand: at small ``d`` (8 bytes per item: 2 bits x 32, 4 bits x 16, 8 bits x 8)
scoring is cheap and the unfused search of :class:`~hqgnn.index.kernels.CodeGemmKernel`
spends its time outside the matrix product. Profiled on the MovieLens-1M shape (6,040
users x 3,952 items, its train CSR excluded, 4 bits x 16, exact top-50, 1 thread, AVX2
EPYC): the sgemm is 12% of the search; sorting the exclusion pairs, masking them,
``flatnonzero`` and ranking the survivors are the rest, each a pass over a (queries x
items) temporary. This loop scores and selects in one pass, as the bit-plane and VNNI
loops do: 1.9-2.8x gemm and 1.1-2.5x the bit planes at 8 and 16 bytes per item, 0.51-0.90x
the 1 bit x 64 code instead of 0.26-0.55x (``benchmarks/small_dims.py``,
``benchmarks/results/small-dims-avx2.md``). Two choices in it were measured too (same shape,
CPU time): the packed-key selection (a partition to ``k``, then one sort, instead of an
argsort of every candidate) with the sample's seen items masked (so about ``k + 3 stride``
candidates pass instead of ``k + seen + 3 stride``): ML-1M 4 x 16, 62k -> 103k queries/s;
a short list rescanned with a higher sample rank, as the bit-plane loop does, instead of
scoring every item and partitioning them (about 1 query in 25 at k = 50): Gowalla 8 x 8,
21k -> 42k queries/s.

Scoring (:class:`FusedMaddSearch` has the two forms): the odd levels ``k = 2c - m``
(``|k| <= 255``) are held as int16, two dimensions per int32 word; one ``vpmaddwd``
multiplies 8 items x 2 dimensions by a query's two levels and sums each pair in int32, so
``<k_u, k_i>`` is exact wherever ``d m^2 < 2^30``. Where int16 sums cannot overflow, items
are int8 levels, four dimensions per word, multiplied by the query's uint8 codes
(``vpmaddubsw``). The cost is ``C = (d m^2 - <k_u, k_i>) / 2`` (an integer: both sides
have the parity of ``d``), lower is better, as in :mod:`~hqgnn.index.kernels.compiled_planes`.
Eight queries share each pass over the items (a block of 8 items is loaded once for all of
them). The selection is that of :mod:`~hqgnn.index.kernels.compiled_dot`: a sampled
threshold, an 8-bit mask per block and query (the 64 bits of 8 queries walked bit by bit),
a rescan of a query left short (:mod:`~hqgnn.index.kernels.compiled_select`).
"""

from __future__ import annotations

import functools

import numpy as np

from .compiled_select import LOW_RANK_MAX, PAD_SCORE, call_arrays, numba_threads
from .intrinsics import cgutils, intrinsic, ir, njit, numba, prange, types

__all__ = ["FusedMaddSearch", "madd_available", "MADD_QUERIES", "MADD_BLOCK"]

if numba is not None:  # the compiled pieces this loop inlines
    from .compiled_select import _low_rank_value  # noqa: F401
    from .intrinsics import _lowest_bit, _splat  # noqa: F401

MADD_QUERIES = 8    # queries scored together: each 8-item block is loaded once for all of them
MADD_BLOCK = 8      # items per block: one 256-bit register of int32 sums


@functools.lru_cache(maxsize=None)  # asked on every search; llvmlite's answer costs ~0.5 ms
def madd_available() -> bool:
    """Whether the kernel can run: numba compiling for this CPU, and the CPU has AVX2
    (``vpmaddwd`` / ``vpmaddubsw`` on 256-bit registers, whose intrinsics the kernel calls)."""
    if numba is None or numba.config.CPU_NAME not in (None, "host"):
        return False
    try:
        import llvmlite.binding as llvm

        return bool(llvm.get_host_cpu_features().get("avx2"))
    except Exception:  # pragma: no cover - a CPU llvmlite cannot describe
        return False


if numba is not None and madd_available():
    _I32 = ir.IntType(32)
    _V8 = ir.VectorType(_I32, 8)
    _V16H = ir.VectorType(ir.IntType(16), 16)

    _V32B = ir.VectorType(ir.IntType(8), 32)

    def _make_madd_costs(nq, narrow):
        """An intrinsic that scores ``nq`` queries against one block of 8 items.

        ``items``: int32 words, block-major: block ``b``, group ``g`` holds 8 words (one per
        item) at ``base + 8 g``. Wide form: a word is 2 int16 levels, a query word 2 int16
        levels; ``vpmaddwd`` sums the products of each pair in int32 and
        ``cost = (bias - dot) >> 1`` (``bias = d m^2``). Narrow form: a word is 4 int8
        levels, a query word 4 uint8 codes; ``vpmaddubsw`` sums pairs in int16 lanes,
        accumulated in int16 across the groups (the caller checks they cannot overflow), one
        ``vpmaddwd`` by ones per block adds the lane pairs and ``cost = bias - dot`` (``bias``
        per item: ``(d m^2 + m sum(k_i)) / 2``). The costs go to ``out[q, :8]``, the 8-bit mask
        of ``cost <= thresholds[q]`` to bits ``8 q ..`` of ``masks[q // 8]``; the function
        returns whether any mask is nonzero."""

        @intrinsic
        def madd_costs(typingctx, items, base, queries, groups, bias, item0, thresholds, out, masks):
            sig = types.boolean(items, types.intp, queries, types.intp, bias, types.intp, thresholds, out, masks)

            def codegen(context, builder, signature, args):
                it, b0, q, ng, bi, i0, th, o, mk = args
                arr = lambda k, v: context.make_array(signature.args[k])(context, builder, v)  # noqa: E731
                ita, qa, bia, tha, oa, mka = arr(0, it), arr(2, q), arr(4, bi), arr(6, th), arr(7, o), arr(8, mk)
                wd = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(_V8, [_V16H, _V16H]), "llvm.x86.avx2.pmadd.wd")
                ubsw = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(_V16H, [_V32B, _V32B]), "llvm.x86.avx2.pmadd.ub.sw")
                acc_ty = _V16H if narrow else _V8
                accs = [cgutils.alloca_once_value(builder, ir.Constant(acc_ty, None)) for _ in range(nq)]
                g_ty = ng.type
                with cgutils.for_range(builder, ng) as loop:
                    g = loop.index
                    ptr = builder.gep(ita.data, [builder.add(b0, builder.mul(g, ir.Constant(g_ty, MADD_BLOCK)))])
                    iv = builder.load(builder.bitcast(ptr, _V8.as_pointer()), align=4)
                    iv = builder.bitcast(iv, _V32B if narrow else _V16H)
                    for j in range(nq):
                        qword = builder.load(builder.gep(qa.data, [builder.add(builder.mul(
                            ir.Constant(g_ty, j), ng), g)]))
                        qv = builder.bitcast(_splat(builder, _V8, qword), _V32B if narrow else _V16H)
                        prod = builder.call(ubsw if narrow else wd, [qv, iv])
                        builder.store(builder.add(builder.load(accs[j]), prod), accs[j])
                bias_v = builder.load(builder.bitcast(builder.gep(bia.data, [i0]), _V8.as_pointer()), align=4)
                one = _splat(builder, _V8, ir.Constant(_I32, 1))
                ones16 = builder.bitcast(_splat(builder, _V8, ir.Constant(_I32, 0x00010001)), _V16H)
                any_hit = ir.Constant(ir.IntType(64), 0)
                words = [ir.Constant(ir.IntType(64), 0) for _ in range((nq + 7) // 8)]
                for j in range(nq):
                    acc = builder.load(accs[j])
                    if narrow:
                        cost = builder.sub(bias_v, builder.call(wd, [acc, ones16]))
                    else:
                        cost = builder.ashr(builder.sub(bias_v, acc), one)
                    optr = builder.gep(oa.data, [ir.Constant(g_ty, j * MADD_BLOCK)])
                    builder.store(cost, builder.bitcast(optr, _V8.as_pointer()), align=4)
                    t = builder.trunc(builder.load(builder.gep(tha.data, [ir.Constant(g_ty, j)])), _I32)
                    hit = builder.zext(builder.bitcast(builder.icmp_signed("<=", cost, _splat(builder, _V8, t)),
                                                       ir.IntType(8)), ir.IntType(64))
                    words[j // 8] = builder.or_(words[j // 8], builder.shl(hit, ir.Constant(ir.IntType(64),
                                                                                          8 * (j % 8))))
                    any_hit = builder.or_(any_hit, hit)
                for w, word in enumerate(words):
                    builder.store(word, builder.gep(mka.data, [ir.Constant(g_ty, w)]))
                return builder.icmp_unsigned("!=", any_hit, ir.Constant(ir.IntType(64), 0))

            return sig, codegen

        return madd_costs

    _wide_batch, _wide_one = _make_madd_costs(MADD_QUERIES, False), _make_madd_costs(1, False)
    _narrow_batch, _narrow_one = _make_madd_costs(MADD_QUERIES, True), _make_madd_costs(1, True)

    @njit(cache=True, nogil=True, inline="always")
    def _score_one(narrow, items, base, qb, groups, bias, item0, th, costs, masks):
        """One block against the single query ``qb[0]``."""
        if narrow:
            return _narrow_one(items, base, qb, groups, bias, item0, th, costs, masks)
        return _wide_one(items, base, qb, groups, bias, item0, th, costs, masks)

    @njit(cache=True, nogil=True, inline="always")
    def _score_block(narrow, nb, items, base, qb, groups, bias, item0, th, costs, masks):
        """One block against the batch's queries: a single query (a lone request) runs the
        1-query intrinsic instead of eight copies of itself."""
        if nb == 1:
            return _score_one(narrow, items, base, qb[:1], groups, bias, item0, th[:1], costs[:1], masks[:1])
        if narrow:
            return _narrow_batch(items, base, qb, groups, bias, item0, th, costs, masks)
        return _wide_batch(items, base, qb, groups, bias, item0, th, costs, masks)

    @njit(cache=True, nogil=True, inline="always")
    def _drop_excluded_keys(keys, n, ex_indices, s0, s1):
        """Removes the items ``ex_indices[s0:s1]`` from the first ``n`` candidate keys
        (``cost << 32 | item``, in item order), in place; returns how many remain."""
        m = 0
        p = s0
        for c in range(n):
            key = keys[c]
            it = key & 0xFFFFFFFF
            while p < s1 and ex_indices[p] < it:
                p += 1
            if p < s1 and ex_indices[p] == it:
                continue
            keys[m] = key
            m += 1
        return m

    @njit(cache=True, nogil=True, parallel=True)
    def _madd_topk(q, narrow, items, n_items, groups, bias, sample, sample_bias, n_sample, stride, k, ex_indptr,
                   ex_indices, max_cost, n_chunks, out_items, out_scores):
        R = q.shape[0]
        N = n_items
        n_blocks = items.shape[0] // (groups * MADD_BLOCK)
        s_blocks = sample.shape[0] // (groups * MADD_BLOCK)
        ns = n_sample
        QB = MADD_QUERIES
        sentinel = np.int32(max_cost + 1)
        for chunk in prange(n_chunks):
            r_lo = chunk * R // n_chunks
            r_hi = (chunk + 1) * R // n_chunks
            qb = np.empty((QB, groups), np.int32)
            th = np.empty(QB, np.int64)
            costs = np.empty((QB, MADD_BLOCK), np.int32)
            masks = np.empty(1, np.uint64)
            samp = np.empty((QB, s_blocks * MADD_BLOCK), np.int32)
            cand = np.empty((QB, N), np.int64)  # candidate keys: cost << 32 | item
            count = np.zeros(QB, np.int64)
            one_t = np.empty(1, np.int64)
            one_m = np.empty(1, np.uint64)
            for b_lo in range(r_lo, r_hi, QB):
                nb = min(QB, r_hi - b_lo)
                for j in range(QB):  # a short last batch repeats its last query
                    qb[j] = q[b_lo + min(j, nb - 1)]
                    th[j] = -(1 << 31)  # int32 minimum: a padding query passes nothing
                # 1. thresholds from the sample, seen items masked: the cost of rank k // stride + 3
                for sb in range(s_blocks):
                    _score_block(narrow, nb, sample, sb * groups * MADD_BLOCK, qb, groups, sample_bias,
                                 sb * MADD_BLOCK, th, costs, masks)
                    for j in range(nb):
                        for i in range(MADD_BLOCK):
                            samp[j, sb * MADD_BLOCK + i] = costs[j, i]
                for j in range(nb):
                    r = b_lo + j
                    for p in range(ex_indptr[r], ex_indptr[r + 1]):  # seen items leave the sample
                        e = ex_indices[p]
                        if e % stride == 0:
                            samp[j, e // stride] = sentinel
                    rank = k // stride + 3
                    th[j] = max_cost  # every item is a candidate
                    if rank < ns:
                        if rank < LOW_RANK_MAX:
                            t = _low_rank_value(samp[j], ns, rank, sentinel)
                        else:
                            t = np.partition(samp[j, :ns], rank)[rank]
                        th[j] = min(t, max_cost)
                # 2. one pass over the blocks for the whole batch: the 64 bits of the mask are
                # 8 items x 8 queries, walked set bit by set bit
                count[:] = 0
                for blk in range(n_blocks):
                    if not _score_block(narrow, nb, items, blk * groups * MADD_BLOCK, qb, groups, bias,
                                        blk * MADD_BLOCK, th, costs, masks):
                        continue
                    hits = masks[0]
                    while hits != np.uint64(0):
                        bit = _lowest_bit(hits)
                        j = bit >> 3
                        i = bit & 7
                        item = blk * MADD_BLOCK + i
                        if item < N:
                            cand[j, count[j]] = (np.int64(costs[j, i]) << 32) | item
                            count[j] += 1
                        hits &= hits - np.uint64(1)
                # 3. per query: drop excluded items. Too few left (the sample misjudged the
                # threshold: about 1 query in 25 at k = 50): this query alone rescans the items
                # with the cost of a higher sample rank, until every item is a candidate
                for j in range(nb):
                    r = b_lo + j
                    s0 = ex_indptr[r]
                    s1 = ex_indptr[r + 1]
                    keys = cand[j]
                    m = _drop_excluded_keys(keys, count[j], ex_indices, s0, s1)
                    rank = k // stride + 3
                    one_t[0] = th[j]
                    while m < k and one_t[0] < max_cost:
                        rank = 2 * rank + 4
                        one_t[0] = max_cost
                        if rank < ns:
                            one_t[0] = min(np.partition(samp[j, :ns], rank)[rank], max_cost)
                        n = 0
                        for blk in range(n_blocks):
                            if not _score_one(narrow, items, blk * groups * MADD_BLOCK, qb[j:j + 1], groups, bias,
                                              blk * MADD_BLOCK, one_t, costs[:1], one_m):
                                continue
                            hits = one_m[0]
                            while hits != np.uint64(0):
                                i = _lowest_bit(hits)
                                item = blk * MADD_BLOCK + i
                                if item < N:
                                    keys[n] = (np.int64(costs[0, i]) << 32) | item
                                    n += 1
                                hits &= hits - np.uint64(1)
                        m = _drop_excluded_keys(keys, n, ex_indices, s0, s1)
                    # 4. order by (cost, item): the k smallest packed keys (a partition when
                    # there are many more), then one sort of those; ties go to the lower index
                    if m > 2 * k:
                        best = np.partition(keys[:m], k - 1)[:k]
                        m = k
                    else:
                        best = keys[:m]
                    best.sort()
                    for c in range(k):
                        if c < m:
                            out_items[r, c] = best[c] & 0xFFFFFFFF
                            out_scores[r, c] = np.int32(max_cost - 2 * (best[c] >> 32))
                        else:
                            out_items[r, c] = -1
                            out_scores[r, c] = PAD_SCORE


def _blocked(values: np.ndarray, per_word: int) -> tuple[np.ndarray, int]:
    """``(N, d)`` int16 (``per_word = 2``) or int8 (``4``) values as the int32 words the kernel
    reads: blocks of 8 items, groups of ``per_word`` dimensions (zero-padded to both),
    block-major. Returns ``(words, groups)``."""
    n, d = values.shape
    groups = max(1, -(-d // per_word))
    n_pad = max(MADD_BLOCK, -(-n // MADD_BLOCK) * MADD_BLOCK)
    padded = np.zeros((n_pad, groups * per_word), values.dtype)
    padded[:n, :d] = values
    blocked = padded.reshape(n_pad // MADD_BLOCK, MADD_BLOCK, groups, per_word).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(blocked).view(np.int32).reshape(-1), groups


def _padded_bias(bias: np.ndarray, words: np.ndarray, groups: int) -> np.ndarray:
    """The per-item int32 ``bias`` zero-padded to the items of the blocked ``words``."""
    out = np.zeros(words.size // groups, np.int32)
    out[: len(bias)] = bias
    return out


class FusedMaddSearch:
    """Exact top-k over b-bit codes (``b <= 8``) by integer multiply-adds on AVX2.

    ``levels``: ``(N, d)`` odd levels ``k = 2c - m`` of the items (any integer or float dtype
    holding them exactly). Integer-only, in one of two forms:

    * narrow, where every int16 lane sum stays below 2^15 (``2 ceil(d / 4) m^2 < 2^15``: up to
      4 bits at d = 64, 5 bits at d = 16; never 8 bits): items as int8 levels (``d`` bytes),
      queries as uint8 codes, ``vpmaddubsw`` over 4 dimensions per word, and
      ``<k_u, k_i> = 2 <c_u, k_i> - m sum(k_i)`` (the last term a per-item integer);
    * wide, elsewhere (``d m^2 < 2^30``): int16 levels (``2 d`` bytes), ``vpmaddwd`` over 2
      dimensions per word, int32 sums.

    Measured on the Gowalla shape (41k items, exact top-50, 1 thread, AVX2 EPYC, CPU time): the
    narrow form 1.1x the wide one at 4 bits x 16 and 1.25x at 2 bits x 32 (its words hold 4
    dimensions, not 2).
    """

    sample_stride = 16

    def __init__(self, levels: np.ndarray, bits: int):
        if not madd_available():  # pragma: no cover - checked by callers
            raise RuntimeError("the int16 multiply-add kernel needs numba and AVX2")
        levels = np.asarray(levels)
        self.bits, self.dim = bits, levels.shape[1]
        m = self.m = 2**bits - 1
        self.max_cost = self.dim * m * m  # cost (d m^2 - score) / 2 lies in 0 .. d m^2
        if 2 * self.max_cost >= 2**31:
            raise ValueError(f"d m^2 = {self.max_cost} does not fit the int32 sums")
        self.n_items = levels.shape[0]
        self.narrow = bits <= 7 and 2 * (-(-self.dim // 4)) * m * m < 2**15
        lv = levels.astype(np.int64)
        if self.narrow:
            bias = (self.max_cost + m * lv.sum(axis=1)) // 2
            values = lv.astype(np.int8)
        else:
            bias = np.full(self.n_items, self.max_cost, np.int64)
            values = lv.astype(np.int16)
        per_word = 4 if self.narrow else 2
        self.items, self.groups = _blocked(values, per_word)
        self.bias = _padded_bias(bias, self.items, self.groups)
        stride = self.sample_stride
        self.n_sample = len(values[::stride])
        self.sample, _ = _blocked(values[::stride], per_word)
        self.sample_bias = _padded_bias(bias[::stride], self.sample, self.groups)

    def search(self, levels: np.ndarray, k: int, exclude=None, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """``levels``: ``(Q, d)`` query levels. Returns ``(items int64, scores int32)``, each ``(Q, k)``."""
        levels = np.asarray(levels)
        nq = levels.shape[0]
        if self.narrow:  # the queries' unsigned codes c = (k + m) / 2
            q = np.zeros((nq, self.groups * 4), np.uint8)
            q[:, : self.dim] = (levels.astype(np.int16) + self.m) // 2
        else:
            q = np.zeros((nq, self.groups * 2), np.int16)
            q[:, : self.dim] = levels
        q = q.view(np.int32)
        indptr, indices, out_items, out_scores = call_arrays(exclude, nq, k)
        if nq == 0:
            return out_items, out_scores
        with numba_threads(threads) as threads:
            _madd_topk(q, self.narrow, self.items, self.n_items, self.groups, self.bias, self.sample,
                       self.sample_bias, self.n_sample, self.sample_stride, k, indptr, indices, self.max_cost,
                       min(-(-nq // MADD_QUERIES), 8 * threads), out_items, out_scores)
        return out_items, out_scores
