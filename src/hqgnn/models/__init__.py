"""Models: the LightGCN encoder, quantizers and estimators, and the recommenders built on them.

One class per method (:data:`METHODS`), each with plain constructor arguments;
:func:`build_model` is the one place that makes them from a :class:`~hqgnn.config.Config`.
"""

from __future__ import annotations

from .base import ScoringModel
from .bigear import BiGeaRModel
from .build import (
    METHODS,
    build_encoder,
    build_graph,
    build_model,
    initial_model,
    load_full_precision_run,
    load_weights,
    method_arguments,
    resolve_device,
    use_threads,
)
from .encoder import LightGCN
from .quantized import HashGNNModel, HQGNNModel, LSHModel, PTQModel, QuantizedModel, STEModel
from .quantizer import Quantizer

__all__ = ["LightGCN", "Quantizer", "ScoringModel", "QuantizedModel", "HQGNNModel", "STEModel", "HashGNNModel",
           "BiGeaRModel", "PTQModel", "LSHModel", "METHODS", "method_arguments", "build_encoder", "build_model",
           "build_graph", "initial_model", "load_full_precision_run", "load_weights", "resolve_device", "use_threads"]
