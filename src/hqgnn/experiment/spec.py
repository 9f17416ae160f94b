"""The experiment file: parsing and checking it, and expanding it into cells.

A :class:`Cell` is one run of the grid (data set x model x bits x seed, or a named variant),
with its run folder ``OUT/DATASET/LABEL/seedS``; :func:`cell_config` is the run's
:class:`~hqgnn.config.Config`. The file format is described in :mod:`hqgnn.experiment`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config import DISTILLED_MODELS, FULL_PRECISION_MODELS, ONE_BIT_MODELS, POST_HOC_MODELS, QUANTIZED_MODELS, Config, read_yaml
from ..errors import ConfigError

_KEYS = {"name", "out", "datasets", "config", "settings", "seeds", "cells", "reference", "compare", "metrics"}
_CELL_KEYS = {"model", "bits", "seeds", "settings", "config", "name", "start_from", "distill_from", "teacher_seed"}


@dataclass(frozen=True)
class Cell:
    dataset: str
    data_path: str
    model: str
    bits: Optional[int]
    seed: int
    config: Optional[str]
    settings: tuple
    name: Optional[str] = None  # a variant's display name (same model, other settings)
    start_from: Optional[str] = None  # name of the full-precision cell (same data set, seed) it starts from
    distill_from: Optional[str] = None  # name of the full-precision cell (same data set, seed) it distils from
    teacher_seed: Optional[int] = None  # the seed of that cell's run to distil from, when not the cell's own

    @property
    def display(self) -> str:
        return self.name or self.model

    @property
    def label(self) -> str:
        return self.display if self.bits is None else f"{self.display}-b{self.bits}"

    def run_dir(self, out: Path) -> Path:
        return out / self.dataset / self.label / f"seed{self.seed}"

    def is_finished(self, out: Path) -> bool:
        """A cell with ``metrics.json`` is finished: it is reported and never rerun."""
        return (self.run_dir(out) / "metrics.json").is_file()


def load_experiment(path) -> dict:
    spec = read_yaml(path)
    unknown = set(spec) - _KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown experiment key {sorted(unknown)[0]!r} (known: {', '.join(sorted(_KEYS))})")
    for key in ("datasets", "cells"):
        if not spec.get(key):
            raise ConfigError(f"{path}: experiment needs {key!r}")
    if not isinstance(spec["datasets"], dict):
        raise ConfigError(f"{path}: datasets must map names to paths, e.g. {{ml-1m: ../shared/data/ml-1m}}")
    compare = spec.setdefault("compare", [])
    if not isinstance(compare, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair) for pair in compare):
        raise ConfigError(f"{path}: compare must be a list of model pairs, e.g. [[hqgnn, ste]], got {compare!r}")
    spec.setdefault("seeds", [2020])
    spec.setdefault("metrics", ["recall@50", "ndcg@50"])
    spec.setdefault("name", Path(path).stem)
    spec.setdefault("out", str(Path("runs") / spec["name"]))
    base = Path(path).resolve().parent
    spec["_base"] = base
    return spec


def _resolve(base: Path, p: Optional[str]) -> Optional[str]:
    if p is None or p == "synthetic":
        return p
    q = Path(p)
    return str(q if q.is_absolute() or q.exists() else base / q)


def expand_cells(spec: dict) -> list[Cell]:
    cells = []
    base = spec["_base"]
    full_precision = {e.get("name") or e.get("model") for e in spec["cells"] if e.get("model") in FULL_PRECISION_MODELS}
    for dataset, data_path in spec["datasets"].items():
        for entry in spec["cells"]:
            if "model" not in entry:
                raise ConfigError(f"experiment cell {entry!r} has no model")
            unknown = set(entry) - _CELL_KEYS
            if unknown:
                raise ConfigError(f"experiment cell {entry!r}: unknown key {sorted(unknown)[0]!r} "
                                  f"(known: {', '.join(sorted(_CELL_KEYS))})")
            start = entry.get("start_from")
            if start is not None and (start not in full_precision or entry["model"] not in QUANTIZED_MODELS):
                raise ConfigError(f"experiment cell {entry!r}: start_from={start!r} needs a quantized "
                                  f"model and the name of a full-precision cell of the grid "
                                  f"({', '.join(sorted(full_precision)) or 'none'})")
            teacher = entry.get("distill_from")
            if teacher is not None and (teacher not in full_precision or entry["model"] not in DISTILLED_MODELS):
                raise ConfigError(f"experiment cell {entry!r}: distill_from={teacher!r} needs a model of "
                                  f"{', '.join(DISTILLED_MODELS)} and the name of a full-precision cell of the grid "
                                  f"({', '.join(sorted(full_precision)) or 'none'})")
            teacher_seed = entry.get("teacher_seed")
            if teacher_seed is not None and (teacher is None or isinstance(teacher_seed, bool)
                                             or not isinstance(teacher_seed, int)):
                raise ConfigError(f"experiment cell {entry!r}: teacher_seed={teacher_seed!r} needs distill_from "
                                  f"and an integer seed of that cell")
            bits_list = entry.get("bits")
            if entry["model"] in QUANTIZED_MODELS:
                bits_list = bits_list if isinstance(bits_list, list) else [bits_list or (1 if entry["model"] in ONE_BIT_MODELS else 4)]
            else:
                bits_list = [None]
            for bits in bits_list:
                for seed in entry.get("seeds", spec["seeds"]):
                    extra = dict(spec.get("settings") or {})
                    extra.update(entry.get("settings") or {})
                    cells.append(
                        Cell(
                            dataset=dataset,
                            data_path=_resolve(base, str(data_path)),
                            model=entry["model"],
                            bits=bits,
                            seed=int(seed),
                            config=_resolve(base, entry.get("config", spec.get("config"))),
                            settings=tuple(sorted(extra.items())),
                            name=entry.get("name"),
                            start_from=start,
                            distill_from=teacher,
                            teacher_seed=teacher_seed,
                        )
                    )
    # full-precision runs first: post-hoc cells quantize them, start_from / distill_from cells use them
    return sorted(cells, key=lambda c: (c.model in POST_HOC_MODELS or c.start_from is not None
                                        or c.distill_from is not None, c.dataset))


def full_precision_model(cells: list[Cell], dataset: str) -> str:
    """The full-precision model whose runs a data set's post-hoc cells quantize: lightgcn, else mf."""
    present = {c.model for c in cells if c.dataset == dataset}
    return next((m for m in FULL_PRECISION_MODELS if m in present), "lightgcn")


def cell_config(cell: Cell, out: Path, source: str = "lightgcn") -> Config:
    extra = {"model": cell.model, "seed": cell.seed, "data": cell.data_path}
    if cell.bits is not None:
        extra["bits"] = cell.bits
    if cell.model in POST_HOC_MODELS or cell.start_from:
        fp_name = cell.start_from or source  # a full-precision cell's display name, which is its folder
        extra["from_run"] = str(Cell(cell.dataset, cell.data_path, fp_name, None, cell.seed, None, ()).run_dir(out))
    if cell.distill_from:
        seed = cell.seed if cell.teacher_seed is None else cell.teacher_seed
        extra["distill_from"] = str(Cell(cell.dataset, cell.data_path, cell.distill_from, None, seed, None, ()).run_dir(out))
    cfg = Config.load(cell.config, None, extra)
    return cfg.updated(dict(cell.settings), "experiment settings").validate()
