"""The exported retrieval artifact: one self-describing, checksummed, memory-mappable file.

File layout (format version 1, all integers little-endian)::

    offset  0  magic            8 bytes  b"HQGNNIDX"
    offset  8  format version   uint32
    offset 12  header length H  uint32
    offset 16  sha256          32 bytes  digest of every byte from offset 48 to the end
    offset 48  header           H bytes  UTF-8 JSON (below)
               zero padding to a multiple of 64
    payload    the arrays, raw C-order bytes, each at a 64-byte aligned offset

The JSON header holds the metadata -- ``model``, ``bits`` (1..8, or 32 for float
embeddings), ``dim``, ``words`` (64-bit words per row and bit plane), ``pad_bits``,
``layout``, ``n_users``, ``n_items``, ``user_scale``, ``item_scale``,
``data_fingerprint``, ``extra`` (free-form JSON), ``created_by`` -- and an ``arrays``
table ``name -> {dtype, shape, offset, nbytes}`` (offsets relative to the payload).

Arrays: ``user_codes`` / ``item_codes`` -- ``(bits, n, words)`` uint64 bit planes
(:mod:`hqgnn.index.packing`), or ``(n, dim)`` float32 embeddings when ``bits == 32``
(format names; in Python an :class:`Artifact` calls them ``user_planes`` / ``item_planes``
or ``user_embeddings`` / ``item_embeddings``, and ``user_codes()`` / ``item_codes()`` unpack planes);
``user_ids`` / ``item_ids`` -- the original ids (int64, or fixed-width unicode ``<U*``);
``train_indptr`` (int64) / ``train_indices`` (int32 or int64) -- each user's training
items as CSR, for excluding seen items.

The checksum covers the header and the payload, so any flipped byte is detected;
:func:`read_artifact` checks magic, version, size and checksum, then memory-maps the
arrays (``mmap=True``) so the codes of a large catalogue are paged in on demand.
Every problem raises :class:`hqgnn.errors.CheckpointError` with a one-line message
that names the file.

Scores must be finite: writing (:func:`write_artifact`, so :func:`export_from_arrays` and
every export) and reading refuse NaN / inf float32 embeddings, scales that are not finite
and > 0, and values whose scores could overflow float32 -- for float embeddings the
Cauchy-Schwarz bound (max user row norm x max item row norm, and max item norm squared for
item-to-item), for b-bit codes ``s_u s_i / 4 * dim * (2^b - 1)^2`` (and ``s_i^2 / 4 ...``).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import CheckpointError
from ..storage import ARTIFACT_MAGIC, atomic_path
from .packing import LAYOUT, pack_codes, pad_bits, unpack_codes, words_per_row

MAGIC = ARTIFACT_MAGIC
FORMAT_VERSION = 1
PREAMBLE = struct.Struct("<8sII32s")  # magic, version, header length, sha256
ALIGN = 64
FLOAT_BITS = 32
FLOAT32_MAX = float(np.finfo(np.float32).max)
_HASH_CHUNK = 1 << 22
_CHECK_ELEMENTS = 1 << 21  # values per block when scanning float embeddings (16 MiB as float64)


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _version() -> str:
    try:
        from .. import __version__
    except ImportError:  # pragma: no cover
        __version__ = "unknown"
    return f"hqgnn {__version__}"


def _id_array(ids: Any, n: int, what: str) -> np.ndarray:
    """Original ids as int64 or fixed-width unicode (memory-mappable; no Python objects)."""
    if ids is None:
        return np.arange(n, dtype=np.int64)
    arr = np.asarray(ids)
    if arr.ndim != 1 or len(arr) != n:
        raise ValueError(f"{what} must be a 1-d array of {n} ids, got shape {arr.shape}")
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64)
    if arr.dtype.kind == "U":
        return arr
    if arr.dtype.kind in "OS":
        return arr.astype(str)
    raise ValueError(f"{what} must hold integers or strings, got dtype {arr.dtype}")


@dataclass
class Artifact:
    """A read artifact: metadata plus (memory-mapped) arrays. Fields mirror the file.

    Vocabulary: *planes* are packed, *codes* unpacked. A quantized artifact (``bits`` 1..8)
    holds ``item_planes`` / ``user_planes``: ``(bits, n, words)`` uint64 bit planes (the
    file's ``item_codes`` / ``user_codes`` arrays), unpacked by :meth:`item_codes` /
    :meth:`user_codes` into ``(n, dim)`` uint8 codes; its ``*_embeddings`` are None. A float
    artifact (``bits == 32``) holds ``item_embeddings`` / ``user_embeddings``, ``(n, dim)``
    float32, and no planes. ``user_planes`` / ``user_embeddings`` are None in an item-only
    artifact. ``user_ids`` / ``item_ids``: ``(n,)`` original ids (int64 or ``<U*``);
    ``train_indptr`` / ``train_indices``: the seen items per user as CSR.
    """

    path: Path
    model: str
    bits: int
    dim: int
    user_scale: float
    item_scale: float
    user_ids: np.ndarray
    item_ids: np.ndarray
    train_indptr: np.ndarray
    train_indices: np.ndarray
    item_planes: Optional[np.ndarray] = None      # (bits, n_items, words) uint64; None when bits == 32
    user_planes: Optional[np.ndarray] = None      # (bits, n_users, words) uint64, or None
    item_embeddings: Optional[np.ndarray] = None  # (n_items, dim) float32 when bits == 32, else None
    user_embeddings: Optional[np.ndarray] = None  # (n_users, dim) float32, or None
    data_fingerprint: str = ""
    extra: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    meta: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def is_float(self) -> bool:
        return self.bits == FLOAT_BITS

    @property
    def words(self) -> int:
        return words_per_row(self.dim)

    @property
    def pad_bits(self) -> int:
        return 0 if self.is_float else pad_bits(self.dim)

    def user_codes(self) -> Optional[np.ndarray]:
        """``(n_users, dim)`` uint8 unsigned codes, unpacked from :attr:`user_planes` (None without
        user planes). Raises ``ValueError`` for a float artifact (read :attr:`user_embeddings`)."""
        return self._unpack(self.user_planes)

    def item_codes(self) -> np.ndarray:
        """``(n_items, dim)`` uint8 unsigned codes, unpacked from :attr:`item_planes`. Raises
        ``ValueError`` for a float artifact (read :attr:`item_embeddings`)."""
        return self._unpack(self.item_planes)

    def _unpack(self, planes):
        if self.is_float:
            raise ValueError(f"{self.path}: a float artifact holds embeddings, not codes")
        return None if planes is None else unpack_codes(planes, self.bits, self.dim)

    def stored(self, side: str) -> Optional[np.ndarray]:
        """The array the file stores for ``side`` (``"user"`` / ``"item"``): planes, or embeddings when float."""
        return getattr(self, f"{side}_embeddings" if self.is_float else f"{side}_planes")

    def train_csr(self):
        """The training interactions as a ``scipy.sparse.csr_matrix`` (users x items, ones)."""
        import scipy.sparse as sp

        data = np.ones(len(self.train_indices), dtype=np.float32)
        return sp.csr_matrix((data, np.asarray(self.train_indices), np.asarray(self.train_indptr)),
                             shape=(self.n_users, self.n_items))

    def file_size(self) -> int:
        return self.path.stat().st_size


# ---------------------------------------------------------------- finite scores
def _float_stats(arr: np.ndarray) -> tuple[int, int, float]:
    """``(NaN count, inf count, max row norm)`` of ``(n, d)`` embeddings, in float64, block by block
    (a memory-mapped table is paged through once, never copied whole)."""
    n = len(arr)
    rows = max(1, _CHECK_ELEMENTS // max(1, arr.shape[1] if arr.ndim == 2 else 1))
    nan = inf = 0
    top = 0.0
    for start in range(0, n, rows):
        block = np.asarray(arr[start:start + rows], dtype=np.float64)
        if not np.isfinite(block).all():
            nan += int(np.isnan(block).sum())
            inf += int(np.isinf(block).sum())
        elif not nan and not inf and block.size:
            top = max(top, float(np.sqrt(np.einsum("ij,ij->i", block, block).max())))
    return nan, inf, top


def check_finite_scores(where: str, *, bits: int, dim: int, user_codes: Optional[np.ndarray],
                        item_codes: np.ndarray, user_scale: float, item_scale: float) -> None:
    """Refuse what would give NaN / inf scores: raises :class:`CheckpointError` ``"{where}: FIELD ..."``.

    ``user_codes`` / ``item_codes``: the arrays as the file stores them (under these names):
    ``(bits, n, words)`` planes, or ``(n, dim)`` float32 embeddings when ``bits == 32``.

    Checks that both scales are finite and > 0; float32 embeddings (``bits == 32``) hold no
    NaN / inf and their row norms cannot overflow a float32 score (Cauchy-Schwarz: max user
    norm x max item norm, and max item norm squared for item-to-item); for b-bit codes, that
    ``scale_u scale_i / 4 * dim * (2^b - 1)^2`` (and with ``scale_i^2``) stays below float32's max.
    """
    for name, scale in (("user_scale", user_scale), ("item_scale", item_scale)):
        try:
            ok = math.isfinite(float(scale)) and float(scale) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise CheckpointError(f"{where}: {name} is {scale!r}; a scale must be a finite number > 0")
    if bits == FLOAT_BITS:
        norms = {}
        for name, arr in (("user_codes", user_codes), ("item_codes", item_codes)):
            if arr is None:
                continue
            nan, inf, norms[name] = _float_stats(arr)
            if nan or inf:
                counts = " and ".join(f"{c} {what}" for c, what in ((nan, "NaN"), (inf, "inf")) if c)
                raise CheckpointError(f"{where}: {name} (float32 embeddings) holds {counts} of its "
                                      f"{int(np.prod(arr.shape))} values")
        ni = norms["item_codes"]
        pairs = [("item_codes item-to-item", "max item norm", ni)]
        if "user_codes" in norms:
            pairs.insert(0, ("user_codes / item_codes", "max user norm", norms["user_codes"]))
        for fields, what, x in pairs:
            if x * ni > FLOAT32_MAX:
                raise CheckpointError(f"{where}: {fields} scores can overflow float32 "
                                      f"({what} {x:.3g} x max item norm {ni:.3g} > {FLOAT32_MAX:.3g})")
        return
    top = dim * float(2**bits - 1) ** 2 / 4.0
    su, si = float(user_scale), float(item_scale)
    worst = top * max(si * si, su * si if user_codes is not None else 0.0)
    if worst > FLOAT32_MAX:
        raise CheckpointError(f"{where}: user_scale / item_scale scores can overflow float32 (scales {su:.3g}, "
                              f"{si:.3g}: up to {worst:.3g} over dim={dim} at {bits} bits > {FLOAT32_MAX:.3g})")


# ---------------------------------------------------------------- writing
def write_artifact(path, *, model: str, bits: int, dim: int, user_scale: float, item_scale: float,
                   user_ids: np.ndarray, item_ids: np.ndarray, train_indptr: np.ndarray,
                   train_indices: np.ndarray, item_planes: Optional[np.ndarray] = None,
                   user_planes: Optional[np.ndarray] = None, item_embeddings: Optional[np.ndarray] = None,
                   user_embeddings: Optional[np.ndarray] = None, data_fingerprint: str = "",
                   extra_meta: Optional[dict] = None) -> Path:
    """Write an artifact atomically from *packed* planes or float embeddings (see the module docstring).

    ``bits`` 1..8: ``item_planes`` / ``user_planes``, ``(bits, n, words)`` uint64 bit planes;
    ``bits == 32``: ``item_embeddings`` / ``user_embeddings``, ``(n, dim)`` float32. The
    user array may be ``None`` (an item-only index). Returns the path. Nothing is left at
    ``path`` on failure.

    Raises ``ValueError`` for inconsistent arguments (shapes, bits, CSR) and
    :class:`CheckpointError` for values whose scores would not be finite
    (:func:`check_finite_scores`); nothing is written then.
    """
    path = Path(path)
    is_float = bits == FLOAT_BITS
    if not is_float and not 1 <= bits <= 8:
        raise ValueError(f"bits must be 1..8 or 32, got {bits}")
    given, other = ("embeddings", "planes") if is_float else ("planes", "embeddings")
    item_codes = item_embeddings if is_float else item_planes
    user_codes = user_embeddings if is_float else user_planes
    if item_codes is None:
        raise ValueError(f"bits={bits}: give item_{given}")
    if (item_planes if is_float else item_embeddings) is not None or \
            (user_planes if is_float else user_embeddings) is not None:
        raise ValueError(f"bits={bits}: give {given}, not {other}")
    n_items = len(item_ids)
    n_users = len(user_ids)
    arrays = {
        "item_codes": np.ascontiguousarray(item_codes, dtype=np.float32 if is_float else np.uint64),
        "user_ids": np.ascontiguousarray(user_ids),
        "item_ids": np.ascontiguousarray(item_ids),
        "train_indptr": np.ascontiguousarray(train_indptr, dtype=np.int64),
        "train_indices": np.ascontiguousarray(
            train_indices, dtype=np.int32 if n_items < 2**31 else np.int64),
    }
    if user_codes is not None:
        arrays["user_codes"] = np.ascontiguousarray(user_codes, dtype=np.float32 if is_float else np.uint64)
    expect = (lambda n: (n, dim)) if is_float else (lambda n: (bits, n, words_per_row(dim)))
    if arrays["item_codes"].shape != expect(n_items):
        raise ValueError(f"item_codes has shape {arrays['item_codes'].shape}, expected {expect(n_items)}")
    if user_codes is not None and arrays["user_codes"].shape != expect(n_users):
        raise ValueError(f"user_codes has shape {arrays['user_codes'].shape}, expected {expect(n_users)}")
    if len(arrays["train_indptr"]) != n_users + 1:
        raise ValueError(f"train_indptr has {len(arrays['train_indptr'])} entries, expected {n_users + 1}")
    if arrays["train_indptr"][-1] != len(arrays["train_indices"]):
        raise ValueError("train_indptr[-1] does not match the number of train_indices")
    for name, arr in arrays.items():
        if arr.dtype.kind == "O":
            raise ValueError(f"{name}: object arrays cannot be stored")
        if arr.dtype.byteorder == ">":
            arrays[name] = arr.astype(arr.dtype.newbyteorder("<"))
    check_finite_scores(f"{path}: refusing to write the artifact", bits=bits, dim=dim,
                        user_codes=arrays.get("user_codes"), item_codes=arrays["item_codes"],
                        user_scale=user_scale, item_scale=item_scale)

    table, offset = {}, 0
    for name, arr in arrays.items():
        table[name] = {"dtype": arr.dtype.str, "shape": list(arr.shape), "offset": offset, "nbytes": arr.nbytes}
        offset = _align(offset + arr.nbytes)
    meta = {
        "format": "hqgnn-index",
        "format_version": FORMAT_VERSION,
        "created_by": _version(),
        "model": str(model),
        "bits": int(bits),
        "dim": int(dim),
        "words": 0 if is_float else words_per_row(dim),
        "pad_bits": 0 if is_float else pad_bits(dim),
        "layout": "float32" if is_float else LAYOUT,
        "n_users": int(n_users),
        "n_items": int(n_items),
        "user_scale": float(user_scale),
        "item_scale": float(item_scale),
        "data_fingerprint": str(data_fingerprint or ""),
        "extra": extra_meta or {},
        "arrays": table,
    }
    header = json.dumps(meta, sort_keys=True).encode("utf-8")
    payload_offset = _align(PREAMBLE.size + len(header))
    meta_pad = payload_offset - PREAMBLE.size - len(header)

    digest = hashlib.sha256()
    digest.update(header)
    digest.update(b"\0" * meta_pad)
    pos = 0
    for name, arr in arrays.items():
        gap = table[name]["offset"] - pos
        digest.update(b"\0" * gap)
        digest.update(memoryview(arr).cast("B") if arr.nbytes else b"")
        pos = table[name]["offset"] + arr.nbytes
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(header), digest.digest()))
            fh.write(header)
            fh.write(b"\0" * meta_pad)
            pos = 0
            for name, arr in arrays.items():
                fh.write(b"\0" * (table[name]["offset"] - pos))
                if arr.nbytes:
                    fh.write(memoryview(arr).cast("B"))
                pos = table[name]["offset"] + arr.nbytes
    return path


def export_from_arrays(path, *, model: str, bits: int, user_codes: Optional[np.ndarray], item_codes: np.ndarray,
                       user_scale: float = 1.0, item_scale: float = 1.0, user_ids=None, item_ids=None,
                       train_csr=None, data_fingerprint: str = "", extra_meta: Optional[dict] = None) -> dict:
    """Pack unsigned codes (or float32 embeddings) and write an artifact; returns a summary dict.

    ``user_codes`` / ``item_codes``: ``(n, d)`` unsigned codes in ``[0, 2^bits - 1]`` for
    ``bits`` in 1..8 (``QuantizedModel.export_codes``), or float32 embeddings with
    ``bits == 32`` (scales are then 1.0). ``user_ids`` / ``item_ids``: original ids
    (default ``0..n-1``). ``train_csr``: the training interactions (``scipy.sparse``
    matrix, or an ``(indptr, indices)`` pair), or ``None`` for no seen items.

    Raises ``ValueError`` for inconsistent arguments, and :class:`CheckpointError` (nothing
    written) for NaN / inf embeddings, scales that are not finite and > 0, or values whose
    scores could overflow float32 (:func:`check_finite_scores`).
    """
    item_codes = np.asarray(item_codes)
    n_items, dim = item_codes.shape
    if bits == FLOAT_BITS:
        with np.errstate(over="ignore"):  # values beyond float32 become inf: refused below, by name
            packed_items = item_codes.astype(np.float32)
            packed_users = None if user_codes is None else np.asarray(user_codes, dtype=np.float32)
        user_scale = item_scale = 1.0
    else:
        packed_items = pack_codes(item_codes, bits)
        packed_users = None if user_codes is None else pack_codes(user_codes, bits)
    if user_codes is not None and np.asarray(user_codes).shape[1] != dim:
        raise ValueError(f"user codes have dim {np.asarray(user_codes).shape[1]}, item codes {dim}")
    if user_codes is not None:
        n_users = len(user_codes)
    elif user_ids is not None:
        n_users = len(user_ids)
    elif train_csr is not None:
        n_users = (train_csr.shape[0] if hasattr(train_csr, "shape") else len(train_csr[0]) - 1)
    else:
        n_users = 0
    if train_csr is None:
        indptr, indices = np.zeros(n_users + 1, np.int64), np.zeros(0, np.int64)
    elif hasattr(train_csr, "tocsr"):
        m = train_csr.tocsr()
        if m.shape != (n_users, n_items):
            raise ValueError(f"train_csr has shape {m.shape}, expected ({n_users}, {n_items})")
        if not m.has_sorted_indices:
            m = m.sorted_indices()  # a sorted copy: the caller's matrix is left as it is
        indptr, indices = m.indptr, m.indices
    else:
        indptr, indices = (np.asarray(a) for a in train_csr)
    if len(indices) and (np.min(indices) < 0 or np.max(indices) >= n_items):
        raise ValueError(f"train_csr holds item indices outside 0 .. {n_items - 1}")
    uids = _id_array(user_ids, n_users, "user_ids")
    iids = _id_array(item_ids, n_items, "item_ids")
    stored = ({"item_embeddings": packed_items, "user_embeddings": packed_users} if bits == FLOAT_BITS
              else {"item_planes": packed_items, "user_planes": packed_users})
    out = write_artifact(path, model=model, bits=bits, dim=dim, **stored,
                         user_scale=user_scale, item_scale=item_scale, user_ids=uids, item_ids=iids,
                         train_indptr=indptr, train_indices=indices, data_fingerprint=data_fingerprint,
                         extra_meta=extra_meta)
    size = out.stat().st_size
    return {"path": str(out), "model": model, "bits": int(bits), "dim": int(dim), "n_users": int(n_users),
            "n_items": int(n_items), "bytes": int(size),
            "code_bytes": int(packed_items.nbytes + (0 if packed_users is None else packed_users.nbytes))}


# ---------------------------------------------------------------- reading
def read_header(path) -> tuple[dict, int]:
    """Validate the preamble and return ``(meta, payload_offset)`` (no checksum check)."""
    meta, payload_offset, _ = _read_preamble(Path(path))
    return meta, payload_offset


def _read_preamble(path: Path):
    if not path.exists():
        raise CheckpointError(f"{path}: artifact not found")
    if path.is_dir() and (path / "config.yaml").is_file():
        raise CheckpointError(f"{path}: a run folder, not an exported artifact: export it first "
                              f"(hqgnn export {path} OUT.hqgnn), or load it with hqgnn.Recommender.load")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(PREAMBLE.size)
        if head[: len(MAGIC)] != MAGIC[: len(head)]:
            raise CheckpointError(f"{path}: not an hqgnn index artifact (bad magic)")
        if len(head) < PREAMBLE.size:
            raise CheckpointError(f"{path}: truncated artifact ({size} bytes)")
        _, version, header_len, digest = PREAMBLE.unpack(head)
        if version > FORMAT_VERSION:
            raise CheckpointError(f"{path}: artifact format version {version} is newer than this hqgnn reads "
                                  f"(up to {FORMAT_VERSION}); upgrade hqgnn")
        if version < 1:
            raise CheckpointError(f"{path}: corrupt artifact (format version {version})")
        if PREAMBLE.size + header_len > size:
            raise CheckpointError(f"{path}: truncated artifact ({size} bytes, the header needs "
                                  f"{PREAMBLE.size + header_len})")
        header = fh.read(header_len)
    try:
        meta = json.loads(header.decode("utf-8"))
        payload_offset = _align(PREAMBLE.size + header_len)
        payload_size = max((a["offset"] + a["nbytes"] for a in meta["arrays"].values()), default=0)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CheckpointError(f"{path}: corrupt artifact (unreadable header)") from None
    if size < payload_offset + payload_size:
        raise CheckpointError(f"{path}: truncated artifact ({size} bytes, expected {payload_offset + payload_size})")
    if size > payload_offset + payload_size:
        raise CheckpointError(f"{path}: corrupt artifact ({size - payload_offset - payload_size} trailing bytes)")
    return meta, payload_offset, digest


def _checksum(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(PREAMBLE.size)
        while chunk := fh.read(_HASH_CHUNK):
            h.update(chunk)
    return h.digest()


def read_artifact(path, mmap: bool = True, bits: Optional[int] = None, verify: bool = True) -> Artifact:
    """Read and validate an artifact; arrays are memory-mapped read-only when ``mmap``.

    Checks, in order: the file exists, magic, format version (newer raises), sizes
    (truncation), the sha256 checksum (``verify``; corruption), the header fields, finite
    scores (:func:`check_finite_scores`: NaN / inf embeddings, bad scales, overflow), and
    ``bits`` when given (a model exported at another bit width raises). Raises
    :class:`~hqgnn.errors.CheckpointError` naming the file and the problem.
    """
    path = Path(path)
    meta, payload_offset, digest = _read_preamble(path)
    if verify and _checksum(path) != digest:
        raise CheckpointError(f"{path}: corrupt artifact (sha256 checksum mismatch)")
    try:
        stored_bits, dim = int(meta["bits"]), int(meta["dim"])
        table = meta["arrays"]
        arrays = {}
        for name, spec in table.items():
            dtype, shape = np.dtype(spec["dtype"]), tuple(int(s) for s in spec["shape"])
            if dtype.hasobject or int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != int(spec["nbytes"]):
                raise ValueError(name)
            if spec["nbytes"] == 0:
                arrays[name] = np.zeros(shape, dtype)
            elif mmap:
                arrays[name] = np.memmap(path, dtype=dtype, mode="r", offset=payload_offset + spec["offset"],
                                         shape=shape)
            else:
                with open(path, "rb") as fh:
                    fh.seek(payload_offset + spec["offset"])
                    arrays[name] = np.frombuffer(fh.read(spec["nbytes"]), dtype=dtype).reshape(shape).copy()
        art = Artifact(
            path=path, model=str(meta["model"]), bits=stored_bits, dim=dim,
            user_scale=float(meta["user_scale"]), item_scale=float(meta["item_scale"]),
            **({"user_embeddings": arrays.get("user_codes"), "item_embeddings": arrays["item_codes"]}
               if stored_bits == FLOAT_BITS else
               {"user_planes": arrays.get("user_codes"), "item_planes": arrays["item_codes"]}),
            user_ids=arrays["user_ids"], item_ids=arrays["item_ids"],
            train_indptr=arrays["train_indptr"], train_indices=arrays["train_indices"],
            data_fingerprint=str(meta.get("data_fingerprint", "")), extra=dict(meta.get("extra") or {}),
            format_version=int(meta["format_version"]), meta=meta,
        )
    except (KeyError, ValueError, TypeError):
        raise CheckpointError(f"{path}: corrupt artifact (inconsistent header)") from None
    _check_consistent(art)
    check_finite_scores(f"{path}: unusable artifact", bits=art.bits, dim=art.dim, user_codes=art.stored("user"),
                        item_codes=art.stored("item"), user_scale=art.user_scale, item_scale=art.item_scale)
    if bits is not None and int(bits) != stored_bits:
        what = "float32 embeddings" if stored_bits == FLOAT_BITS else f"{stored_bits}-bit codes"
        raise CheckpointError(f"{path}: artifact holds {what}, but bits={bits} was requested")
    return art


def _check_consistent(art: Artifact) -> None:
    p = art.path
    if art.bits != FLOAT_BITS and not 1 <= art.bits <= 8:
        raise CheckpointError(f"{p}: corrupt artifact (bits={art.bits})")
    expect = ((art.n_items, art.dim) if art.is_float else (art.bits, art.n_items, words_per_row(art.dim)))
    items, users = art.stored("item"), art.stored("user")
    if items.shape != expect:
        raise CheckpointError(f"{p}: corrupt artifact (item_codes shape {items.shape}, expected {expect})")
    if users is not None:
        expect_u = ((art.n_users, art.dim) if art.is_float else (art.bits, art.n_users, words_per_row(art.dim)))
        if users.shape != expect_u:
            raise CheckpointError(f"{p}: corrupt artifact (user_codes shape {users.shape}, "
                                  f"expected {expect_u})")
    if len(art.train_indptr) != art.n_users + 1 or int(art.train_indptr[-1]) != len(art.train_indices):
        raise CheckpointError(f"{p}: corrupt artifact (training CSR does not match {art.n_users} users)")
