"""The measured accuracy-per-byte frontier, and the code it picks for a memory budget.

``hqgnn train --budget-bytes N`` (and ``Recommender(budget_bytes=N)``) trains the code that the
frontier table shipped with the package (``default_configs/frontier.json``) measured best among
the codes of at most ``N`` bytes per item: the highest Recall@50 as a share of float LightGCN's
(``ratio_to_float``); ties go to the smaller code, then the faster one.

The table holds the rows of several data sets (``benchmarks/frontier.py`` writes each data set's
rows into it, keeping the others': MovieLens-1M from ``experiments/frontier-ml-1m.yaml``, Gowalla
from ``experiments/frontier-gowalla.yaml``). A budget uses the rows of the data set the run
trains on when the table has them (the data set's name, :func:`dataset_of`: the folder's name of
``--data ../shared/data/gowalla``, a table file's stem), else those of :data:`DEFAULT_DATASET`
(MovieLens-1M: e.g. for the synthetic data or a data set never measured); the pick's line names
the frontier it used.

A code of ``bits`` bits x ``dim`` dimensions takes ``bits * dim / 8`` bytes per item (and per
user); float32 embeddings take ``4 * dim``. The budget sets ``bits`` and ``dim`` only (and the
model ``hqgnn`` when the settings name a full-precision one); the learning rate, weight decay
and depth stay the run's own, since the table's tuned values are those of its data set.

A run trained with a budget records the pick in its folder (``budget.json``, :func:`budget_record`),
so ``hqgnn train --resume`` continues it with the same bits and dims without the flag (and
with it, even if the table has changed since: :func:`apply_recorded`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Optional, Sequence

from .config import FULL_PRECISION_MODELS, ONE_BIT_MODELS, Config
from .errors import ConfigError

#: the flag the messages name (the Python API names its argument instead)
FLAG = "--budget-bytes"
#: display names of the data sets a frontier table may hold
DATASET_NAMES = {"ml-1m": "MovieLens-1M", "gowalla": "Gowalla", "synthetic": "synthetic"}
#: whose rows a budget uses when the table has none of the run's data set
DEFAULT_DATASET = "ml-1m"
_ROW_KEYS = ("dataset", "model", "bits", "dim", "bytes_per_item", "recall@50", "ratio_to_float")


@dataclass(frozen=True)
class Pick:
    """The code a budget picks: ``bits`` x ``dim`` (``bytes_per_item`` bytes), the frontier ``row``
    it was measured as, and the 1-bit code of as many bytes (``one_bit``, None if not measured)."""

    budget: float
    bits: int
    dim: int
    bytes_per_item: float
    row: dict
    one_bit: Optional[dict]
    #: why the rows of another data set than the run's were used (e.g. ``no frontier measured on
    #: ratings``, ``no Gowalla code measured at 32 bytes/item``), else None
    unmeasured: Optional[str] = None

    def line(self) -> str:
        """One line: what was picked and why, e.g. ``budget 8 bytes/item: 4 bits x 16 dims
        (MovieLens-1M frontier: Recall@50 93% of float; 1 bit x 64: 82%)``."""
        name = DATASET_NAMES.get(self.row["dataset"], self.row["dataset"])
        unit = "bit" if self.bits == 1 else "bits"
        why = f"{name} frontier: Recall@50 {self.row['ratio_to_float']:.0%} of float"
        if self.unmeasured:
            why = f"{self.unmeasured}; {why}"
        if self.one_bit is not None and self.one_bit is not self.row:
            why += f"; 1 bit x {self.one_bit['dim']}: {self.one_bit['ratio_to_float']:.0%}"
        return f"budget {_num(self.budget)} bytes/item: {self.bits} {unit} x {self.dim} dims ({why})"


def _said(flag: str, value) -> str:
    """The budget as the user wrote it: ``--budget-bytes 8`` (a flag) or ``budget_bytes=8`` (an argument)."""
    return f"{flag} {value}" if flag.startswith("--") else f"{flag}={value!r}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _recorded_number(x: float):
    """A recorded budget as a number to show (8, not 8.0 or '8')."""
    return int(x) if float(x).is_integer() else float(x)


def load_frontier(path=None) -> list[dict]:
    """The rows of a frontier table: ``path`` (a ``frontier.json``: a list of rows, or an object
    with ``rows``), else the one shipped with the package.

    Raises :class:`~hqgnn.errors.ConfigError` naming the file and the first row that lacks a
    field or whose ``bytes_per_item`` is not ``bits * dim / 8`` (``4 * dim`` for float32 rows)."""
    where = str(path) if path is not None else "hqgnn/default_configs/frontier.json"
    try:
        if path is None:
            text = resources.files("hqgnn").joinpath("default_configs/frontier.json").read_text()
        else:
            with open(path) as fh:
                text = fh.read()
        doc = json.loads(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{where}: not a readable frontier table ({exc})") from None
    rows = doc.get("rows") if isinstance(doc, dict) else doc
    if not isinstance(rows, list) or not rows:
        raise ConfigError(f"{where}: a frontier table needs a non-empty list of rows")
    for i, row in enumerate(rows):
        missing = [k for k in _ROW_KEYS if not isinstance(row, dict) or k not in row]
        if missing:
            raise ConfigError(f"{where}: row {i} has no {missing[0]!r}")
        expect = row["bits"] * row["dim"] / 8
        if not math.isclose(row["bytes_per_item"], expect):
            raise ConfigError(f"{where}: row {i} ({row['bits']} bits x {row['dim']} dims) has bytes_per_item="
                              f"{row['bytes_per_item']!r}, expected bits * dim / 8 = {_num(expect)}")
    return rows


def dataset_of(data) -> str:
    """The name of the data set of a ``data`` setting, as the data loaders name it: ``synthetic``
    (also for None, the default), a LightGCN folder's name (``../shared/data/gowalla`` ->
    ``gowalla``), a table file's stem (``ratings.csv`` -> ``ratings``)."""
    text = "synthetic" if data is None else str(data).rstrip("/\\")
    path = Path(text)
    return path.stem if path.is_file() else path.name


