"""E^0 as a TorchRec table, its sharding plan, and the optimizer fused into it.

One table ``nodes`` of n_users + n_items rows (users, then items: the layout of
:class:`hqgnn.models.encoder.LightGCN`'s E^0) in a TorchRec ``EmbeddingCollection`` (sequence
lookups: one row per id, no pooling), sharded by TorchRec's planner over the ranks. The plan is
constrained to ``row_wise`` (each rank holds a contiguous block of rows, so table and optimizer
memory per rank fall as 1 / world size; the planner left alone may replicate a small table
silently, see ``tests/test_distributed.py``). The optimizer is fused into the table's backward
(FBGEMM's TBE): only the rows a batch touches are read and updated, and there is no dense
gradient of the table anywhere.

Optimizers (setting ``sparse_optimizer``): FBGEMM's CPU kernels offer exact SGD, Adagrad and
row-wise Adagrad (one accumulator per row, the default: 1/d of Adagrad's state); its CUDA
kernels also offer Adam (``adam``, the single-process trainer's optimizer, state 2x the table).
"""

from __future__ import annotations

from typing import Optional

import torch

#: setting ``sparse_optimizer`` -> (FBGEMM EmbOptimType name, CPU support, optimizer state floats per row / dim)
OPTIMIZERS = {
    "rowwise_adagrad": ("EXACT_ROWWISE_ADAGRAD", True, "1 per row"),
    "adagrad": ("EXACT_ADAGRAD", True, "d per row"),
    "sgd": ("EXACT_SGD", True, "none"),
    "adam": ("ADAM", False, "2 d per row"),
}

TABLE = "nodes"
FEATURE = "node"


def table_module(n_rows: int, dim: int):
    """An ``nn.Module`` holding the unsharded (meta-device) ``EmbeddingCollection`` of E^0;
    ``module(ids)`` returns the rows of the int64 ids (a flat tensor), differentiable."""
    from torchrec import EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor

    class NodeTable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ec = EmbeddingCollection(
                tables=[EmbeddingConfig(name=TABLE, embedding_dim=dim, num_embeddings=n_rows, feature_names=[FEATURE])],
                device=torch.device("meta"))

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            # one "sample" of len(ids) ids: every rank sends a batch of one, whatever its size
            kjt = KeyedJaggedTensor.from_lengths_sync(keys=[FEATURE], values=ids,
                                                      lengths=torch.tensor([len(ids)], dtype=torch.int32, device=ids.device))
            return self.ec(kjt)[FEATURE].values()

    return NodeTable()


def sharder(optimizer: str, lr: float, device: torch.device):
    """TorchRec's ``EmbeddingCollectionSharder`` with ``optimizer`` fused into the table."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torchrec.distributed.embedding import EmbeddingCollectionSharder

    from ..errors import ConfigError

    name, cpu_ok, _ = OPTIMIZERS[optimizer]
    if device.type == "cpu" and not cpu_ok:
        raise ConfigError(f"setting sparse_optimizer={optimizer!r}: FBGEMM has no fused {optimizer} on CPU "
                          f"(use rowwise_adagrad, adagrad or sgd, or train on CUDA)")
    fused = {"optimizer": getattr(EmbOptimType, name), "learning_rate": lr, "eps": 1e-8}
    if optimizer == "adam":
        fused.update(beta1=0.9, beta2=0.999)
    return EmbeddingCollectionSharder(fused_params=fused)


def make_plan(module, sharders, world_size: int, device: torch.device, sharding_type: str = "row_wise"):
    """TorchRec's planner, constrained to ``sharding_type``, agreed over the process group."""
    import torch.distributed as dist
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology

    topology = Topology(world_size=world_size, compute_device=device.type)
    planner = EmbeddingShardingPlanner(topology=topology,
                                       constraints={TABLE: ParameterConstraints(sharding_types=[sharding_type])})
    return planner.collective_plan(module, sharders, dist.GroupMember.WORLD)


def plan_summary(plan) -> dict:
    """The plan as JSON: per table its sharding type, compute kernel, ranks, and which rows each rank holds."""
    out = {}
    for module_path, module_plan in plan.plan.items():
        for table, ps in module_plan.items():
            shards = []
            spec = getattr(ps, "sharding_spec", None)
            for shard in getattr(spec, "shards", []) or []:
                rank = shard.placement.rank() if shard.placement is not None else None
                shards.append({"rank": rank, "rows": [int(shard.shard_offsets[0]), int(shard.shard_offsets[0] + shard.shard_sizes[0])],
                               "columns": [int(shard.shard_offsets[1]), int(shard.shard_offsets[1] + shard.shard_sizes[1])]})
            out[table] = {"module": module_path, "sharding_type": ps.sharding_type, "compute_kernel": ps.compute_kernel,
                          "ranks": list(ps.ranks) if ps.ranks is not None else None, "shards": shards}
    return out


def local_shards(dmp):
    """[(row offset, tensor)] of the table rows this rank holds (views into the fused table)."""
    st = dmp.state_dict()[_weight_key(dmp)]
    return [(int(s.metadata.shard_offsets[0]), s.tensor) for s in st.local_shards()]


def _weight_key(dmp) -> str:
    keys = [k for k in dmp.state_dict() if k.endswith(f"{TABLE}.weight")]
    return keys[0]


@torch.no_grad()
def load_rows(dmp, full: torch.Tensor) -> None:
    """Copy this rank's rows of ``full`` (the whole E^0, on any device) into its shards."""
    for offset, t in local_shards(dmp):
        t.copy_(full[offset: offset + t.shape[0], : t.shape[1]])


@torch.no_grad()
def gather_table(dmp, n_rows: int, dim: int, dst: int = 0) -> Optional[torch.Tensor]:
    """The whole E^0 on rank ``dst`` (None elsewhere), by ``ShardedTensor.gather``."""
    import torch.distributed as dist

    st = dmp.state_dict()[_weight_key(dmp)]
    out = torch.empty(n_rows, dim) if dist.get_rank() == dst else None
    st.gather(dst=dst, out=out)
    return out


def state_bytes(dmp) -> dict:
    """Bytes this rank holds of the table (its shards) and of the fused optimizer's state."""
    table = sum(t.numel() * t.element_size() for _, t in local_shards(dmp))
    optim = 0
    for state in dmp.fused_optimizer.state_dict()["state"].values():
        for value in state.values():
            for t in _tensors(value):
                optim += t.numel() * t.element_size()
    return {"table_bytes": table, "optimizer_bytes": optim}


def _tensors(value):
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    if isinstance(value, ShardedTensor):
        return [s.tensor for s in value.local_shards()]
    if isinstance(value, torch.Tensor):
        return [value]
    return []
