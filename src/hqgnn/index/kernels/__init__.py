"""Exact scoring kernels: every one implements :class:`~hqgnn.index.kernels.protocol.Kernel`.

* :mod:`.protocol`        -- the :class:`Kernel` / :class:`FusedSearch` interface;
* :mod:`.planes`          -- :class:`PlaneKernel`: XOR + popcount over bit planes (numpy,
  or the compiled loop of :mod:`.compiled_planes`);
* :mod:`.products`        -- :class:`CodeGemmKernel`, :class:`IntMatmulKernel`,
  :class:`Int8MatmulKernel`, :class:`Int8DotKernel` (the compiled VNNI loop of
  :mod:`.compiled_dot`), :class:`Int16DotKernel` (the compiled AVX2 loop of
  :mod:`.compiled_madd`) and the float32 :class:`GemmKernel`;
* :mod:`.intrinsics`, :mod:`.compiled_select` -- what the compiled loops are built from.

The search driver that runs a kernel is :func:`hqgnn.index.search.search_topk`.
"""

from .planes import PlaneKernel
from .products import CodeGemmKernel, GemmKernel, Int8DotKernel, Int8MatmulKernel, Int16DotKernel, IntMatmulKernel
from .protocol import FusedSearch, Kernel, KernelBase

__all__ = ["CodeGemmKernel", "FusedSearch", "GemmKernel", "Int8DotKernel", "Int8MatmulKernel", "Int16DotKernel",
           "IntMatmulKernel", "Kernel", "KernelBase", "PlaneKernel"]
