"""Models: the LightGCN encoder, quantizers and estimators, and the recommenders built on them."""

from __future__ import annotations

from ..config import FULL_PRECISION_MODELS, Config
from .base import ScoringModel
from .encoder import LightGCN, propagation_layers, propagation_weights


def build_encoder(cfg: Config, n_users: int, n_items: int) -> LightGCN:
    layers = propagation_layers(cfg.model, cfg.layers)
    weights = propagation_weights(cfg.model, cfg.layers, cfg.layer_weights)
    return LightGCN(n_users, n_items, dim=cfg.dim, layers=layers, layer_weights=weights, init_std=cfg.init_std)


def build_model(cfg: Config, n_users: int, n_items: int) -> ScoringModel:
    encoder = build_encoder(cfg, n_users, n_items)
    if cfg.model in FULL_PRECISION_MODELS:
        return ScoringModel(encoder, cfg.negative_sampling)
    if cfg.model == "bigear":
        from .bigear import BiGeaRModel

        return BiGeaRModel(encoder, cfg)
    from .quantized import build_quantized_model

    return build_quantized_model(cfg, encoder)


__all__ = ["LightGCN", "ScoringModel", "build_encoder", "build_model"]
