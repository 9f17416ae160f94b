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


# ---------------------------------------------------------------- imports run one way
#: the package's modules in data-flow order: each may import only those before it (the
#: package root, a lazy facade, comes last; any module may read its ``__version__``)
ORDER = ["errors", "storage", "finite", "config", "frontier", "data", "graph", "runs", "models", "sampling", "evaluation",
         "training", "distributed", "index", "loading", "export", "serving", "api", "experiment", "demo", "cli", "__main__", ""]


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _import_graph() -> dict:
    """``{top-level module: {top-level modules it imports}}``, read from the source (imports
    inside functions included: a lazy import is still a dependency)."""
    import ast

    edges: dict = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        me = _top(".".join(parts))
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target == "hqgnn" and [a.name for a in node.names] == ["__version__"]:
                    continue
                targets.append(target)
            elif isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
            for target in targets:
                if target.split(".")[0] == "hqgnn" and _top(target) != me:
                    edges.setdefault(me, set()).add(_top(target))
    return edges


def test_every_module_has_its_place_in_the_data_flow():
    modules = {p.stem if p.parent == SRC else p.relative_to(SRC).parts[0] for p in SRC.rglob("*.py")}
    modules = {"" if m == "__init__" else m for m in modules}
    assert modules <= set(ORDER), sorted(modules - set(ORDER))


def test_imports_run_one_way_without_cycles():
    wrong = [f"{me or 'hqgnn'} imports {other or 'hqgnn'}" for me, others in _import_graph().items()
             for other in others if ORDER.index(other) >= ORDER.index(me)]
    assert not wrong, wrong
