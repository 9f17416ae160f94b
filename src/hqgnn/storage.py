"""Atomic file writes: a crash never leaves a half-written checkpoint or export."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

#: the first bytes of an exported artifact (``hqgnn export``; :mod:`hqgnn.index.artifact`): here, below
#: the run folders and the index, so that a reader of either can tell an artifact from a run folder
ARTIFACT_MAGIC = b"HQGNNIDX"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it over ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched. A ``path`` that
    cannot be written (:func:`output_path_problem`: a folder there, a file above it) raises
    :class:`IsADirectoryError` / :class:`NotADirectoryError` before anything is created, and an
    ``OSError`` of creating or renaming the temporary file names ``path`` (``exc.filename``). The file gets
    the permissions an ordinary ``open(path, "w")`` would give (0666 less the umask), not
    the owner-only 0600 of :func:`tempfile.mkstemp`: an exported artifact or a run folder is
    read by other users and by serving containers.
    """
    path = Path(path)
    problem = output_path_problem(path)
    if problem is not None:  # before the writer's work: a folder there, or a file where a folder should be
        raise (IsADirectoryError if path.is_dir() else NotADirectoryError)(
            errno.EISDIR if path.is_dir() else errno.ENOTDIR, problem, str(path))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # named by the target, not by a temporary name the user never gave
        raise _naming(exc, path) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())
        try:
            os.replace(tmp_path, path)
        except OSError as exc:
            raise _naming(exc, path) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def output_path_problem(path: str | os.PathLike, folder: bool = False) -> Optional[str]:
    """Why ``path`` cannot be written as an output file (``folder``: an output folder), or None.

    An empty or blank path (it would mean the current folder), an existing folder where a file
    is to be written (an existing non-folder where a folder is), or a path below a file
    (``afile/x``). Checks only what exists now; it writes nothing."""
    if not str(path).strip():
        return "an empty path would mean the current folder"
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        return "exists and is not a folder"
    if not folder and path.is_dir():
        return "is a folder, not a file"
    for parent in path.parents:  # the nearest existing ancestor must be a folder
        if parent.exists() or parent.is_symlink():
            return None if parent.is_dir() else f"{parent} is not a folder"
    return None


def folder_problem(path: str | os.PathLike) -> Optional[str]:
    """Why ``path`` is not an existing folder (``"no such folder"``, ``"not a folder"``), or None:
    a mistyped run folder told apart from a run that lacks its files."""
    path = Path(path)
    if path.is_dir():
        return None
    return "not a folder" if path.exists() else "no such folder"


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` (same type, errno and reason) naming ``path`` instead of the file the OS call was given."""
    if exc.errno is None:
        return exc
    return type(exc)(exc.errno, exc.strerror, str(path))


def _umask() -> int:
    """The process's umask (``os.umask`` can only be read by setting it; set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