def frontier_dataset(rows: Sequence[dict], dataset: Optional[str] = None, budget: Optional[float] = None) -> str:
    """Whose rows of ``rows`` a budget for ``dataset`` uses: ``dataset``'s when the table has a
    quantized code of it, else :data:`DEFAULT_DATASET`'s, else the first row's data set.

    With ``budget`` (bytes per item), a data set is used only if it measured a code as large as
    the largest code of at most ``budget`` bytes any data set measured: Gowalla measured 8 and 16
    bytes, so a 32-byte budget on Gowalla uses MovieLens-1M's rows (up to 32 bytes) rather than
    a 16-byte Gowalla code."""
    codes = [r for r in rows if r["model"] not in FULL_PRECISION_MODELS and r["bits"] <= 8]
    have = {r["dataset"] for r in codes}

    def largest(name=None) -> float:
        return max((r["bytes_per_item"] for r in codes if (name is None or r["dataset"] == name)
                    and r["bytes_per_item"] <= budget + 1e-9), default=-1.0)

    if budget is not None:
        for name in (dataset, DEFAULT_DATASET):
            if name in have and largest(name) >= 0 and math.isclose(largest(name), largest()):
                return name
    for name in (dataset, DEFAULT_DATASET):
        if name in have:
            return name
    return rows[0]["dataset"]


def merge_rows(old: Sequence[dict], new: Sequence[dict]) -> list[dict]:
    """A table's rows with ``new`` in place of the rows of ``new``'s data sets; the other data
    sets' rows of ``old`` stay. Sorted by data set, in the order of ``old`` then ``new``."""
    replaced = {r["dataset"] for r in new}
    rows = [r for r in old if r["dataset"] not in replaced] + list(new)
    order = list(dict.fromkeys(r["dataset"] for r in list(old) + list(new)))
    return sorted(rows, key=lambda r: order.index(r["dataset"]))


def parse_budget(value, flag: str = FLAG) -> float:
    """A budget as the user wrote it (``"8"``, ``8``, ``12.5``) to bytes per item.

    Raises :class:`~hqgnn.errors.ConfigError` for anything but a finite number > 0."""
    try:
        budget = float(value)
    except (TypeError, ValueError):
        budget = float("nan")
    if isinstance(value, bool) or not math.isfinite(budget) or budget <= 0:
        raise ConfigError(f"{_said(flag, value)}: expected a number of bytes per item > 0, e.g. {_said(flag, 8)}")
    return budget


def pick_code(budget, rows: Optional[Sequence[dict]] = None, dataset: Optional[str] = None,
              flag: str = FLAG) -> Pick:
    """The best measured quantized code (bits <= 8) of at most ``budget`` bytes per item.

    Args:
        budget: bytes per item (a number, or its text as typed).
        rows: a frontier table's rows (default: the shipped table, :func:`load_frontier`).
        dataset: the data set the run trains on: its rows when the table has them, else
            :data:`DEFAULT_DATASET`'s (:func:`frontier_dataset`).
        flag: the name the messages give the budget.

    Raises :class:`~hqgnn.errors.ConfigError` (one line, naming ``flag`` and the value) for a
    budget that is not a positive number or is below the smallest measured code."""
    budget_bytes = parse_budget(budget, flag)
    rows = load_frontier() if rows is None else list(rows)
    asked, dataset = dataset, frontier_dataset(rows, dataset, budget_bytes)
    codes = [r for r in rows if r["dataset"] == dataset and r["model"] not in FULL_PRECISION_MODELS
             and r["bits"] <= 8]
    if not codes:
        raise ConfigError(f"{_said(flag, budget)}: the frontier table has no quantized code of data set {dataset!r}")
    fits = [r for r in codes if r["bytes_per_item"] <= budget_bytes + 1e-9]
    if not fits:
        small = min(codes, key=lambda r: r["bytes_per_item"])
        raise ConfigError(f"{_said(flag, budget)}: below the smallest measured code "
                          f"({_num(small['bytes_per_item'])} bytes/item, e.g. {small['bits']} bit{'s' if small['bits'] > 1 else ''} "
                          f"x {small['dim']} dims)")
    best = max(fits, key=lambda r: (round(r["ratio_to_float"], 6), -r["bytes_per_item"], r.get("queries_per_s") or 0))
    one_bit = next((r for r in codes if r["bits"] == 1 and math.isclose(r["bytes_per_item"], best["bytes_per_item"])),
                   None)
    unmeasured = None
    if asked and asked != dataset:
        measured = any(r["dataset"] == asked and r["model"] not in FULL_PRECISION_MODELS for r in rows)
        unmeasured = (f"no {DATASET_NAMES.get(asked, asked)} code measured at {_num(best['bytes_per_item'])} bytes/item"
                      if measured else f"no frontier measured on {asked}")
    return Pick(budget_bytes, int(best["bits"]), int(best["dim"]), float(best["bytes_per_item"]), best, one_bit,
                unmeasured)


