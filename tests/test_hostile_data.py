"""Hostile dataset files: a damaged or inconsistent IDX folder is refused in one line naming the
file (or folder) and the problem, through the Python API and the command line, before anything
is compiled or written; a chosen folder (--data-dir, $JAXBYZ_DATA_DIR) is never replaced by
another copy; valid small folders still load."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hostile import refusal

from jaxbyz import data, train

STEMS = data.IDX_FILES
TRAIN_X, TRAIN_Y = STEMS["train_x"], STEMS["train_y"]
TEST_X, TEST_Y = STEMS["test_x"], STEMS["test_y"]
N_TRAIN, N_TEST = 20, 10


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No environment variable, an empty cache, no network, no tensorflow-datasets fallback."""
    monkeypatch.delenv("JAXBYZ_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "_download_idx", _no_network)
    monkeypatch.setattr(data, "load_tfds_dataset", _no_tfds)


def _no_network(*args, **kwargs):
    raise OSError("tests never touch the network")


def _no_tfds(*args, **kwargs):
    raise data.DatasetNotFoundError("tensorflow-datasets is not used in these tests")


# --------------------------------------------------------------------------------------------- #
# Building IDX files


def idx_bytes(array: np.ndarray, code: int = 0x08, shape: tuple[int, ...] | None = None) -> bytes:
    """An IDX file holding ``array`` (stored big-endian as type ``code``); ``shape`` overrides
    the dimensions its header announces."""
    shape = array.shape if shape is None else shape
    dtype = np.dtype(data.IDX_DTYPES[code][1]) if code in data.IDX_DTYPES else np.dtype("u1")
    header = struct.pack(">HBB", 0, code, len(shape)) + struct.pack(f">{len(shape)}I", *shape)
    return header + array.astype(dtype).tobytes()


def arrays(n_train: int = N_TRAIN, n_test: int = N_TEST) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "train_x": rng.integers(0, 256, (n_train, 28, 28)).astype(np.uint8),
        "train_y": rng.integers(0, 10, n_train).astype(np.uint8),
        "test_x": rng.integers(0, 256, (n_test, 28, 28)).astype(np.uint8),
        "test_y": rng.integers(0, 10, n_test).astype(np.uint8),
    }


def file_name(stem: str, gz: bool) -> str:
    return f"{stem}.gz" if gz else stem


def put(folder: Path, stem: str, payload: bytes, gz: bool) -> Path:
    """Write one IDX file (gzipped when ``gz``), replacing any version of it."""
    for old in (folder / stem, folder / f"{stem}.gz"):
        old.unlink(missing_ok=True)
    path = folder / file_name(stem, gz)
    path.write_bytes(gzip.compress(payload, mtime=0) if gz else payload)
    return path


