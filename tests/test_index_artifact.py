"""The exported artifact: round trip of every field, atomic writes, and damaged files."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import hqgnn.storage
from hqgnn.errors import CheckpointError
from hqgnn.index import FloatIndex, QuantizedIndex, export_from_arrays, open_index, read_artifact
from hqgnn.index import artifact as A

N_USERS, N_ITEMS, DIM = 40, 90, 70  # DIM not a multiple of 64: two words, 58 padding bits


def export(path, bits=3, string_ids=True, **changes):
    rng = np.random.default_rng(bits)
    if bits == 32:
        users = rng.standard_normal((N_USERS, DIM)).astype(np.float32)
        items = rng.standard_normal((N_ITEMS, DIM)).astype(np.float32)
    else:
        users = rng.integers(0, 2**bits, (N_USERS, DIM)).astype(np.uint8)
        items = rng.integers(0, 2**bits, (N_ITEMS, DIM)).astype(np.uint8)
    train = sp.random(N_USERS, N_ITEMS, density=0.1, format="csr", random_state=bits, dtype=np.float32)
    kwargs = dict(model="hqgnn", bits=bits, user_codes=users, item_codes=items, user_scale=0.25, item_scale=0.5,
                  user_ids=np.array([f"u{i}" for i in range(N_USERS)]) if string_ids else np.arange(N_USERS) + 7,
                  item_ids=np.arange(N_ITEMS) * 2, train_csr=train, data_fingerprint="abc123",
                  extra_meta={"epochs": 3, "note": "test"})
    kwargs.update(changes)
    info = export_from_arrays(path, **kwargs)
    return info, users, items, train, kwargs


@pytest.mark.parametrize("bits", [1, 3, 8, 32])
def test_round_trip_every_field(tmp_path, bits):
    path = tmp_path / "model.hqi"
    info, users, items, train, kw = export(path, bits)
    assert info["bytes"] == path.stat().st_size and info["bits"] == bits
    for mmap in (True, False):
        art = read_artifact(path, mmap=mmap)
        assert (art.model, art.bits, art.dim, art.n_users, art.n_items) == ("hqgnn", bits, DIM, N_USERS, N_ITEMS)
        assert art.data_fingerprint == "abc123" and art.extra == {"epochs": 3, "note": "test"}
        assert art.format_version == A.FORMAT_VERSION
        if bits == 32:
            assert (art.user_scale, art.item_scale) == (1.0, 1.0)
            assert art.pad_bits == 0
        else:
            assert (art.user_scale, art.item_scale) == (0.25, 0.5)
            assert art.words == 2 and art.pad_bits == 128 - DIM and art.meta["pad_bits"] == 128 - DIM
            assert art.item_planes.shape == (bits, N_ITEMS, 2) and art.item_planes.dtype == np.uint64
        # planes are packed, codes unpacked; a float artifact holds embeddings instead
        got_users = art.user_embeddings if bits == 32 else art.user_codes()
        got_items = art.item_embeddings if bits == 32 else art.item_codes()
        assert np.array_equal(got_users, users)
        assert np.array_equal(got_items, items)
        assert list(art.user_ids) == list(kw["user_ids"]) and list(art.item_ids) == list(kw["item_ids"])
        assert np.array_equal(art.train_indptr, train.indptr) and np.array_equal(art.train_indices, train.indices)
        assert (art.train_csr() != (train > 0).astype(np.float32)).nnz == 0
        assert isinstance(art.stored("item"), np.memmap) == mmap


def test_index_save_load_search_identical(tmp_path):
    path = tmp_path / "a.hqi"
    export(path, 2, string_ids=False)
    index = QuantizedIndex.from_artifact(path)
    before = index.search(k=10, exclude="train")
    index.save(tmp_path / "b.hqi")
    again = QuantizedIndex.load(tmp_path / "b.hqi")
    after = again.search(k=10, exclude="train")
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    assert again.recommend([7], k=3).items.shape == (1, 3)
    float_path = tmp_path / "f.hqi"
    export(float_path, 32)
    assert isinstance(open_index(float_path), FloatIndex)
    assert isinstance(open_index(path), QuantizedIndex)


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "model.hqi"
    export(path, 1)
    good = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hqgnn.storage.os, "replace", boom)
    with pytest.raises(OSError):
        export(path, 4)
    monkeypatch.undo()
    assert path.read_bytes() == good  # the old artifact is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.hqi"]  # no temporary left over
    with pytest.raises(ValueError):
        export(tmp_path / "new.hqi", 1, item_codes=np.full((N_ITEMS, DIM), 2, np.uint8))  # codes out of range
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.hqi"]


def test_missing_truncated_corrupt_newer(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_artifact(tmp_path / "nope.hqi")
    path = tmp_path / "model.hqi"
    export(path, 3)
    data = path.read_bytes()

    def expect(blob, pattern):
        bad = tmp_path / "bad.hqi"
        bad.write_bytes(blob)
        with pytest.raises(CheckpointError, match=pattern) as err:
            read_artifact(bad)
        message = str(err.value)
        assert str(bad) in message and "\n" not in message

    for cut in (0, 5, 30, 200, len(data) // 2, len(data) - 1):
        expect(data[:cut], "truncated")
    flipped = bytearray(data)
    flipped[-100] ^= 0x01  # a code byte
    expect(bytes(flipped), "checksum")
    header_flip = bytearray(data)
    header_flip[60] ^= 0x20  # a header byte
    expect(bytes(header_flip), "corrupt")
    expect(b"PK\x03\x04" + data[4:], "bad magic")
    newer = bytearray(data)
    newer[8:12] = struct.pack("<I", A.FORMAT_VERSION + 1)
    expect(bytes(newer), "newer")
    expect(data + b"\0", "trailing")


def test_wrong_bits_requested(tmp_path):
    path = tmp_path / "model.hqi"
    export(path, 3)
    with pytest.raises(CheckpointError, match="3-bit codes, but bits=1"):
        read_artifact(path, bits=1)
    with pytest.raises(CheckpointError, match="bits=4"):
        QuantizedIndex.from_artifact(path, bits=4)
    with pytest.raises(CheckpointError, match="FloatIndex|QuantizedIndex"):
        FloatIndex.from_artifact(path)
    assert QuantizedIndex.from_artifact(path, bits=3).bits == 3


def test_header_is_plain_json(tmp_path):
    path = tmp_path / "model.hqi"
    export(path, 1)
    raw = path.read_bytes()
    magic, version, header_len, _ = A.PREAMBLE.unpack(raw[: A.PREAMBLE.size])
    meta = json.loads(raw[A.PREAMBLE.size: A.PREAMBLE.size + header_len])
    assert magic == A.MAGIC and version == 1 and meta["layout"] == "bitplanes-u64le"
    assert set(meta["arrays"]) == {"user_codes", "item_codes", "user_ids", "item_ids", "train_indptr",
                                   "train_indices"}
    assert all(spec["offset"] % 64 == 0 for spec in meta["arrays"].values())


# ---------------------------------------------------------------- finite scores
def reseal(path, name, index, value):
    """Write ``value`` into element ``index`` of array ``name`` and recompute the sha256: a file
    whose checksum is valid but whose values are not (what a buggy writer would leave)."""
    import hashlib

    meta, payload = A.read_header(path)
    spec = meta["arrays"][name]
    dtype = np.dtype(spec["dtype"])
    raw = bytearray(path.read_bytes())
    at = payload + spec["offset"] + index * dtype.itemsize
    raw[at: at + dtype.itemsize] = np.array([value], dtype=dtype).tobytes()
    raw[A.PREAMBLE.size - 32: A.PREAMBLE.size] = hashlib.sha256(bytes(raw[A.PREAMBLE.size:])).digest()
    path.write_bytes(bytes(raw))


def _float_table(n, value=None):
    rng = np.random.default_rng(n)
    arr = rng.standard_normal((n, DIM)).astype(np.float32)
    if value is not None:
        arr[n // 2, 3] = value
    return arr


@pytest.mark.parametrize("bits, changes, message", [
    (32, {"user_codes": _float_table(N_USERS, np.nan)},
     "user_codes (float32 embeddings) holds 1 NaN of its 2800 values"),
    (32, {"item_codes": _float_table(N_ITEMS, -np.inf)}, "item_codes (float32 embeddings) holds 1 inf of its 6300 values"),
    (32, {"item_codes": np.full((N_ITEMS, DIM), 1e39, np.float64)},  # beyond float32: inf once stored
     "item_codes (float32 embeddings) holds 6300 inf of its 6300 values"),
    (32, {"item_codes": np.full((N_ITEMS, DIM), 3e20, np.float32)},  # finite, but item-to-item 3e20^2 * 70 is not
     "item_codes item-to-item scores can overflow float32 (max item norm 2.51e+21 x max item norm 2.51e+21 > 3.4e+38)"),
    (32, {"user_codes": _float_table(N_USERS) * 1e19, "item_codes": _float_table(N_ITEMS) * 1e19},
     "user_codes / item_codes scores can overflow float32 (max user norm"),
    (32, {"user_codes": None, "item_codes": _float_table(N_ITEMS) * 3e18},
     "item_codes item-to-item scores can overflow float32 (max item norm"),
    (3, {"user_scale": float("inf")}, "user_scale is inf; a scale must be a finite number > 0"),
    (3, {"item_scale": float("nan")}, "item_scale is nan; a scale must be a finite number > 0"),
    (1, {"item_scale": 0.0}, "item_scale is 0.0; a scale must be a finite number > 0"),
    (8, {"user_scale": -0.5}, "user_scale is -0.5"),
    (8, {"user_scale": 1e17, "item_scale": 1e17}, "user_scale / item_scale scores can overflow float32"),
])
def test_export_refuses_nonfinite_scores_and_writes_nothing(tmp_path, bits, changes, message):
    path = tmp_path / "model.hqi"
    with pytest.raises(CheckpointError) as err:
        export(path, bits, **changes)
    msg = str(err.value)
    assert msg.startswith(f"{path}: refusing to write the artifact: ") and message in msg and "\n" not in msg, msg
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left
    export(path, bits)  # the same call with sane values writes
    good = path.read_bytes()
    with pytest.raises(CheckpointError):
        export(path, bits, **changes)
    assert path.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["model.hqi"]


def test_read_refuses_a_sealed_artifact_with_nan_or_bad_scales(tmp_path, monkeypatch):
    path = tmp_path / "model.hqi"
    export(path, 32)
    reseal(path, "item_codes", 17, np.nan)
    for mmap in (True, False):
        with pytest.raises(CheckpointError) as err:
            read_artifact(path, mmap=mmap)
        assert str(err.value) == f"{path}: unusable artifact: item_codes (float32 embeddings) holds 1 NaN of its 6300 values"
    with pytest.raises(CheckpointError, match="item_codes .* holds 1 NaN"):
        open_index(path)
    export(path, 32)
    reseal(path, "user_codes", 0, 3e38)  # finite, but its scores overflow float32
    with pytest.raises(CheckpointError, match="unusable artifact: user_codes / item_codes scores can overflow float32"):
        read_artifact(path)
    # scales live in the header: write one with a bad scale past the writer's check
    for scale, shown in ((float("nan"), "nan"), (float("inf"), "inf"), (0.0, "0.0")):
        monkeypatch.setattr(A, "check_finite_scores", lambda *args, **kwargs: None)
        export(path, 2, item_scale=scale)
        monkeypatch.undo()
        with pytest.raises(CheckpointError) as err:
            QuantizedIndex.from_artifact(path)
        assert str(err.value) == f"{path}: unusable artifact: item_scale is {shown}; a scale must be a finite number > 0"


def test_planes_codes_and_embeddings_are_named_apart(tmp_path):
    q_path, f_path = tmp_path / "q.hqi", tmp_path / "f.hqi"
    export(q_path, 2)
    export(f_path, 32)
    q, f = read_artifact(q_path), read_artifact(f_path)
    assert q.item_embeddings is None and q.user_embeddings is None and q.stored("user") is q.user_planes
    assert f.item_planes is None and f.user_planes is None and f.stored("item") is f.item_embeddings
    assert q.item_codes().shape == (N_ITEMS, DIM) and q.item_codes().dtype == np.uint8
    with pytest.raises(ValueError, match="embeddings, not codes"):
        f.item_codes()
    with pytest.raises(ValueError, match="give planes"):
        A.write_artifact(tmp_path / "x.hqi", model="m", bits=2, dim=DIM, user_scale=1.0, item_scale=1.0,
                         user_ids=np.arange(0), item_ids=np.arange(N_ITEMS), train_indptr=np.zeros(1, np.int64),
                         train_indices=np.zeros(0, np.int64), item_planes=q.item_planes,
                         item_embeddings=f.item_embeddings)


# Written by the code of commit f81157f (format version 1): 5 users x 12 items, dim 70, string
# user ids, integer item ids. Files of the current format stay readable, with the same answers.
V1_FILES = Path(__file__).parent / "data"


@pytest.mark.parametrize("name, bits", [("v1-3bit.hqgnn", 3), ("v1-float.hqgnn", 32)])
def test_version_1_artifacts_written_before_still_load_and_answer_alike(name, bits):
    expected = json.loads((V1_FILES / "v1-expected.json").read_text())[name]
    art = read_artifact(V1_FILES / name)
    assert (art.format_version, art.bits, art.dim, art.n_users, art.n_items) == (1, bits, 70, 5, 12)
    index = open_index(V1_FILES / name)
    items, raw = index.search(k=6, exclude="train")
    assert items.tolist() == expected["items"] and np.asarray(raw).tolist() == expected["raw"]
    rec = index.recommend(["u0", "u4"], k=4)
    assert rec.items.tolist() == expected["rec_items"] and rec.scores.tolist() == expected["rec_values"]
