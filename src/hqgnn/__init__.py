"""hqgnn: Hessian-aware quantized graph recommenders (HQ-GNN) and integer-only retrieval.

The root is light: ``import hqgnn`` loads no submodule (and no torch); ``Recommender``,
``Config``, ``InteractionData``, ``load_dataset`` and ``Recommendations`` (what every
``recommend`` returns) are imported on first use (PEP 562), so
``import hqgnn.serving`` or ``import hqgnn.index`` does not load the trainer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the submodule that defines it
_LAZY = {
    "Recommender": ".api",
    "Config": ".config",
    "InteractionData": ".data",
    "load_dataset": ".data",
    "Recommendations": ".index.results",
}

__all__ = ["Recommender", "Config", "InteractionData", "load_dataset", "Recommendations", "__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs; never run
    from .api import Recommender
    from .config import Config
    from .data import InteractionData, load_dataset
    from .index.results import Recommendations


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    """The public names (``__all__``) and the module's dunders: not the helpers this file imports
    (``importlib``, ``TYPE_CHECKING``, ``annotations``) nor the submodules loaded so far."""
    return sorted(set(__all__) | {name for name in globals() if name.startswith("__") and name.endswith("__")})
