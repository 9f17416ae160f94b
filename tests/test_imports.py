"""Import weight: the package root is lazy, and light modules do not pull in heavy ones.

Each check runs in a fresh interpreter (this one has long since imported everything)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _loaded_after(code: str) -> set[str]:
    """The modules ``code`` leaves in ``sys.modules`` of a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def _hqgnn(modules: set[str]) -> set[str]:
    return {m for m in modules if m == "hqgnn" or m.startswith("hqgnn.")}


def test_import_hqgnn_loads_only_the_root():
    loaded = _loaded_after("import hqgnn\nassert hqgnn.__version__")
    assert _hqgnn(loaded) == {"hqgnn"}
    assert not {"torch", "numpy", "scipy", "matplotlib"} & loaded


def test_the_root_names_still_import():
    loaded = _loaded_after(
        "from hqgnn import Recommender, Config, InteractionData, load_dataset, __version__\n"
        "import hqgnn\n"
        "assert hqgnn.Recommender is Recommender and Recommender.__module__ == 'hqgnn.api'\n"
        "assert callable(load_dataset) and InteractionData.__module__.startswith('hqgnn.data')\n"
        "assert set(hqgnn.__all__) <= set(dir(hqgnn))")
    assert {"hqgnn.api", "hqgnn.config", "hqgnn.data"} <= loaded


def test_unknown_root_names_are_attribute_errors():
    import hqgnn

    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        hqgnn.Nope  # noqa: B018
    with pytest.raises(ImportError):
        from hqgnn import Nope  # noqa: F401


@pytest.mark.parametrize("module", ["hqgnn.data", "hqgnn.experiment"])
def test_data_and_experiment_specs_load_neither_the_trainer_nor_the_api(module):
    loaded = _loaded_after(f"import {module}")
    heavy = {"hqgnn.training", "hqgnn.api", "torch"}
    if module == "hqgnn.data":
        heavy.add("hqgnn.experiment")
    assert not heavy & loaded, sorted(heavy & loaded)


def test_version_and_help_from_the_command_line():
    import hqgnn

    script = Path(sys.executable).with_name("hqgnn")  # the console script next to this interpreter
    commands = [[str(script)]] if script.is_file() else []
    for cmd in commands + [[sys.executable, "-m", "hqgnn"]]:
        version = subprocess.run(cmd + ["--version"], capture_output=True, text=True, timeout=120)
        assert version.returncode == 0 and version.stdout.strip() == f"hqgnn {hqgnn.__version__}"
    helptext = subprocess.run([sys.executable, "-m", "hqgnn", "--help"], capture_output=True, text=True, timeout=120)
    assert helptext.returncode == 0 and "experiment" in helptext.stdout
