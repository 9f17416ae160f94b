"""The L-hop neighbourhood of a mini-batch, and LightGCN propagated on it with the GLOBAL normalisation.

Full-graph LightGCN computes E^(l+1) = Â E^l with Â_ij = 1 / sqrt(d_i d_j) (docs/method.md,
'Encoder'). A mini-batch needs the final embeddings of its targets T only (its users,
positives and negatives). With V_0 = T and V_(k+1) = V_k ∪ (neighbours drawn for V_k at hop
k), layer l+1 is computed on V_(L-l-1) from layer l on V_(L-l), so E^0 is looked up on V_L
only (the rows a rank asks TorchRec's sharded table for) and E^L lands on T.

Each hop k has a fan-out f_k (setting ``fanout``; -1 = every neighbour). A node of degree
d <= f_k (or f_k = -1) keeps all its edges with weight 1 / sqrt(d_i d_j): the degrees are the
GLOBAL ones of the whole training graph, never the subgraph's, so full fan-out equals
full-graph LightGCN exactly (tested). A node of larger degree draws f_k neighbours uniformly
with replacement and weighs each by (d_i / f_k) / sqrt(d_i d_j): an unbiased estimate of the
full sum (GraphSAGE-style sampling; with replacement so drawing is O(f_k) per node, vectorised).

The graph is held as CSR arrays of the symmetric bipartite adjacency (users 0 .. n_users - 1,
then items), written once as ``.npy`` files and memory-mapped by every rank of a machine
(:func:`shared_graph`), so the ranks share one copy in the page cache.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import scipy.sparse as sp
import torch

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")  # as hqgnn.graph does
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


#: graphs up to this many nodes map global to local ids with a position array (8 bytes a node, per batch)
DENSE_LOOKUP = 1 << 24


@dataclass
class GraphCSR:
    """The symmetric user-item graph as CSR: ``indptr`` (n + 1,), ``indices`` (2 nnz,), int64;
    ``deg`` the global degrees (float64). Arrays may be memory-mapped (read-only)."""

    indptr: np.ndarray
    indices: np.ndarray
    n_users: int
    n_items: int

    def __post_init__(self):
        self.deg = np.diff(self.indptr).astype(np.float64)
        with np.errstate(divide="ignore"):
            self.dinv = np.where(self.deg > 0, self.deg ** -0.5, 0.0)

    @property
    def n_nodes(self) -> int:
        return self.n_users + self.n_items


def bipartite_csr(train: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, indices) of A = [[0, R], [R^T, 0]] over n_users + n_items nodes, sorted rows."""
    n_users, n_items = train.shape
    coo = train.tocoo()
    rows = np.concatenate([coo.row, coo.col + n_users]).astype(np.int64)
    cols = np.concatenate([coo.col + n_users, coo.row]).astype(np.int64)
    adj = sp.csr_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n_users + n_items,) * 2)
    adj.sort_indices()
    return adj.indptr.astype(np.int64), adj.indices.astype(np.int64)


def shared_graph(train: sp.csr_matrix, folder: Optional[Path], local_rank: int = 0, barrier=None) -> GraphCSR:
    """The graph of ``train``; with a ``folder``, local rank 0 writes it there as ``.npy`` and every
    rank memory-maps it (``barrier``: called between the write and the reads)."""
    n_users, n_items = train.shape
    if folder is None:
        indptr, indices = bipartite_csr(train)
        return GraphCSR(indptr, indices, n_users, n_items)
    folder = Path(folder)
    if local_rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        indptr, indices = bipartite_csr(train)
        for name, arr in (("indptr", indptr), ("indices", indices)):
            tmp = folder / f".{name}.{os.getpid()}.npy"
            np.save(tmp, arr)
            os.replace(tmp, folder / f"{name}.npy")
    if barrier is not None:
        barrier()
    indptr = np.load(folder / "indptr.npy", mmap_mode="r")
    indices = np.load(folder / "indices.npy", mmap_mode="r")
    return GraphCSR(np.asarray(indptr), indices, n_users, n_items)


@dataclass
class Blocks:
    """The sampled L-hop neighbourhood of ``n_targets`` target nodes.

    ``nodes``: global ids of V_L (the first ``n_targets`` are the targets, and every V_k is a
    prefix); ``hops[k]`` = (rows, cols, weights, n_rows, n_cols): the edges of hop k from
    V_k (local row ids) to V_(k+1) (local col ids) with their weights."""

    nodes: np.ndarray
    n_targets: int
    hops: list


