"""The embedded default data set: a planted latent-factor model (no download)."""

from __future__ import annotations

import numpy as np

from .core import SYNTHETIC, InteractionData, interactions_to_csr
from .splits import holdout_split


def make_synthetic(
    n_users: int = 3000,
    n_items: int = 2000,
    mean_degree: int = 40,
    latent_dim: int = 16,
    popularity_exponent: float = 1.0,
    temperature: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> InteractionData:
    """A planted latent-factor model with power-law item popularity.

    Each user picks items without replacement with probability proportional to
    ``exp(<p_u, q_i> / temperature) * popularity_i``, popularity following a
    Zipf law ``rank^-popularity_exponent``. The preference part is learnable, so a
    model that learns beats the popularity ranking by a wide margin. Sampling
    without replacement uses the Gumbel-top-k trick, vectorised per user block.
    """
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(n_users, latent_dim)) / np.sqrt(latent_dim)
    q = rng.normal(size=(n_items, latent_dim)) / np.sqrt(latent_dim)
    pop = np.arange(1, n_items + 1, dtype=np.float64) ** -popularity_exponent
    log_pop = np.log(rng.permutation(pop))
    # heavy-tailed user activity, at least 5 interactions per user
    degree = np.clip(rng.lognormal(np.log(mean_degree) - 0.5, 1.0, size=n_users).astype(np.int64), 5, n_items // 2)
    rows, cols = [], []
    block = 512
    for start in range(0, n_users, block):
        stop = min(start + block, n_users)
        logits = p[start:stop] @ q.T / temperature + log_pop
        gumbel = -np.log(-np.log(rng.random(logits.shape)))
        ranked = np.argsort(-(logits + gumbel), axis=1)
        deg = degree[start:stop]
        take = np.arange(n_items)[None, :] < deg[:, None]
        r, c = np.nonzero(take)
        rows.append(r + start)
        cols.append(ranked[r, c])
    full = interactions_to_csr(np.concatenate(rows), np.concatenate(cols), n_users, n_items)
    train, test = holdout_split(full, test_fraction, seed + 1)
    return InteractionData(
        train=train,
        test=test,
        name=SYNTHETIC,
        source=f"synthetic(n_users={n_users}, n_items={n_items}, seed={seed})",
    )
