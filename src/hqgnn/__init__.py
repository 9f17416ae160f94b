"""hqgnn: Hessian-aware quantized graph recommenders (HQ-GNN) and integer-only retrieval."""

__version__ = "0.1.0"