def sample_blocks(graph: GraphCSR, targets: np.ndarray, fanout: Sequence[int], rng: np.random.Generator) -> Blocks:
    """The L-hop neighbourhood (L = len(fanout)) of the distinct global node ids ``targets``."""
    nodes = np.asarray(targets, dtype=np.int64)
    order = nodes.copy()
    hops = []
    lookup = _Lookup(order, graph.n_nodes)
    for f in fanout:
        frontier = order  # V_k
        deg = graph.deg[frontier].astype(np.int64)
        start = graph.indptr[frontier]
        full = deg if f == -1 else np.minimum(deg, f)
        sampled = (deg > f) if f != -1 else np.zeros(len(deg), dtype=bool)
        counts = full
        rows = np.repeat(np.arange(len(frontier), dtype=np.int64), counts)
        # offset of each edge within its row: 0 .. count - 1, or a uniform draw for sampled rows
        first = np.repeat(np.cumsum(counts) - counts, counts)
        offset = np.arange(len(rows), dtype=np.int64) - first
        if sampled.any():
            draw = np.repeat(sampled, counts)
            offset[draw] = (rng.random(int(draw.sum())) * np.repeat(deg, counts)[draw]).astype(np.int64)
        cols_global = np.asarray(graph.indices[np.repeat(start, counts) + offset])
        scale = np.where(sampled, deg / max(f, 1), 1.0)
        weights = np.repeat(graph.dinv[frontier] * scale, counts) * graph.dinv[cols_global]
        order = lookup.extend(cols_global)
        cols = lookup.local(cols_global)
        hops.append((rows, cols, weights.astype(np.float32), len(frontier), len(order)))
    return Blocks(order, len(nodes), hops)


class _Lookup:
    """Global -> local ids of a growing node list (new nodes appended in increasing id order).

    Graphs of up to :data:`DENSE_LOOKUP` nodes use a position array over every node (one
    gather per lookup: ~0.5 s less per ML-1M step than sorting); larger ones, binary search."""

    def __init__(self, nodes: np.ndarray, n_total: int = 0):
        self.nodes = nodes
        self._pos = None
        if 0 < n_total <= DENSE_LOOKUP:
            self._pos = np.full(n_total, -1, dtype=np.int64)
            self._pos[nodes] = np.arange(len(nodes))
        else:
            self._sorted = np.argsort(nodes, kind="stable")

    def extend(self, ids: np.ndarray) -> np.ndarray:
        if self._pos is not None:
            new = np.unique(ids[self._pos[ids] < 0])
            if new.size:
                self._pos[new] = np.arange(len(self.nodes), len(self.nodes) + len(new))
                self.nodes = np.concatenate([self.nodes, new])
            return self.nodes
        uniq = np.unique(ids)
        known = self._contains(uniq)
        new = uniq[~known]
        if new.size:
            self.nodes = np.concatenate([self.nodes, new])
            self._sorted = np.argsort(self.nodes, kind="stable")
        return self.nodes

    def _contains(self, ids: np.ndarray) -> np.ndarray:
        s = self.nodes[self._sorted]
        pos = np.minimum(np.searchsorted(s, ids), len(s) - 1)
        return s[pos] == ids

    def local(self, ids: np.ndarray) -> np.ndarray:
        if self._pos is not None:
            return self._pos[ids]
        s = self.nodes[self._sorted]
        return self._sorted[np.searchsorted(s, ids)]


class _HopProduct(torch.autograd.Function):
    """y = A x for one hop's (n_rows x n_cols) weighted edges, with A and A^T as CSR tensors.

    Gathering a message per edge (index_select, then index_add_) allocates an (edges x d)
    tensor per hop and pass: on ML-1M's 1.6M edges a step spent most of its time in that
    allocation (138 s per epoch at world size 2). The CSR product is multithreaded and
    allocates only its output; the backward is the product with the transpose, built once."""

    @staticmethod
    def forward(ctx, x, a, a_t):
        ctx.a_t = a_t
        return torch.sparse.mm(a, x)

    @staticmethod
    def backward(ctx, grad):
        return torch.sparse.mm(ctx.a_t, grad.contiguous()), None, None


def _csr(m: sp.csr_matrix, device) -> torch.Tensor:
    return torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int64)), torch.from_numpy(m.indices.astype(np.int64)),
                                   torch.from_numpy(m.data.astype(np.float32)), size=m.shape, device=device)


def hop_matrices(hop, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, A^T) of a hop (rows, cols, weights, n_rows, n_cols) as torch CSR tensors (repeated edges summed)."""
    rows, cols, w, n_rows, n_cols = hop
    # the edges come grouped by row (sample_blocks), so the CSR is direct; a node drawn twice stays
    # two entries, which the product sums
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    a = sp.csr_matrix((w, cols, indptr), shape=(n_rows, n_cols))
    return _csr(a, device), _csr(a.T.tocsr(), device)


def propagate_blocks(x0: torch.Tensor, blocks: Blocks, layer_weights: Sequence[float]) -> torch.Tensor:
    """sum_l alpha_l E^l at the targets, from E^0 = ``x0`` on ``blocks.nodes`` (differentiable).

    Layer l + 1 is computed on V_(L-l-1) from layer l on V_(L-l): E^(l+1)[i] = sum_j w_ij E^l[j]
    over hop (L-l-1)'s edges. Shapes: ``x0`` (len(blocks.nodes), d); output (n_targets, d)."""
    L = len(blocks.hops)
    if len(layer_weights) != L + 1:
        raise ValueError(f"{len(layer_weights)} layer weights for {L} hops")
    t = blocks.n_targets
    out = x0[:t] * layer_weights[0]
    h = x0
    for l in range(L):
        a, a_t = hop_matrices(blocks.hops[L - l - 1], x0.device)
        h = _HopProduct.apply(h, a, a_t)
        out = out + layer_weights[l + 1] * h[:t]
    return out


def timed(fn, *args, **kwargs):
    """(result, seconds) of ``fn(*args, **kwargs)``."""
    t0 = time.perf_counter()
    return fn(*args, **kwargs), time.perf_counter() - t0
