"""Hutchinson's estimator of a Hessian trace: Tr(H) = E_v[v^T H v], v Rademacher.

M. F. Hutchinson, *A stochastic estimator of the trace of the influence matrix for Laplacian
smoothing splines*, Communications in Statistics - Simulation and Computation, 1990
(docs/method.md, 'GSTE'). With Rademacher probes the estimate is unbiased and one probe's
variance is 2 sum_{i != j} H_ij^2: exact for a diagonal H.

Hessian-vector products come from double back-propagation (autograd.grad of
the gradient with ``create_graph=True``); the Hessian is never formed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch


@dataclass
class TraceEstimate:
    trace: float  # estimate of Tr(H)
    probes: int  # probes used before the running mean settled
    grad: torch.Tensor  # dL/dx at the point (detached), for the gradient statistics


def hutchinson_trace(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    max_probes: int = 50,
    tol: float = 1e-3,
    generator: Optional[torch.Generator] = None,
    min_probes: int = 2,
) -> TraceEstimate:
    """Estimate Tr(d^2 loss_fn / dx^2) at ``x``.

    Stops after ``max_probes`` probes or once the running mean changes by
    less than ``tol`` relative to its previous value (after ``min_probes``);
    ``tol=0`` runs every probe. ``generator`` draws the probes (on the CPU).

    Shapes: ``x`` any shape (N entries); ``loss_fn(x)`` a scalar. Returns a
    :class:`TraceEstimate`: ``trace`` (float), ``probes`` (how many ran), ``grad``
    (dL/dx at ``x``, the shape of ``x``).
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(x)
        (grad,) = torch.autograd.grad(loss, x, create_graph=True)
        total = 0.0
        mean_prev = None
        n = 0
        for n in range(1, max_probes + 1):
            v = torch.randint(0, 2, x.shape, generator=generator, device="cpu", dtype=torch.int8)
            v = (v.to(x.device, x.dtype) * 2 - 1)
            (hv,) = torch.autograd.grad(grad, x, grad_outputs=v, retain_graph=n < max_probes)
            total += float((hv * v).sum())
            mean = total / n
            if mean_prev is not None and n >= min_probes and abs(mean - mean_prev) <= tol * max(abs(mean_prev), 1e-12):
                break
            mean_prev = mean
    return TraceEstimate(trace=total / n, probes=n, grad=grad.detach())
