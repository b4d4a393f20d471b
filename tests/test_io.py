import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import pynn
from pynn.io import MAX_HEADER_BYTES, ModelFormatError, read_tensors, save_tensors, write_atomic


def sample_tensors(seed=0):
    rng = np.random.default_rng(seed)
    return {"0.weight": rng.normal(size=(5, 3)).astype(np.float32),
            "0.bias": rng.normal(size=5).astype(np.float32),
            "1.num_batches_tracked": np.array(7, np.int64),
            "2.half": rng.normal(size=(2, 2)).astype(np.float16)}


# -- the tensor file ------------------------------------------------------------
def test_tensors_round_trip_bit_for_bit(tmp_path):
    path = tmp_path / "t.safetensors"
    tensors = sample_tensors()
    save_tensors(path, tensors, {"note": "x"})
    loaded, metadata = read_tensors(path)
    assert metadata == {"note": "x"}
    assert set(loaded) == set(tensors)
    for name, array in tensors.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape
        assert loaded[name].tobytes() == array.tobytes()
    assert os.listdir(tmp_path) == ["t.safetensors"]  # no temporary left behind


def test_write_atomic_replaces_and_cleans_up_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "file"
    write_atomic(path, b"old")
    write_atomic(path, b"new contents")
    assert path.read_bytes() == b"new contents"

    def failing_fsync(descriptor):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, b"never")
    assert path.read_bytes() == b"new contents"
    assert os.listdir(tmp_path) == ["file"]


def write_raw(path, header, data=b"", length=None):
    raw = json.dumps(header).encode() if isinstance(header, dict) else header
    length = len(raw) if length is None else length
    path.write_bytes(length.to_bytes(8, "little") + raw + data)
    return path


F32_PAIR = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize("header,data,length,message", [
    (b"", b"", None, None),  # the bare length field: an empty header is not JSON
    (b"{}", b"", 10**6, "bad header length 1000000"),
    (b"{}", b"", MAX_HEADER_BYTES + 1, "bad header length"),
    (b"{}", b"", 2**64 - 1, "bad header length"),
    (b"\xff\xfe{}", b"", None, "not UTF-8"),
    (b"{\"a\": ", b"", None, "header is not valid JSON"),
    (b"[1, 2]", b"", None, "must be a JSON object"),
    (b"{\"a\": 1, \"a\": 2}", b"", None, "duplicate keys"),
    (b"[" * 100000 + b"]" * 100000, b"", None, "not valid JSON"),
    (F32_PAIR, b"\0" * 4, None, "outside the 4-byte data section"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None,
     r"F32 \[3\], 12 bytes, but its data_offsets span 8"),
    ({"a": {"dtype": "F64", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "16 bytes"),
    ({"a": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 8, None, "unsupported dtype 'BF16'"),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "non-negative"),
    ({"a": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, b"\0" * 8, None, "span 8"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": 1}}, b"\0" * 8, None, "exactly the fields"),
    (F32_PAIR, b"\0" * 12, None, "cover 8 bytes of a 12-byte"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, None, "overlaps"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, None, "gap at byte 0"),
    ({"__metadata__": {"k": 1}}, b"", None, "__metadata__ must map strings to strings"),
])
def test_malformed_files_raise_model_format_error(tmp_path, header, data, length, message):
    path = write_raw(tmp_path / "bad.safetensors", header, data, length)
    with pytest.raises(ModelFormatError, match=message) as caught:
        read_tensors(path)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_short_and_missing_files(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(b"\x05\0\0")
    with pytest.raises(ModelFormatError, match="truncated: 3 bytes"):
        read_tensors(path)
    with pytest.raises(FileNotFoundError):
        read_tensors(tmp_path / "absent")


# -- a crash while saving never leaves a damaged file -----------------------------------
SAVER = textwrap.dedent("""
    import sys
    import numpy as np
    from pynn.io import save_tensors

    path = sys.argv[1]
    # two versions of different sizes, so a torn write could not pass for either
    versions = [{"w": np.full(n, value, np.float32)} for n, value in ((150_000, 1.0), (90_000, 2.0))]
    count = 0
    while True:
        save_tensors(path, versions[count % 2], {"version": str(count % 2)})
        count += 1
        if count == 1:
            print("saving", flush=True)
""")


def test_sigkill_while_saving_never_leaves_an_unreadable_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_tensors(path, {"w": np.zeros(3, np.float32)}, {"version": "initial"})
    rng = np.random.default_rng(0)
    expected = {"initial": (3, 0.0), "0": (150_000, 1.0), "1": (90_000, 2.0)}
    seen = set()
    for _ in range(50):
        child = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE)
        try:
            assert child.stdout.readline() == b"saving\n"
            time.sleep(rng.uniform(0.0, 0.02))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
        tensors, metadata = read_tensors(path)
        size, value = expected[metadata["version"]]
        assert tensors["w"].shape == (size,) and np.all(tensors["w"] == value)
        seen.add(metadata["version"])
    assert seen >= {"0", "1"}  # both versions were caught as the last complete save


def test_public_names():
    assert pynn.ModelFormatError is ModelFormatError and issubclass(ModelFormatError, ValueError)
    assert callable(pynn.load) and callable(pynn.save_checkpoint) and callable(pynn.load_checkpoint)
