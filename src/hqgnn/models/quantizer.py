"""The b-bit quantizer Q_b (b = 1 ... 8) and the GSTE that trains through it.

HQ-GNN: Chen et al., *Hessian-aware Quantized Node Embeddings for Recommendation*,
RecSys 2023, https://arxiv.org/abs/2309.01032.

Grid (docs/method.md, 'Quantizer'): a symmetric mid-rise grid with step ``s``,

    z = x / s,   k = clamp(2 * floor(z) + 1, -(2^b - 1), 2^b - 1)  (k odd),
    x_hat = s * k / 2.

* b = 1 gives k = sign(x) in {-1, +1}: the 1-bit case *is* sign, and
  <x_hat_u, x_hat_i> = (s_u s_i / 4) (d - 2 Hamming(u, i)).
* For any b, <x_hat_u, x_hat_i> = (s_u s_i / 4) <k_u, k_i>, and s_u, s_i are
  one positive scalar per table (users, items), so for a user the items rank
  by the integer inner product <k_u, k_i>: retrieval is integer-only.
* The unsigned code stored for retrieval is c = (k + 2^b - 1) / 2 in
  [0, 2^b - 1] (for b = 1, the bit of sign).

Clipping range: |z| <= 2^(b-1), i.e. |x| <= s * 2^(b-1).

Scale parameterisation (a choice the paper leaves open; docs/method.md, 'Quantizer'):

* ``calibrated`` (the default, here and in every config): s is recomputed from each forward's
  statistics (no gradient) with the MSE-optimal clipping of a Gaussian
  (b = 1: levels at +-E|x|). Cheaper, no extra parameter.
* ``learned``: s is a parameter per table, trained with the LSQ gradient
  (Esser et al., ICLR 2020, https://arxiv.org/abs/1902.08153), initialised by the same rule on the first forward
  pass; for 1 bit it also learns the BPR temperature (s_u s_i / 4).

Measured on MovieLens-1M (configs/ml-1m-hqgnn.yaml at weight_decay 1e-4, Recall@50, mean of
3 seeds, experiments/ml-1m-1bit.yaml): at 1 bit calibrated 0.2675 vs learned 0.2093 for
HQ-GNN, 0.2717 vs 0.2327 for HashGNN; at 4 bits the two are level (0.3899 vs
0.3896). Hence calibrated is the default.

Both keep b = 1 as sign and the same Q_b in training and export (``codes``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

# MSE-optimal clipping threshold, in standard deviations, of a uniform quantizer
# with 2^b levels applied to a Gaussian (b = 1: +-0.798 sigma levels, i.e. E|x|).
GAUSSIAN_CLIP_SIGMAS = {1: 1.596, 2: 1.710, 3: 2.150, 4: 2.550, 5: 2.935, 6: 3.290, 7: 3.610, 8: 3.920}


def grid_codes(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Odd integer levels k of normalised values z (as floats)."""
    top = 2**bits - 1
    return torch.clamp(2.0 * torch.floor(z) + 1.0, -top, top)


def codes_to_unsigned(k: torch.Tensor, bits: int) -> torch.Tensor:
    """Odd levels k in [-(2^b - 1), 2^b - 1] to unsigned codes c in [0, 2^b - 1] (uint8)."""
    return ((k + (2**bits - 1)) / 2).round().to(torch.uint8)


def unsigned_to_codes(c: torch.Tensor, bits: int) -> torch.Tensor:
    return 2 * c.to(torch.int32) - (2**bits - 1)


class GSTEQuantize(torch.autograd.Function):
    """x_hat = Q_b(x; s). Backward: the GSTE for x (docs/method.md, 'GSTE'), the LSQ gradient for s.

    d L / d x = g * (1 + delta * sign(g) * (z - k / 2))   inside |z| <= w 2^(b-1), else 0,
    with z - k/2 the quantization error in units of the step s (so delta is
    scale-free; held within +-1/2 beyond the grid). delta = 0 is the clipped
    straight-through estimator. The window w (setting ``ste_window``, default 1)
    is the clipping range in units of the grid's range (below 1 it clips inside the grid).
    ``clip_gradient=False`` is HashGNN's estimator: codes sign(tanh(z)) with the identity
    STE across the sign, i.e. d L / d x = g * (1 - tanh(z)^2), no hard clipping.
    """

    @staticmethod
    def forward(ctx, x, scale, bits: int, delta: float, clip_gradient: bool = True, scale_grad_factor: float = 1.0,
                window: float = 1.0, sign_source=None):
        # sign_source: None, or a function of g giving the gradient whose sign the GSTE takes (the
        # distributed trainer's sum of g over the ranks: hqgnn.distributed.trainer)
        ctx.sign_source = sign_source
        z = x / scale
        k = grid_codes(z, bits)
        ctx.save_for_backward(z, k, scale)
        ctx.bits, ctx.delta, ctx.clip, ctx.sgf = bits, float(delta), clip_gradient, scale_grad_factor
        ctx.window = float(window)
        return scale * k * 0.5

    @staticmethod
    def backward(ctx, g):
        z, k, scale = ctx.saved_tensors
        half = k * 0.5
        limit = float(2 ** (ctx.bits - 1))
        inside = (z.abs() <= limit).to(g.dtype)
        if ctx.clip:
            # the gradient passes inside the window (``window`` times the grid's range; 1 is
            # the clipped STE), the error term stays within half a step beyond the grid
            factor = inside if ctx.window == 1.0 else (z.abs() <= limit * ctx.window).to(g.dtype)
            if ctx.delta != 0.0:
                g_sign = g if ctx.sign_source is None else ctx.sign_source(g)
                factor = factor * (1.0 + ctx.delta * torch.sign(g_sign) * (z - half).clamp(-0.5, 0.5))
            grad_x = g * factor
        else:
            # HashGNN: codes are sign(tanh(z)) and the identity STE crosses the sign only,
            # so the gradient is g * tanh'(z) (it fades for saturated entries)
            grad_x = g * (1.0 - torch.tanh(z) ** 2)
        grad_s = None
        if ctx.needs_input_grad[1]:
            # LSQ: d x_hat / d s = k/2 - z inside the range, k/2 (the clipped level) outside
            dxs = half - z * inside
            grad_s = (g * dxs).sum().reshape(scale.shape) * ctx.sgf
        return grad_x, grad_s, None, None, None, None, None, None