def apply_budget(cfg: Config, budget, bits: Optional[int] = None, overrides: Iterable[str] = (),
                 model: Optional[str] = None, flag: str = FLAG, rows: Optional[Sequence[dict]] = None,
                 dataset: Optional[str] = None) -> tuple[Config, Pick]:
    """``cfg`` with the bits and dims that ``budget`` picks (:func:`pick_code`) from the rows of
    ``cfg.data``'s data set (or ``dataset``'s, if given; :func:`frontier_dataset`), and the pick.

    ``bits``, ``overrides`` (``KEY=VALUE`` texts of ``--set``) and ``model`` are what the user gave
    explicitly beside the budget: an explicit bit width or ``dim`` conflicts with it, as does a
    full-precision or 1-bit-only model named explicitly when the pick is not 1 bit. A
    full-precision model from a config file (or the default) becomes ``hqgnn``.

    Raises :class:`~hqgnn.errors.ConfigError` (one line naming the flags and values)."""
    cli = flag.startswith("--")
    said = _said(flag, budget)
    if bits is not None:
        raise ConfigError(f"{said} picks the bit width and dims: drop {'--bits ' if cli else 'bits='}{bits} (or the budget)")
    for text in overrides or ():
        key = str(text).split("=", 1)[0].strip()
        if key in ("bits", "dim"):
            raise ConfigError(f"{said} picks the bit width and dims: drop {'--set ' if cli else ''}{text} (or the budget)")
    pick = pick_code(budget, rows=rows, flag=flag, dataset=dataset or dataset_of(cfg.data))
    chosen = cfg.model
    if model is not None and (model in FULL_PRECISION_MODELS or (model in ONE_BIT_MODELS and pick.bits != 1)):
        name = f"--model {model}" if cli else f"model={model!r}"
        raise ConfigError(f"{said} picks a {pick.bits}-bit code, which {name} does not train "
                          f"(use {'--model hqgnn' if cli else 'model=hqgnn'}, or drop the budget)")
    if chosen in FULL_PRECISION_MODELS or (chosen in ONE_BIT_MODELS and pick.bits != 1):
        chosen = "hqgnn"
    updated = cfg.updated({"bits": pick.bits, "dim": pick.dim, "model": chosen}, flag).validate()
    return updated, pick


def budget_record(pick: Pick, cfg: Config) -> dict:
    """What a budget run records in its folder (``budget.json``): the budget, the code it picked,
    the model trained and the pick's line."""
    return {"budget_bytes": pick.budget, "bits": pick.bits, "dim": pick.dim, "model": cfg.model,
            "dataset": pick.row["dataset"], "line": pick.line()}


def apply_recorded(cfg: Config, record: dict, budget=None, bits: Optional[int] = None,
                   overrides: Iterable[str] = (), model: Optional[str] = None, flag: str = FLAG) -> Config:
    """``cfg`` with the bits, dims and model of a budget run's record (:func:`budget_record`):
    what ``--resume`` of that run trains, with or without the budget flag (the table may have
    changed since the pick). Settings given explicitly (``bits``, ``--set dim=...``, ``model``)
    are kept, and the trainer refuses them if they differ from the checkpoint's.

    Raises :class:`~hqgnn.errors.ConfigError` when ``budget`` is given and is not the recorded one."""
    if budget is not None and not math.isclose(parse_budget(budget, flag), float(record["budget_bytes"])):
        raise ConfigError(f"{_said(flag, budget)}: this run was trained with {_said(flag, _recorded_number(record['budget_bytes']))} "
                          f"(its budget.json); resume it with that budget or without one")
    explicit = {str(t).split("=", 1)[0].strip() for t in overrides or ()}
    values = {k: record[k] for k in ("bits", "dim") if k not in explicit and not (k == "bits" and bits is not None)}
    if model is None:
        values["model"] = record["model"]
    return cfg.updated(values, "budget.json").validate()
