"""BiGeaR's layer-wise binarized representation, a 1-bit baseline.

Y. Chen et al., *Learning Binarized Graph Representations with Multi-faceted Quantization
Reinforcement for Top-K Recommendation*, KDD 2022, https://arxiv.org/abs/2206.02115.

Each LightGCN layer E^l is coded on its own, per node: q^l = a^l * sign(E^l) with
a^l = mean |E^l| over the node's d entries (docs/method.md, 'Baselines'). The representation
is the concatenation over layers weighted as LightGCN sums them,
q = [alpha_0 q^0, ..., alpha_L q^L], so the score is

    <q_u, q_i> = sum_l alpha_l^2 a_u^l a_i^l (d - 2 Hamming(b_u^l, b_i^l)),

(L + 1) d bits and L + 1 float scales per node: 4x HQ-GNN's 1-bit codes at 3 layers, plus
the scales. Training is BPR on these scores.

What is BiGeaR's and what is not (a choice, stated so that tables say what they compare):
* implemented: graph layer-wise binarization with per-node rescaling, the part docs/method.md names,
  and its pre-training stage as an option (``from_run``: start from a trained LightGCN run);
* not implemented: BiGeaR's inference distillation from a full-precision teacher and its
  Fourier-series gradient; the sign uses the same identity STE as ``hashgnn``
  (gradient g * tanh'(x / s), s = 2 E|x| per table and layer), so against ``hashgnn`` the
  comparison isolates the representation.

Its per-node float scales weigh the Hamming similarities of every layer, so its ranking is
not integer-only: it is trained and evaluated here as a comparison point and is not exported
to the integer index.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from .base import ScoringModel
from .encoder import LightGCN
from .quantizer import GSTEQuantize


def sign_with_identity_ste(x: torch.Tensor) -> torch.Tensor:
    """sign(x) in {-1, +1} (0 -> +1, as Q_1), with HashGNN's straight-through gradient,
    expressed in units of k: d k / d x = tanh'(x / s) / (s / 2), s = 2 E|x| over the table."""
    step = (2.0 * x.detach().abs().mean()).clamp_min(1e-8)
    return GSTEQuantize.apply(x, step, 1, 0.0, False, 1.0, 1.0) / (step / 2)


class BiGeaRModel(ScoringModel):
    """``bigear``: scores <q_u, q_i> of the layer-wise codes q = [alpha_0 a^0 b^0, ..., alpha_L a^L b^L]
    (see the module docstring), trained with BPR through the sign's identity STE.

    Args: ``encoder`` (its layers and weights are the code's layers and weights),
    ``negative_sampling`` (:func:`~hqgnn.models.base.choose_negatives`).

    Shapes: scoring embeddings ``(n_users, (L + 1) d)`` and ``(n_items, (L + 1) d)``.
    """

    quantized = True

    def __init__(self, encoder: LightGCN, negative_sampling: str = "uniform"):
        super().__init__(encoder, negative_sampling)
        self.bits = 1

    def layer_codes(self, adj) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per layer, the node scales a^l (n, 1) and the signs b^l (n, d), users then items."""
        scales, signs = [], []
        n_users = self.encoder.n_users
        for e in self.encoder.layer_embeddings(adj):
            scales.append(e.abs().mean(dim=1, keepdim=True))
            signs.append(torch.cat([sign_with_identity_ste(e[:n_users]), sign_with_identity_ste(e[n_users:])]))
        return scales, signs

    def scoring_embeddings(self, adj):
        scales, signs = self.layer_codes(adj)
        q = torch.cat([w * a * b for w, a, b in zip(self.encoder.layer_weights, scales, signs)], dim=1)
        return q[: self.encoder.n_users], q[self.encoder.n_users :]

    def export_codes(self, adj) -> dict:
        raise ConfigError(
            "model 'bigear' cannot be exported: its scores weigh each layer's Hamming similarity by "
            "per-node float scales, which the integer index does not serve (it is a comparison baseline)"
        )

    def describe(self) -> dict:
        d, layers = self.encoder.dim, self.encoder.layers + 1
        n = self.n_users + self.n_items
        row = math.ceil(layers * d / 8) + 4 * layers  # packed signs of every layer + float32 scales
        return {
            "bits": 1,
            "dim": d,
            "code_bits_per_node": layers * d,
            "bytes_per_user": row,
            "bytes_per_item": row,
            "total_bytes": row * n,
            "float32_bytes": 4 * d * n,
            "compression_ratio": 4 * d * n / (row * n),
        }
