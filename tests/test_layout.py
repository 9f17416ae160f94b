"""Layout of serving and the index: what they import (never the trainer, the experiment runner,
the models or torch; the index never faiss), and that their modules stay small enough to read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "hqgnn"
HEAVY = ("hqgnn.training", "hqgnn.experiment", "hqgnn.models", "hqgnn.api")


def _modules(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]


def test_serving_and_index_import_no_trainer_models_or_experiment():
    modules = _modules("import hqgnn.serving, hqgnn.index; import sys, json; "
                       "print(json.dumps(sorted(m for m in sys.modules if m.startswith('hqgnn'))))")
    heavy = _heavy(modules)
    if heavy and _heavy(_modules("import hqgnn, sys, json; print(json.dumps(sorted(sys.modules)))")):
        pytest.xfail("root import is eager until __init__ is lazy")
    assert not heavy, heavy


def test_serving_and_index_own_imports_are_light():
    """With the package root bypassed (a bare namespace for ``hqgnn``), ``hqgnn.serving`` and
    ``hqgnn.index`` load neither the heavy hqgnn modules nor torch, and the index never faiss."""
    code = (
        "import importlib.util, json, sys, types\n"
        "spec = importlib.util.find_spec('hqgnn')\n"
        "root = types.ModuleType('hqgnn'); root.__path__ = list(spec.submodule_search_locations)\n"
        "root.__version__ = 'test'; sys.modules['hqgnn'] = root\n"
        "import hqgnn.index\n"
        "after_index = sorted(sys.modules)\n"
        "import hqgnn.serving\n"
        "print(json.dumps([after_index, sorted(sys.modules)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    after_index, after_serving = json.loads(out.stdout.strip().splitlines()[-1])
    assert not _heavy(after_serving), _heavy(after_serving)
    assert "torch" not in after_serving
    assert "faiss" not in after_index and "faiss" not in after_serving


@pytest.mark.parametrize("folder", ["index", "serving"])
def test_no_module_over_600_lines(folder):
    sizes = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in (SRC / folder).rglob("*.py")}
    assert sizes and max(sizes.values()) <= 600, {k: v for k, v in sizes.items() if v > 600}
