"""hqgnn: Hessian-aware quantized graph recommenders (HQ-GNN) and integer-only retrieval."""

__version__ = "0.1.0"

from .api import Recommender  # noqa: E402
from .config import Config  # noqa: E402
from .data import InteractionData, load_dataset  # noqa: E402

__all__ = ["Recommender", "Config", "InteractionData", "load_dataset", "__version__"]
