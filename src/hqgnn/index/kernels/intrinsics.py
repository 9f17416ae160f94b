"""numba, where it loads, and the LLVM intrinsics the compiled searches are built from.

numba is a dependency, but the numpy kernels remain the fallback where it cannot load
(:func:`available`). The intrinsics spell out what the compiler would not produce by
itself: the CPU's popcount and count-trailing-zeros, and vector compares whose lane
mask is the answer (LLVM does not vectorise "set bit i when test i holds" well: it
builds such a mask lane by lane; on AVX-512 these are one ``vpcmp`` into a mask
register, so 8 or 16 items cost a few instructions). :func:`vnni_available` says
whether the int8 dot-product kernel's ``vpdpbusd`` can run here.
"""

from __future__ import annotations

try:  # numba is a dependency; the numpy kernels remain the fallback where it cannot load
    import numba
    from numba import njit, prange, types
    from numba.core import cgutils
    from numba.extending import intrinsic
    from llvmlite import ir
except Exception:  # pragma: no cover - exercised only without numba
    numba = None
    njit = prange = types = cgutils = intrinsic = ir = None

__all__ = ["numba", "njit", "prange", "types", "cgutils", "intrinsic", "ir", "available", "vnni_available"]


def available() -> bool:
    """Whether numba loaded: the compiled searches can run."""
    return numba is not None


def vnni_available() -> bool:
    """Whether the int8 dot-product kernel can run: numba compiling for this CPU, and the
    CPU has AVX-512 VNNI (``vpdpbusd``), whose intrinsic the kernel calls directly."""
    if numba is None or numba.config.CPU_NAME not in (None, "host"):
        return False
    try:
        import llvmlite.binding as llvm

        features = llvm.get_host_cpu_features()
        return bool(features.get("avx512f") and features.get("avx512bw") and features.get("avx512vnni"))
    except Exception:  # pragma: no cover - a CPU llvmlite cannot describe
        return False


if numba is not None:

    @intrinsic
    def _popcount(typingctx, x):
        """The CPU's population count of a uint64 (LLVM ``ctpop``; vectorised by table lookup on AVX2)."""
        if x != types.uint64:
            return None

        def codegen(context, builder, signature, args):
            return builder.ctpop(args[0])

        return types.uint64(types.uint64), codegen

    @intrinsic
    def _lowest_bit(typingctx, x):
        """Index of the lowest set bit of a nonzero uint64 (LLVM ``cttz``)."""
        if x != types.uint64:
            return None

        def codegen(context, builder, signature, args):
            return builder.cttz(args[0], ir.Constant(ir.IntType(1), 0))

        return types.int64(types.uint64), codegen

    def _splat(builder, vty, value):
        lanes = vty.count
        v = builder.insert_element(ir.Constant(vty, ir.Undefined), value, ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined),
                                      ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))

    def _load_vector(context, builder, arrty, arr, start, vty):
        ary = context.make_array(arrty)(context, builder, arr)
        ptr = builder.gep(ary.data, [start])
        # aligned to the element only: groups start anywhere in the array
        return builder.load(builder.bitcast(ptr, vty.as_pointer()), align=vty.element.width // 8)

    # LLVM does not vectorise "set bit i when test i holds" well (it builds the mask lane by
    # lane); these two spell out the vector compare whose lane mask is the answer
    # (AVX-512: one vpcmp into a mask register), so 8 or 16 items cost a few instructions.

    @intrinsic
    def _hamming_mask8(typingctx, arr, start, qv, t):
        """Bit i set where ``popcount(qv ^ arr[start + i]) <= t``, i in 0..7."""
        if not (isinstance(arr, types.Array) and arr.dtype == types.uint64 and arr.ndim == 1):
            return None

        def codegen(context, builder, signature, args):
            a, s, q, th = args
            vty = ir.VectorType(ir.IntType(64), 8)
            v = _load_vector(context, builder, signature.args[0], a, s, vty)
            ctpop = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty]),
                                                   "llvm.ctpop.v8i64")
            counts = builder.call(ctpop, [builder.xor(v, _splat(builder, vty, q))])
            passed = builder.icmp_unsigned("<=", counts, _splat(builder, vty, th))
            return builder.zext(builder.bitcast(passed, ir.IntType(8)), ir.IntType(64))

        return types.uint64(arr, types.intp, types.uint64, types.int64), codegen

    @intrinsic
    def _at_or_below16(typingctx, arr, start, t):
        """Bit i set where ``arr[start + i] <= t`` (int32), i in 0..15."""
        if not (isinstance(arr, types.Array) and arr.dtype == types.int32 and arr.ndim == 1):
            return None

        def codegen(context, builder, signature, args):
            a, s, th = args
            vty = ir.VectorType(ir.IntType(32), 16)
            v = _load_vector(context, builder, signature.args[0], a, s, vty)
            passed = builder.icmp_signed("<=", v, _splat(builder, vty, builder.trunc(th, ir.IntType(32))))
            return builder.zext(builder.bitcast(passed, ir.IntType(16)), ir.IntType(64))

        return types.uint64(arr, types.intp, types.int64), codegen
