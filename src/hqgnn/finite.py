"""What counts as finite: the checks that stop a diverged run and refuse its weights and scores.

One place for them, used by the trainer (a diverged epoch), the run folder
(:mod:`hqgnn.runs`: no checkpoint or ``model.pt`` with NaN / inf is written or read) and
evaluation (no ranking from scores that could be NaN / inf).
"""

from __future__ import annotations

from typing import Optional

import torch

FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def named_tensors(obj, prefix: str = ""):
    """``(dotted name, tensor)`` of every tensor in nested dicts / lists (a state dict, an optimizer state)."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from named_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for key, value in enumerate(obj):
            yield from named_tensors(value, f"{prefix}.{key}" if prefix else str(key))


def first_nonfinite(tensors) -> Optional[str]:
    """Describe the first floating tensor of ``(name, tensor)`` pairs that holds NaN or inf
    (``"NAME holds 3 NaN and 1 inf of its 640 values"``), or None when all are finite.

    One reduction per tensor and one device sync per device when all are finite."""
    by_device: dict = {}
    for name, t in tensors:
        if t.is_floating_point() and t.numel():
            by_device.setdefault(t.device, []).append((name, t.detach()))
    for group in by_device.values():
        ok = torch.stack([torch.isfinite(t).all() for _, t in group])
        if bool(ok.all()):
            continue
        name, t = next(pair for pair, flag in zip(group, ok.tolist()) if not flag)
        nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        counts = " and ".join(f"{n} {what}" for n, what in ((nan, "NaN"), (inf, "inf")) if n)
        return f"{name} holds {counts} of its {t.numel()} values"
    return None


def ranking_problem(u: torch.Tensor, i: torch.Tensor) -> Optional[str]:
    """Why the scores ``u @ i.T`` could be NaN or inf, or None: a non-finite entry, or row norms
    whose product (the Cauchy-Schwarz bound of every score) exceeds the float32 maximum."""
    problem = first_nonfinite([("user embeddings", u), ("item embeddings", i)])
    if problem:
        return problem
    if not len(u) or not len(i):
        return None
    nu = float(torch.linalg.vector_norm(u.detach(), dim=1, dtype=torch.float64).max())
    ni = float(torch.linalg.vector_norm(i.detach(), dim=1, dtype=torch.float64).max())
    if nu * ni > FLOAT32_MAX:
        return (f"the scores can overflow float32 (max user norm {nu:.3g} x max item norm {ni:.3g} "
                f"> {FLOAT32_MAX:.3g})")
    return None
