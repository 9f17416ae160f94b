"""Shared fixtures: the real data sets beside the repository, and tiny synthetic data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hqgnn.data import InteractionData, make_synthetic

# The suite runs beside other jobs on small machines: intra-op threads only add
# contention for the tiny tensors used here (measured: 30x slower with 2 threads
# on a busy 2-core machine), and one thread keeps results bit-reproducible.
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SHARED_DATA_REASON = "../shared/data not found: real data sets absent"

#: ``@requires_shared_data`` on a test that reads the real data sets under ../shared/data.
requires_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=SHARED_DATA_REASON)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` relative to the repository root; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(SHARED_DATA_REASON)
    return SHARED_DATA


@pytest.fixture
def tiny_data() -> InteractionData:
    """60 users x 40 items, about 8 interactions per user, with a test split (a few ms to build)."""
    return make_synthetic(n_users=60, n_items=40, mean_degree=8, seed=0)


def _small_settings(**changes) -> list[str]:
    """``--set`` pairs for a small, fast, single-threaded training run."""
    settings = {
        "dim": 16,
        "layers": 2,
        "epochs": 4,
        "batch_size": 256,
        "lr": 0.01,
        "eval_every": 1,
        "patience": 0,
        "ks": "[5,20]",
        "early_stop_metric": "recall@20",
        "threads": 1,
        "device": "cpu",
        "seed": 7,
    }
    settings.update(changes)
    return [f"{k}={v}" for k, v in settings.items()]


@pytest.fixture
def small_settings():
    """A function: ``small_settings(epochs=2, ...)`` gives ``--set`` pairs for a fast run."""
    return _small_settings


def pytest_configure(config):
    # hqgnn.graph silences these at import, but pytest resets warning filters for each test
    config.addinivalue_line("filterwarnings", "ignore:Sparse CSR tensor support is in beta state")
    config.addinivalue_line("filterwarnings", "ignore:Sparse invariant checks are implicitly disabled")
