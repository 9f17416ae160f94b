"""The run folder's files, named in one place (the trainer writes them; see ``hqgnn.training``)."""

from __future__ import annotations

from pathlib import Path

CONFIG = "config.yaml"
HISTORY = "history.jsonl"
CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
METRICS = "metrics.json"
DATA = "data.json"
RUN_FILES = (CONFIG, HISTORY, CHECKPOINT, MODEL, METRICS, DATA)


def clear_run(folder) -> list[str]:
    """Remove the run files of ``folder`` (only those: other files stay), so that a run
    trained over it (``--overwrite``) can never leave the old results beside its own.
    Returns the names removed."""
    folder = Path(folder)
    removed = []
    for name in RUN_FILES:
        path = folder / name
        if path.is_file():
            path.unlink()
            removed.append(name)
    return removed
