import gzip
import os
import pathlib
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pynn.datasets import load_digits, load_mnist


def test_digits_shapes_dtypes_ranges_and_classes():
    x, y = load_digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32 and x.flags.c_contiguous
    assert y.shape == (1797,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    # pixels are counts 0..16 scaled by 1/16: every value is a multiple of 1/16
    np.testing.assert_array_equal(x * 16, np.round(x * 16))
    np.testing.assert_array_equal(np.bincount(y), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
    # the first sample is the UCI file's first row, a zero
    assert y[0] == 0 and x[0].reshape(8, 8)[0].tolist() == [0, 0, 5 / 16, 13 / 16, 9 / 16, 1 / 16, 0, 0]


def test_digits_returns_fresh_arrays():
    x, _ = load_digits()
    x[:] = 7
    assert load_digits()[0].max() == 1.0


# -- MNIST from synthetic idx files --------------------------------------------
def idx_bytes(array, magic=None):
    array = np.asarray(array, dtype=np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.tobytes()


NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def synthetic(rows=28, columns=28, train=7, test=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (train, rows, columns)), rng.integers(0, 10, train),
            rng.integers(0, 256, (test, rows, columns)), rng.integers(0, 10, test))


def write_idx_folder(folder, arrays, compress, overrides=None):
    for name, array in zip(NAMES, arrays):
        data = (overrides or {}).get(name, idx_bytes(array))
        if compress:
            with gzip.open(folder / (name + ".gz"), "wb") as file:
                file.write(data)
        else:
            (folder / name).write_bytes(data)


def check_split(split, images, labels):
    x, y = split
    assert x.dtype == np.float32 and x.shape == (len(images), 1) + images.shape[1:]
    assert y.dtype == np.int64
    np.testing.assert_array_equal(x[:, 0], images.astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(y, labels)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, compress):
    arrays = synthetic()
    write_idx_folder(tmp_path, arrays, compress)
    train, test = load_mnist(tmp_path)
    check_split(train, arrays[0], arrays[1])
    check_split(test, arrays[2], arrays[3])
    assert train[0].min() >= 0.0 and train[0].max() <= 1.0


def test_idx_dotted_names_and_other_image_sizes(tmp_path):
    arrays = synthetic(rows=5, columns=3)
    for name, array in zip(NAMES, arrays):
        (tmp_path / name.replace("-idx", ".idx")).write_bytes(idx_bytes(array))
    (train_x, _), (test_x, _) = load_mnist(str(tmp_path))
    assert train_x.shape == (7, 1, 5, 3) and test_x.shape == (3, 1, 5, 3)


def test_npz_file_and_folder(tmp_path):
    x_train, y_train, x_test, y_test = synthetic()
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=x_train.astype(np.uint8), y_train=y_train.astype(np.uint8),
             x_test=x_test.astype(np.uint8), y_test=y_test.astype(np.uint8))
    for source in (path, tmp_path):
        train, test = load_mnist(source)
        check_split(train, x_train, y_train)
        check_split(test, x_test, y_test)


def test_npz_bad_contents_name_the_file(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=np.zeros((2, 28, 28), np.uint8), y_train=np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match=r"bad\.npz.*lacks.*x_test"):
        load_mnist(path)
    np.savez(path, x_train=np.zeros((2, 28, 28), np.float64), y_train=np.zeros(2, np.uint8),
             x_test=np.zeros((1, 28, 28), np.uint8), y_test=np.zeros(1, np.uint8))
    with pytest.raises(ValueError, match=r"bad\.npz.*x_train must be uint8"):
        load_mnist(path)
    np.savez(path, x_train=np.zeros((2, 28, 28), np.uint8), y_train=np.zeros(3, np.uint8),
             x_test=np.zeros((1, 28, 28), np.uint8), y_test=np.zeros(1, np.uint8))
    with pytest.raises(ValueError, match=r"bad\.npz.*y_train must be integer \[2\]"):
        load_mnist(path)
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match=r"bad\.npz"):
        load_mnist(path)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.*never downloads"):
        load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a folder"):
        load_mnist(tmp_path / "nowhere")


@pytest.mark.parametrize("compress", [False, True])
def test_bad_magic_number_names_the_file(tmp_path, compress):
    arrays = synthetic()
    bad = idx_bytes(arrays[1], magic=0x0803)  # labels claiming to be images
    write_idx_folder(tmp_path, arrays, compress, {"train-labels-idx1-ubyte": bad})
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte.*magic number 0x00000803.*0x00000801"):
        load_mnist(tmp_path)


def test_wrong_element_type_is_a_bad_magic(tmp_path):
    arrays = synthetic()
    write_idx_folder(tmp_path, arrays, False,
                     {"t10k-images-idx3-ubyte": idx_bytes(arrays[2], magic=0x0D03)})  # float32 code
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.*magic number 0x00000d03"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("cut", [0, 3, 9, 16, 100])
def test_truncated_files_name_the_file(tmp_path, compress, cut):
    arrays = synthetic()
    whole = idx_bytes(arrays[0])
    write_idx_folder(tmp_path, arrays, compress, {"train-images-idx3-ubyte": whole[:cut]})
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*(truncated|only)"):
        load_mnist(tmp_path)


def test_trailing_bytes_and_absurd_header(tmp_path):
    arrays = synthetic()
    write_idx_folder(tmp_path, arrays, False,
                     {"t10k-labels-idx1-ubyte": idx_bytes(arrays[3]) + b"\0"})
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.*trailing bytes"):
        load_mnist(tmp_path)
    # a header promising 2**32-1 images of 2**32-1 pixels must fail without allocating them
    huge = (0x0803).to_bytes(4, "big") + b"\xff" * 12 + b"\0" * 10
    for compress in (False, True):
        folder = tmp_path / str(compress)
        folder.mkdir()
        write_idx_folder(folder, arrays, compress, {"train-images-idx3-ubyte": huge})
        with pytest.raises(ValueError, match="train-images-idx3-ubyte.*only 10 bytes"):
            load_mnist(folder)


def test_mismatched_counts_name_both_files(tmp_path):
    arrays = list(synthetic())
    arrays[1] = arrays[1][:-1]
    write_idx_folder(tmp_path, arrays, False)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte holds 7 images but .*"
                                         "train-labels-idx1-ubyte holds 6 labels"):
        load_mnist(tmp_path)


def test_corrupt_gzip_names_the_file(tmp_path):
    arrays = synthetic()
    write_idx_folder(tmp_path, arrays, False)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
        load_mnist(tmp_path)


# -- hostile idx files: every outcome is data or a ValueError naming the file --------
@settings(max_examples=400, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_idx_files(tmp_path, data):
    arrays = synthetic(rows=4, columns=3)
    name = data.draw(st.sampled_from(NAMES))
    content = bytearray(idx_bytes(arrays[NAMES.index(name)]))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(content) - 1))
        content[position] = data.draw(st.sampled_from([0, 1, 3, 8, 0x7F, 0xFF]))
    content = bytes(content[:data.draw(st.integers(0, len(content)))])
    compress = data.draw(st.booleans())
    folder = pathlib.Path(tempfile.mkdtemp(dir=tmp_path))
    write_idx_folder(folder, arrays, compress, {name: content})
    try:
        (x_train, y_train), (x_test, y_test) = load_mnist(folder)
    except ValueError as error:
        assert name in str(error)
        return
    assert x_train.shape[0] == y_train.shape[0] and x_test.shape[0] == y_test.shape[0]
    assert x_train.dtype == np.float32 and 0.0 <= x_train.min() and x_train.max() <= 1.0