def valid_folder(folder: Path, gz: bool, values: dict[str, np.ndarray] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    values = arrays() if values is None else values
    for key, stem in STEMS.items():
        put(folder, stem, idx_bytes(values[key]), gz)
    return folder


# --------------------------------------------------------------------------------------------- #
# The damages: each takes a valid folder and its format (gz) and returns (the file or folder the
# message must name, what it must say, the error type)


def empty_folder(folder, gz):
    for path in folder.iterdir():
        path.unlink()
    return folder, [f"{TRAIN_X}[.gz]", f"{TEST_Y}[.gz]", "lacks"], data.DatasetNotFoundError


def three_of_four(folder, gz):
    (folder / file_name(TEST_Y, gz)).unlink()
    return folder, [f"lacks {TEST_Y}[.gz] ("], data.DatasetNotFoundError


def missing_folder(folder, gz):
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    return folder, ["the folder does not exist"], data.DatasetNotFoundError


def file_as_folder(folder, gz):
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    folder.write_text("not a folder\n")
    return folder, ["it is not a folder"], data.DatasetNotFoundError


def folder_as_file(folder, gz):
    (folder / file_name(TRAIN_X, gz)).unlink()
    (folder / file_name(TRAIN_X, gz)).mkdir()
    return folder, [f"{file_name(TRAIN_X, gz)} (not a file)"], data.DatasetNotFoundError


def dangling_link(folder, gz):
    (folder / file_name(TRAIN_Y, gz)).unlink()
    (folder / file_name(TRAIN_Y, gz)).symlink_to(folder / "gone")
    return folder, [f"lacks {TRAIN_Y}[.gz]"], data.DatasetNotFoundError


def plain_text_gz(folder, gz):
    path = folder / f"{TRAIN_X}.gz"
    (folder / TRAIN_X).unlink(missing_ok=True)
    path.write_text("<html>404 Not Found</html>\n")
    return path, ["not a gzip file despite its .gz name", "<htm"], data.DatasetError


def empty_gz(folder, gz):
    path = folder / f"{TEST_X}.gz"
    (folder / TEST_X).unlink(missing_ok=True)
    path.write_bytes(b"")
    return path, ["not a gzip file despite its .gz name (it is empty)"], data.DatasetError


def truncated_gzip(folder, gz):
    path = put(folder, TRAIN_X, idx_bytes(arrays()["train_x"]), gz=True)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path, ["truncated gzip stream"], data.DatasetError


def truncated_gzip_labels(folder, gz):
    path = put(folder, TEST_Y, idx_bytes(arrays()["test_y"]), gz=True)
    path.write_bytes(path.read_bytes()[:-4])  # the size field of the trailer
    return path, ["truncated gzip stream"], data.DatasetError


def corrupt_crc(folder, gz):
    path = put(folder, TRAIN_Y, idx_bytes(arrays()["train_y"]), gz=True)
    raw = bytearray(path.read_bytes())
    raw[-8] ^= 0xFF  # the CRC-32 of the trailer
    path.write_bytes(bytes(raw))
    return path, ["damaged gzip stream (CRC check failed)"], data.DatasetError


def garbage_after_gzip(folder, gz):
    path = put(folder, TEST_X, idx_bytes(arrays()["test_x"]), gz=True)
    path.write_bytes(path.read_bytes() + b"garbage")
    return path, ["damaged gzip stream (unexpected bytes after the gzip stream)"], data.DatasetError


def gzip_without_gz_name(folder, gz):
    path = folder / TRAIN_Y
    (folder / f"{TRAIN_Y}.gz").unlink(missing_ok=True)
    path.write_bytes(gzip.compress(idx_bytes(arrays()["train_y"])))
    return (
        path,
        [f"gzip-compressed but not named .gz; fix: rename it {TRAIN_Y}.gz"],
        data.DatasetError,
    )


def wrong_magic(folder, gz):
    payload = bytearray(idx_bytes(arrays()["train_x"]))
    payload[0:2] = b"PK"
    path = put(folder, TRAIN_X, bytes(payload), gz)
    return path, ["not an IDX file (it starts with bytes 50 4b 08 03"], data.DatasetError


def unknown_dtype(folder, gz):
    payload = bytearray(idx_bytes(arrays()["test_x"]))
    payload[2] = 0x07
    path = put(folder, TEST_X, bytes(payload), gz)
    return path, ["unknown IDX data type 0x07 (known: 0x08 unsigned bytes"], data.DatasetError


def float_images(folder, gz):
    path = put(folder, TRAIN_X, idx_bytes(arrays()["train_x"], code=0x0D), gz)
    return (
        path,
        ["holds 32-bit floats; images of --dataset", "are unsigned bytes"],
        data.DatasetError,
    )


def float_labels(folder, gz):
    path = put(folder, TEST_Y, idx_bytes(arrays()["test_y"], code=0x0E), gz)
    return path, ["holds 64-bit floats; labels are integers"], data.DatasetError


def too_short_for_header(folder, gz):
    path = put(folder, TRAIN_Y, b"\x00\x00", gz)
    return path, ["2 bytes", "too short for an IDX header"], data.DatasetError


def truncated_header(folder, gz):
    path = put(folder, TRAIN_X, idx_bytes(arrays()["train_x"])[:10], gz)
    return (
        path,
        ["truncated IDX header (3 dimensions need 16 bytes, the file holds 10"],
        data.DatasetError,
    )


def zero_dimensions(folder, gz):
    path = put(folder, TEST_Y, struct.pack(">HBB", 0, 8, 0), gz)
    return path, ["its IDX header announces 0 dimensions"], data.DatasetError


def truncated_data(folder, gz):
    payload = idx_bytes(arrays()["train_x"])
    path = put(folder, TRAIN_X, payload[: len(payload) - 392], gz)
    held = N_TRAIN * 784 - 392
    message = f"truncated: its header announces [{N_TRAIN}, 28, 28] unsigned bytes"
    return (
        path,
        [message, f"({N_TRAIN * 784} bytes of data), the file holds {held}"],
        data.DatasetError,
    )


def huge_header(folder, gz):
    """A header announcing 4 G x 4 G x 4 G images: refused without allocating them."""
    payload = idx_bytes(arrays()["test_x"], shape=(2**32 - 1,) * 3)
    path = put(folder, TEST_X, payload, gz)
    return path, ["truncated: its header announces [4294967295, 4294967295"], data.DatasetError


def trailing_data(folder, gz):
    path = put(folder, TEST_Y, idx_bytes(arrays()["test_y"]) + b"\x01\x02\x03", gz)
    return (
        path,
        [f"3 bytes too long: header announces [{N_TEST}] unsigned bytes"],
        data.DatasetError,
    )


def flat_images(folder, gz):
    path = put(folder, TRAIN_X, idx_bytes(arrays()["train_x"].reshape(N_TRAIN, 784)), gz)
    return (
        path,
        [f"holds an array of shape [{N_TRAIN}, 784]; images of --dataset", "[N, 28, 28]"],
        data.DatasetError,
    )


def cifar_sized_images(folder, gz):
    images = np.zeros((N_TEST, 32, 32), np.uint8)
    path = put(folder, TEST_X, idx_bytes(images), gz)
    return (
        path,
        [f"holds an array of shape [{N_TEST}, 32, 32]", "are [N, 28, 28]"],
        data.DatasetError,
    )


def labels_2d(folder, gz):
    path = put(folder, TRAIN_Y, idx_bytes(arrays()["train_y"].reshape(N_TRAIN, 1)), gz)
    return path, [f"holds an array of shape [{N_TRAIN}, 1]; labels are [N]"], data.DatasetError


def fewer_labels(folder, gz):
    path = put(folder, TRAIN_Y, idx_bytes(arrays()["train_y"][:-1]), gz)
    message = f"holds {N_TRAIN - 1} labels for {N_TRAIN} images in {file_name(TRAIN_X, gz)}"
    return path, [message], data.DatasetError


def more_labels(folder, gz):
    path = put(folder, TEST_Y, idx_bytes(np.zeros(N_TEST + 5, np.uint8)), gz)
    message = f"holds {N_TEST + 5} labels for {N_TEST} images in {file_name(TEST_X, gz)}"
    return path, [message], data.DatasetError


def no_images(folder, gz):
    values = arrays()
    put(folder, TEST_Y, idx_bytes(values["test_y"][:0]), gz)
    path = put(folder, TEST_X, idx_bytes(values["test_x"][:0]), gz)
    return path, ["holds no images"], data.DatasetError


def _bad_label(value: int, code: int = 0x08):
    def damage(folder, gz):
        labels = arrays()["train_y"].astype(np.int64)
        labels[7] = value
        path = put(folder, TRAIN_Y, idx_bytes(labels, code=code), gz)
        return (
            path,
            [f"holds label {value} (at index 7)", "has 10 classes, labels 0 to 9"],
            data.DatasetError,
        )

    damage.__name__ = f"label_{value}"
    return damage


DAMAGES: list[Callable] = [
    empty_folder,
    three_of_four,
    missing_folder,
    file_as_folder,
    folder_as_file,
    dangling_link,
    plain_text_gz,
    empty_gz,
    truncated_gzip,
    truncated_gzip_labels,
    corrupt_crc,
    garbage_after_gzip,
    gzip_without_gz_name,
    wrong_magic,
    unknown_dtype,
    float_images,
    float_labels,
    too_short_for_header,
    truncated_header,
    zero_dimensions,
    truncated_data,
    huge_header,
    trailing_data,
    flat_images,
    cifar_sized_images,
    labels_2d,
    fewer_labels,
    more_labels,
    no_images,
    _bad_label(10),
    _bad_label(255),
    _bad_label(-1, code=0x09),  # signed bytes
    _bad_label(70000, code=0x0C),  # 32-bit integers
]
# each damage on Fashion-MNIST with gzipped files and on MNIST with plain ones (the gzip damages
# make their own .gz file whatever the format)
FORMATS = [("fashion-mnist", True), ("mnist", False)]


@pytest.mark.parametrize("dataset,gz", FORMATS)
@pytest.mark.parametrize("damage", DAMAGES, ids=lambda d: d.__name__)
def test_damaged_folder_is_refused_in_one_line(tmp_path, damage, dataset, gz):
    folder = valid_folder(tmp_path / "data", gz)
    named, says, error = damage(folder, gz)
    with pytest.raises(error) as info:
        data.load_dataset(dataset, folder)
    message = str(info.value)
    assert type(info.value) is error, type(info.value)  # not only a subclass
    assert "\n" not in message, message
    found = "not found in --data-dir " if error is data.DatasetNotFoundError else ""
    assert message.startswith(f"--dataset {dataset}: {found}{named}"), message
    for part in says:
        assert part in message, (part, message)
    assert "fix:" in message, message


# representative damages through the command line: exit status 2, one line, no traceback, no
# result directory, before anything is compiled
CLI_DAMAGES = [
    empty_folder,
    three_of_four,
    plain_text_gz,
    truncated_gzip,
    wrong_magic,
    truncated_data,
    fewer_labels,
    _bad_label(255),
    flat_images,
]
CLI_FLAGS = (
    "--nb-steps 2 --evaluation-delta 1 --nb-workers 3 --nb-decl-byz 0 --batch-size 4 "
    "--no-progress --model simples-full"
).split()


@pytest.mark.parametrize("damage", CLI_DAMAGES, ids=lambda d: d.__name__)
def test_damaged_folder_stops_the_command_line(tmp_path, damage, capsys, monkeypatch):
    folder = valid_folder(tmp_path / "data", gz=True)
    named, says, error = damage(folder, True)
    monkeypatch.setattr("jaxbyz.simulator._device_arrays", _must_not_place)
    out = tmp_path / "result"
    argv = ["--dataset", "fashion-mnist", "--data-dir", str(folder), *CLI_FLAGS]
    line = refusal(train.main, [*argv, "--result-directory", str(out)], capsys)
    found = "not found in --data-dir " if error is data.DatasetNotFoundError else ""
    assert f"error: --dataset fashion-mnist: {found}{named}" in line, line
    assert all(part in line for part in says), line
    assert not out.exists()  # neither created nor written


def _must_not_place(*args, **kwargs):
    raise AssertionError("the data must be refused before it is placed on the device")


# --------------------------------------------------------------------------------------------- #
# A chosen folder is never replaced by another copy


def test_empty_data_dir_never_falls_back_to_debian(tmp_path):
    """On a machine with Debian's Fashion-MNIST installed, an explicit empty folder is an error
    (it used to load Debian's copy silently)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load_dataset("fashion-mnist", empty)
    message = str(info.value)
    assert message.startswith(f"--dataset fashion-mnist: not found in --data-dir {empty}: ")
    assert "(a chosen folder is the only one searched)" in message and "\n" not in message
    assert f"drop --data-dir to use {data.DEBIAN_DIRS['fashion-mnist']}" in message


@pytest.mark.parametrize("fallback", ["debian", "cache", "environment"])
def test_chosen_folder_wins_over_every_other_copy(tmp_path, monkeypatch, fallback):
    """Whatever copy Debian's folder, the cache or $JAXBYZ_DATA_DIR hold, an incomplete
    --data-dir is an error naming it and what it lacks."""
    copy = valid_folder(tmp_path / "copy", gz=True)
    if fallback == "debian":
        monkeypatch.setattr(data, "DEBIAN_DIRS", {"mnist": str(copy)})
    elif fallback == "cache":
        valid_folder(data.cache_dir() / "mnist", gz=True)
    else:
        monkeypatch.setenv("JAXBYZ_DATA_DIR", str(copy))
    assert data.load_dataset("mnist").train_x.shape == (N_TRAIN, 28, 28, 1)  # found without
    chosen = valid_folder(tmp_path / "chosen", gz=False)
    (chosen / TRAIN_X).unlink()
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load_dataset("mnist", chosen)
    assert f"not found in --data-dir {chosen}: {chosen} lacks {TRAIN_X}[.gz]" in str(info.value)


def test_incomplete_environment_folder_is_an_error(tmp_path, monkeypatch):
    partial = valid_folder(tmp_path / "env", gz=True)
    (partial / f"{TEST_X}.gz").unlink()
    monkeypatch.setattr(data, "DEBIAN_DIRS", {"fashion-mnist": str(tmp_path / "copy")})
    valid_folder(tmp_path / "copy", gz=True)
    monkeypatch.setenv("JAXBYZ_DATA_DIR", str(partial))
    with pytest.raises(data.DatasetNotFoundError) as info:
        data.load_dataset("fashion-mnist")
    message = str(info.value)
    assert f"not found in $JAXBYZ_DATA_DIR {partial}: {partial} lacks {TEST_X}[.gz]" in message
    assert "unset JAXBYZ_DATA_DIR" in message


@pytest.mark.parametrize(
    "where,fix",
    [("debian", "fix: `apt-get install --reinstall dataset-mnist`"), ("cache", "to download")],
)
def test_damaged_default_folder_is_refused_not_skipped(tmp_path, monkeypatch, where, fix):
    """A damaged copy found by the default search stops the load (no next copy), with its fix."""
    if where == "debian":
        folder = tmp_path / "debian"
        monkeypatch.setattr(data, "DEBIAN_DIRS", {"mnist": str(folder)})
    else:
        monkeypatch.setattr(data, "DEBIAN_DIRS", {})
        folder = data.cache_dir() / "mnist"
    valid_folder(folder, gz=True)
    named, _, _ = truncated_gzip(folder, True)
    with pytest.raises(data.DatasetError) as info:
        data.load_dataset("mnist")
    assert str(info.value).startswith(f"--dataset mnist: {named}: truncated gzip stream")
    assert fix in str(info.value)


# --------------------------------------------------------------------------------------------- #
# Valid folders still load


@pytest.mark.parametrize("gz", [True, False, "mixed"])
@pytest.mark.parametrize("dataset", ["fashion-mnist", "mnist"])
def test_valid_small_folder_loads(tmp_path, dataset, gz):
    values = arrays()
    folder = tmp_path / "data"
    folder.mkdir()
    for i, (key, stem) in enumerate(STEMS.items()):
        put(folder, stem, idx_bytes(values[key]), bool(i % 2) if gz == "mixed" else gz)
    ds = data.load_dataset(dataset, folder)
    assert ds.train_x.shape == (N_TRAIN, 28, 28, 1) and ds.test_x.shape == (N_TEST, 28, 28, 1)
    assert ds.train_x.dtype == np.uint8 and ds.train_y.dtype == ds.test_y.dtype == np.int32
    for key in STEMS:
        np.testing.assert_array_equal(getattr(ds, key).reshape(values[key].shape), values[key])
    assert ds.num_classes == 10 and ds.name == dataset


def test_wider_label_types_in_range_load(tmp_path):
    """Labels stored as signed bytes or 32-bit integers (IDX allows them) load when in range."""
    values = arrays()
    folder = valid_folder(tmp_path / "data", gz=False, values=values)
    put(folder, TRAIN_Y, idx_bytes(values["train_y"], code=0x09), gz=False)
    put(folder, TEST_Y, idx_bytes(values["test_y"], code=0x0C), gz=True)
    ds = data.load_dataset("mnist", folder)
    np.testing.assert_array_equal(ds.train_y, values["train_y"])
    np.testing.assert_array_equal(ds.test_y, values["test_y"])
