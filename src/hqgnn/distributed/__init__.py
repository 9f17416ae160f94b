"""Training beyond one process: E^0 sharded by TorchRec over ``torch.distributed`` ranks, under torchrun.

Modules, in data-flow order: :mod:`.subgraph` (the L-hop neighbourhood of a mini-batch and its
propagation with the global normalisation), :mod:`.plan` (E^0 as a TorchRec table, the sharding
plan, the fused optimizer), :mod:`.trainer` (:class:`~.trainer.DistributedTrainer`),
:mod:`.checkpoint` (``torch.distributed.checkpoint`` and ``--resume``), :mod:`.launch` (torchrun).

TorchRec and FBGEMM (the ``distributed`` extra) are imported inside these modules' functions only:
``import hqgnn`` and everything else never need them (docs/distributed.md).
"""
