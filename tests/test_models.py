"""The method registry and its builder: one class per method, plain arguments, one place reads a Config."""

from __future__ import annotations

from pathlib import Path

import pytest
import scipy.sparse as sp
import torch

from hqgnn.config import MODELS, Config
from hqgnn.errors import ConfigError
from hqgnn.models import (
    METHODS,
    BiGeaRModel,
    HashGNNModel,
    HQGNNModel,
    LightGCN,
    LSHModel,
    PTQModel,
    ScoringModel,
    STEModel,
    build_graph,
    build_model,
)

MODELS_DIR = Path(__file__).resolve().parents[1] / "src" / "hqgnn" / "models"


def cfg_for(model: str, **extra) -> Config:
    overrides = [f"model={model}", "dim=8", "layers=2", "bits=2"] + [f"{k}={v}" for k, v in extra.items()]
    if model in ("ptq", "lsh"):
        overrides.append("from_run=runs/fp")  # a setting only: build_model reads no run
    return Config.load(overrides=overrides)


def test_registry_names_every_method_once():
    assert set(METHODS) == set(MODELS)
    assert len(set(METHODS.values())) == len(METHODS)  # one class per method
    for name, cls in METHODS.items():
        model = build_model(cfg_for(name), 10, 12)
        assert type(model) is cls, name
        assert (model.n_users, model.n_items, model.encoder.dim) == (10, 12, 8)


def test_method_classes_take_plain_arguments():
    """Every method is built without a Config: its settings are constructor arguments."""
    enc = lambda layers=2: LightGCN(10, 12, dim=8, layers=layers)  # noqa: E731
    hq = HQGNNModel(enc(), bits=3, scale_mode="learned", delta_every=4, delta_scale=2.0, hutchinson_probes=7)
    assert (hq.bits, hq.delta_every, hq.delta_scale, hq.hutchinson_probes, hq.uses_hessian) == (3, 4, 2.0, 7, True)
    assert hq.user_quantizer.scale_mode == "learned" and hq.user_quantizer.scale.requires_grad
    ste = STEModel(enc(), bits=2)
    assert not ste.uses_hessian and ste.on_epoch_start(0, None) == {}
    hashgnn = HashGNNModel(enc(), soft=True, soft_p0=0.5, soft_decay=0.5)
    assert hashgnn.bits == 1 and not hashgnn.user_quantizer.clip_gradient
    assert hashgnn.on_epoch_start(2, None) == {"soft_probability": 0.125}
    ptq, lsh = PTQModel(enc(), bits=4, seed=1), LSHModel(enc(), seed=1)
    assert not any(p.requires_grad for p in ptq.parameters()) and lsh.bits == 1
    assert torch.equal(ptq.hyperplanes, lsh.hyperplanes)  # the same seed, the same planes
    assert BiGeaRModel(enc(), negative_sampling="hard").negative_sampling == "hard"
    assert not ScoringModel(enc(0)).quantized


def test_the_builder_maps_settings_onto_arguments():
    model = build_model(cfg_for("hqgnn", delta_every=7, delta_warmup=2, delta_scale=0.5, hutchinson_batches=1,
                                ste_window=0.75, fp_loss_weight=0.1, scale_mode="learned"), 10, 12)
    assert (model.delta_every, model.delta_warmup, model.delta_scale, model.hutchinson_batches) == (7, 2, 0.5, 1)
    assert model.user_quantizer.window == 0.75 and model.fp_loss_weight == 0.1
    assert model.user_quantizer.scale_mode == "learned"
    hashgnn = build_model(cfg_for("hashgnn", hashgnn_soft="true", hashgnn_soft_p0=0.3), 10, 12)
    assert hashgnn.soft and hashgnn.soft_p0 == 0.3
    weighted = build_model(cfg_for("lightgcn", layer_weights="[0.5,0.25,0.25]"), 10, 12)
    assert weighted.encoder.layer_weights == (0.5, 0.25, 0.25)


def test_only_the_builder_reads_a_config():
    """Model classes take plain arguments: no module of hqgnn.models but build.py imports or reads a Config."""
    for path in sorted(MODELS_DIR.glob("*.py")):
        if path.name in ("build.py", "__init__.py"):
            continue
        text = path.read_text()
        assert "from ..config" not in text and "cfg." not in text, path.name


def test_the_builder_seeds_its_own_generator():
    before = torch.get_rng_state()
    a, b = build_model(cfg_for("hqgnn"), 10, 12), build_model(cfg_for("hqgnn"), 10, 12)
    assert torch.equal(torch.get_rng_state(), before)  # the global stream is left alone
    assert torch.equal(a.encoder.embedding, b.encoder.embedding)
    # the numbers the global seed gave before the builder had its own generator
    torch.manual_seed(2020)
    assert torch.equal(a.encoder.embedding, torch.randn(22, 8) * 0.1)
    other = build_model(cfg_for("hqgnn", seed=3), 10, 12)
    assert not torch.equal(a.encoder.embedding, other.encoder.embedding)


def test_build_graph_follows_the_encoders_depth():
    train = sp.csr_matrix(torch.eye(10, 12).numpy())
    assert build_graph(build_model(cfg_for("lightgcn", layers=0), 10, 12), train) is None
    adj = build_graph(build_model(cfg_for("lightgcn"), 10, 12), train)
    assert adj.shape == (22, 22)
    with pytest.raises(ConfigError, match="model='nope'"):
        build_model(Config(model="nope"), 10, 12)


def test_imports_run_one_way():
    """models import no trainer, evaluation, API or sampler; evaluation imports no trainer, model or
    API; the run folder's module loads no torch (the experiment specs read its names)."""
    import json
    import subprocess
    import sys

    def loaded(module: str) -> set:
        code = f"import {module}, sys, json; print(json.dumps(sorted(sys.modules)))"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return set(json.loads(proc.stdout.strip().splitlines()[-1]))

    assert not {"hqgnn.training", "hqgnn.api", "hqgnn.evaluation", "hqgnn.sampling"} & loaded("hqgnn.models")
    assert not {"hqgnn.training", "hqgnn.api", "hqgnn.models"} & loaded("hqgnn.evaluation")
    assert not {"torch", "hqgnn.models", "hqgnn.training"} & loaded("hqgnn.runs")
