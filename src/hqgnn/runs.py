"""The run folder: its files, their formats, and every read and write of them, in one place.

A run folder holds (each file written atomically, :mod:`hqgnn.storage`):

* ``config.yaml``    the resolved settings (:class:`hqgnn.config.Config`)
* ``history.jsonl``  one JSON line per evaluation (and per GSTE delta update)
* ``checkpoint.pt``  the latest training state: weights, optimiser, epoch, best, history
* ``model.pt``       the weights reported in ``metrics.json`` (best on the monitored split)
* ``metrics.json``   final test metrics, ``train_seconds``, which split selected the model
* ``data.json``      data fingerprint, sizes and id maps (:func:`data_summary`)
* ``budget.json``    only for a run trained with ``--budget-bytes N``: the budget and the code it
  picked (:func:`hqgnn.frontier.budget_record`), which ``--resume`` trains again

The trainer (:mod:`hqgnn.training`) writes them (``budget.json``: ``hqgnn train``); inference (:meth:`hqgnn.api.Recommender.load`,
:func:`hqgnn.export.export_run`) reads them through :class:`RunFolder` and
:func:`load_checkpoint` without importing the trainer.

Weights files (``checkpoint.pt`` and ``model.pt``) are ``torch.save`` dicts with a
``version`` (:data:`CHECKPOINT_VERSION`), the settings (``config``) and the state dict
(``model``). No file holding NaN / inf weights is written, and none is read
(:class:`~hqgnn.errors.CheckpointError`).

Importing this module loads no torch (the names of the files are light to import).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .errors import CheckpointError
from .storage import ARTIFACT_MAGIC, atomic_path, write_json_atomic, write_text_atomic

CONFIG = "config.yaml"
HISTORY = "history.jsonl"
CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
METRICS = "metrics.json"
DATA = "data.json"
BUDGET = "budget.json"
RUN_FILES = (CONFIG, HISTORY, CHECKPOINT, MODEL, METRICS, DATA, BUDGET)
#: what the distributed trainer (hqgnn.distributed) adds: the sharding plan, the sharded
#: checkpoint and the memory-mapped graph; ``--overwrite`` removes them too
DISTRIBUTED_FILES = ("plan.json",)
DISTRIBUTED_FOLDERS = ("dist_checkpoint", "graph")

#: The layout of ``checkpoint.pt`` / ``model.pt``. Version 1: ``{"version", "config", "model",
#: "data_fingerprint", ...}`` with the state dict keys of :mod:`hqgnn.models` (``encoder.embedding``,
#: ``user_quantizer.scale``, ...). A file of a newer version is refused.
CHECKPOINT_VERSION = 1

# the parts of a weights file that hold tensors which must be finite
_WEIGHT_PARTS = ("model", "best_state", "optimizer")


def clear_run(folder) -> list[str]:
    """Remove the run files of ``folder`` (only those: other files stay), so that a run
    trained over it (``--overwrite``) can never leave the old results beside its own.
    Returns the names removed."""
    return RunFolder(folder).clear()


def check_finite_state(state: dict, path) -> None:
    """Refuse a checkpoint / ``model.pt`` dict whose weights (``model``, ``best_state``) or Adam
    state (``optimizer``) hold NaN or inf: raises :class:`CheckpointError` naming ``path``, the
    tensor and how many of its values are non-finite."""
    problem = nonfinite_weights(state)
    if problem:
        raise CheckpointError(f"{path}: non-finite weights: {problem} (written by a diverged run; "
                              f"retrain it with a lower lr)")


def nonfinite_weights(state: dict) -> Optional[str]:
    """The first NaN / inf tensor of a weights dict's ``model``, ``best_state`` and ``optimizer``
    (:func:`hqgnn.finite.first_nonfinite`), or None."""
    from .finite import first_nonfinite, named_tensors  # torch: imported when weights are checked

    parts = {key: state.get(key) for key in _WEIGHT_PARTS if state.get(key) is not None}
    return first_nonfinite(named_tensors(parts))


def load_checkpoint(path) -> dict:
    """Read a ``checkpoint.pt`` / ``model.pt`` (onto the CPU).

    Returns the saved dict: ``version``, ``config`` (the settings as a plain dict),
    ``model`` (the state dict), ``data_fingerprint``, and the training state of a checkpoint.

    Raises :class:`~hqgnn.errors.CheckpointError` (naming ``path``) when the file is missing,
    corrupt, not an hqgnn checkpoint, of a newer version than :data:`CHECKPOINT_VERSION`, or
    holds non-finite weights (:func:`check_finite_state`).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated zip, pickle errors, ...
        raise CheckpointError(f"{path}: corrupt checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(state, dict) or "version" not in state or "model" not in state:
        raise CheckpointError(f"{path}: not an hqgnn checkpoint")
    if state["version"] > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {state['version']} is newer than this hqgnn ({CHECKPOINT_VERSION})")
    check_finite_state(state, path)
    return state


def data_summary(data) -> dict:
    """What ``data.json`` holds: the data's name, source, fingerprint, sizes, split and
    preprocessing notes, and the original user / item ids (when the data has them)."""
    out = {
        "name": data.name,
        "source": data.source,
        "fingerprint": data.fingerprint(),
        "n_users": data.n_users,
        "n_items": data.n_items,
        "train": int(data.train.nnz),
        "valid": int(data.valid.nnz) if data.valid is not None else 0,
        "test": int(data.test.nnz),
        "notes": data.notes,
        "split_method": data.split_method,
        "preprocessing": data.preprocessing,
    }
    if data.user_ids is not None:
        out["user_ids"] = data.user_ids.tolist()
    if data.item_ids is not None:
        out["item_ids"] = data.item_ids.tolist()
    return out


class RunFolder:
    """The files of one run folder (see the module docstring), read and written.

    Writes are atomic and create the folder; reads raise
    :class:`~hqgnn.errors.CheckpointError` naming the file when it is missing or damaged.
    """

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    def clear(self) -> list[str]:
        """Remove the run files (only those); returns the names removed."""
        import shutil

        removed = []
        for name in RUN_FILES + DISTRIBUTED_FILES:
            path = self.path / name
            if path.is_file():
                path.unlink()
                removed.append(name)
        for name in DISTRIBUTED_FOLDERS:
            path = self.path / name
            if path.is_dir():
                shutil.rmtree(path)
                removed.append(name + "/")
        return removed

    # ------------------------------------------------------------ settings
    def write_config(self, cfg) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        cfg.save(self.path / CONFIG)

    def write_budget(self, record: dict) -> None:
        """Write ``budget.json``: a budget run's pick (:func:`hqgnn.frontier.budget_record`)."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path / BUDGET, record)

    def read_budget(self) -> Optional[dict]:
        """The budget run's pick of ``budget.json``, or None (a run trained without a budget)."""
        def check(record) -> None:
            if not all(k in record for k in ("budget_bytes", "bits", "dim", "model")):
                raise ValueError("a field is missing")

        return self._read_json(BUDGET, "damaged budget record", check)

    def read_config(self):
        """The run's settings (:class:`hqgnn.config.Config`, old spellings resolved)."""
        from .config import DISTILL_SETTINGS, Config

        path = self.path / CONFIG
        if self.path.is_file():
            with open(self.path, "rb") as fh:
                exported = fh.read(len(ARTIFACT_MAGIC)) == ARTIFACT_MAGIC
            if exported:
                raise CheckpointError(f"{self.path}: an exported artifact, not a run folder: recommend from it with "
                                      f"hqgnn.index.recommender.ArtifactRecommender(path) or hqgnn recommend, or pass the run "
                                      f"folder it was exported from")
            raise CheckpointError(f"{self.path}: a file, not a run folder (the folder hqgnn train --out writes)")
        if not path.is_file():
            raise CheckpointError(f"{self.path}: not a run folder (no {CONFIG})")
        cfg = Config.load(path, validate=False)
        if not cfg.distill_from:  # runs written before these were refused without a teacher: they did nothing
            cfg = cfg.updated({key: getattr(Config, key) for key in DISTILL_SETTINGS}, str(path))
        return cfg.validate()

    # ------------------------------------------------------------ training
    def write_history(self, history: list) -> None:
        write_text_atomic(self.path / HISTORY, "".join(json.dumps(h) + "\n" for h in history))

    def write_checkpoint(self, state: dict) -> None:
        """Write ``checkpoint.pt``: the trainer's state (:meth:`hqgnn.training.Trainer.state`)."""
        self._save(CHECKPOINT, state)

    def read_checkpoint(self) -> dict:
        return load_checkpoint(self.path / CHECKPOINT)

    # ------------------------------------------------------------ results
    def write_model(self, config: dict, weights: dict, data) -> None:
        """Write ``model.pt``: the reported weights (a state dict), the settings and the data's
        fingerprint and sizes. Raises :class:`CheckpointError` (writing nothing) for NaN / inf."""
        self._save(MODEL, {
            "version": CHECKPOINT_VERSION,
            "config": config,
            "model": weights,
            "data_fingerprint": data.fingerprint(),
            "n_users": data.n_users,
            "n_items": data.n_items,
        })

    def read_model(self) -> dict:
        """``model.pt`` as :func:`load_checkpoint` returns it."""
        return load_checkpoint(self.path / MODEL)

    def write_metrics(self, metrics: dict) -> None:
        write_json_atomic(self.path / METRICS, metrics)

    def read_metrics(self) -> Optional[dict]:
        """``metrics.json``, or None when the run has none (unfinished)."""
        return self._read_json(METRICS, "unreadable metrics")

    def _read_json(self, name: str, problem: str, check=None) -> Optional[dict]:
        """The JSON file ``name`` of the run (None when absent), ``check`` raising ValueError or
        TypeError on a record it refuses; a file that cannot be read or fails the check raises
        :class:`CheckpointError` naming the file and ``problem``."""
        path = self.path / name
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
            if check is not None:
                check(record)
        except (OSError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: {problem} ({exc})") from None
        return record

    def write_data(self, data) -> None:
        """Write ``data.json`` (:func:`data_summary`)."""
        write_json_atomic(self.path / DATA, data_summary(data))

    # ------------------------------------------------------------ helpers
    def _save(self, name: str, state: dict) -> None:
        import torch

        path = self.path / name
        problem = nonfinite_weights(state)
        if problem:
            raise CheckpointError(f"{path}: refusing to write non-finite weights: {problem}")
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