class Quantizer(nn.Module):
    r"""Q_b for one embedding table (users or items) with its own step s and GSTE delta.

    docs/method.md, 'Quantizer' and 'GSTE'; HQ-GNN, https://arxiv.org/abs/2309.01032.

    .. math::
        z = x / s, \quad k = \mathrm{clamp}(2 \lfloor z \rfloor + 1, -(2^b - 1), 2^b - 1), \quad
        \hat x = s k / 2

    Backward (the GSTE), with g = dL / d x_hat, inside the clipping range
    ``|z| <= window * 2^(b-1)``:

    .. math::
        \frac{\partial L}{\partial x} = g \odot (1 + \delta\, \mathrm{sign}(g) \odot (z - k/2))

    and 0 outside; ``delta`` (a buffer, 0 = the straight-through estimator) is set by the
    model (HQ-GNN: from the Hessian trace, :meth:`hqgnn.models.quantized.HQGNNModel.update_deltas`).

    Args:
        bits: b, from 1 (sign codes) to 8.
        scale_mode: ``"calibrated"`` (default): s from each forward's statistics, no
            gradient; ``"learned"``: s is a parameter trained with the LSQ gradient.
        clip_gradient: True: the clipped (G)STE above; False: HashGNN's identity STE
            through tanh (g * (1 - tanh(z)^2), no clipping).
        window: the clipping range in units of the grid's range (1: the grid's).

    Shapes:
        - input ``x``: ``(n, d)`` (any shape), float
        - output: like ``x``, values ``s * k / 2``
        - :meth:`levels`: like ``x``, int32 odd levels k; :meth:`unsigned_codes`: uint8 c in [0, 2^b - 1]

    Raises:
        ValueError: ``bits`` outside 1 .. 8, or ``scale_mode`` not one of the two.
    """

    def __init__(self, bits: int, scale_mode: str = "calibrated", clip_gradient: bool = True, window: float = 1.0):
        super().__init__()
        self.window = float(window)
        if not 1 <= bits <= 8:
            raise ValueError(f"bits must be in 1..8, got {bits}")
        if scale_mode not in ("calibrated", "learned"):
            raise ValueError(f"scale_mode must be 'calibrated' or 'learned', got {scale_mode!r}")
        self.bits = bits
        self.scale_mode = scale_mode
        self.clip_gradient = clip_gradient
        self.scale = nn.Parameter(torch.ones(()), requires_grad=(scale_mode == "learned"))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("delta", torch.zeros(()))

    def calibrated_scale(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        if self.bits == 1:
            return 2.0 * x.abs().mean().clamp_min(1e-8)  # levels at +-E|x|
        clip = GAUSSIAN_CLIP_SIGMAS[self.bits] * x.std().clamp_min(1e-8)
        return clip / 2 ** (self.bits - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale_mode == "calibrated":
            with torch.no_grad():
                self.scale.copy_(self.calibrated_scale(x))
                self.initialized.fill_(True)
        elif not bool(self.initialized):
            with torch.no_grad():
                self.scale.copy_(self.calibrated_scale(x))
                self.initialized.fill_(True)
        sgf = 1.0 / math.sqrt(x.numel() * max(2 ** (self.bits - 1) - 0.5, 0.5))
        return GSTEQuantize.apply(x, self.scale, self.bits, float(self.delta), self.clip_gradient, sgf, self.window)

    @property
    def step(self) -> float:
        """The step s as a Python float."""
        return float(self.scale.detach())

    @torch.no_grad()
    def levels(self, x: torch.Tensor) -> torch.Tensor:
        """Odd integer levels k of x (int32), exactly those of the forward pass."""
        return grid_codes(x / self.scale, self.bits).to(torch.int32)

    @torch.no_grad()
    def unsigned_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Codes c = (k + 2^b - 1) / 2 in [0, 2^b - 1] as uint8, for packing and retrieval."""
        return codes_to_unsigned(grid_codes(x / self.scale, self.bits), self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, scale_mode={self.scale_mode}"
