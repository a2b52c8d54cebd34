"""Dataset sources: IDX files, tensorflow-datasets (mock), synthetic, sampling, non-IID split."""

from __future__ import annotations

import gzip
import struct

import jax
import numpy as np
import pytest

from jaxbyz import data


def write_idx(path, array: np.ndarray, gz: bool) -> None:
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(
        ">" + "I" * array.ndim, *array.shape
    )
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as fd:
            fd.write(payload)
    else:
        path.write_bytes(payload)


@pytest.fixture
def idx_folder(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "train_x": rng.integers(0, 256, (30, 28, 28)),
        "train_y": rng.integers(0, 10, 30),
        "test_x": rng.integers(0, 256, (12, 28, 28)),
        "test_y": rng.integers(0, 10, 12),
    }
    for i, (key, stem) in enumerate(data.IDX_FILES.items()):
        write_idx(tmp_path / stem, arrays[key], gz=bool(i % 2))
    return tmp_path, arrays


def test_idx_reader_roundtrip(idx_folder):
    folder, arrays = idx_folder
    ds = data.load_dataset("fashion-mnist", data_dir=folder, download=False)
    np.testing.assert_array_equal(ds.train_x[..., 0], arrays["train_x"])
    np.testing.assert_array_equal(ds.test_y, arrays["test_y"])
    assert ds.input_shape == (28, 28, 1) and ds.num_classes == 10 and ds.flip


def test_environment_variable_folder(idx_folder, monkeypatch):
    folder, arrays = idx_folder
    monkeypatch.setenv("JAXBYZ_DATA_DIR", str(folder))
    ds = data.load_idx_dataset("mnist", download=False)
    np.testing.assert_array_equal(ds.train_y, arrays["train_y"])
    assert ds.mean == (0.1307,)


def test_subfolder_named_after_the_dataset(idx_folder, tmp_path_factory):
    folder, arrays = idx_folder
    root = tmp_path_factory.mktemp("root")
    folder.rename(root / "mnist")
    ds = data.load_dataset("mnist", data_dir=root, download=False)
    np.testing.assert_array_equal(ds.test_x[..., 0], arrays["test_x"])
    assert data.idx_folders("mnist", root) == [root, root / "mnist"]


def test_missing_dataset_names_every_remedy(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("JAXBYZ_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "DEBIAN_DIRS", {})
    monkeypatch.setattr(data, "load_tfds_dataset", _tfds_unavailable)
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load_dataset("fashion-mnist", download=False)
    message = str(err.value)
    for remedy in ("--data-dir", "dataset-fashion-mnist", "download", "--dataset synthetic"):
        assert remedy in message


def test_chosen_folder_is_the_only_one_searched(idx_folder, tmp_path_factory, monkeypatch):
    """An explicit --data-dir (or $JAXBYZ_DATA_DIR) without the files is an error, whatever
    Debian's folder, the cache or tensorflow-datasets hold."""
    folder, _ = idx_folder
    monkeypatch.setattr(data, "DEBIAN_DIRS", {"fashion-mnist": str(folder)})
    monkeypatch.setattr(data, "load_tfds_dataset", _must_not_be_called)
    monkeypatch.setattr(data, "_download_idx", _must_not_be_called)
    empty = tmp_path_factory.mktemp("empty")
    monkeypatch.delenv("JAXBYZ_DATA_DIR", raising=False)
    assert data.load_dataset("fashion-mnist").train_x.shape == (30, 28, 28, 1)  # Debian's
    with pytest.raises(data.DatasetNotFoundError, match="not found in --data-dir") as err:
        data.load_dataset("fashion-mnist", data_dir=empty)
    assert str(empty) in str(err.value) and "t10k-labels-idx1-ubyte[.gz]" in str(err.value)
    assert data.idx_folders("fashion-mnist", empty) == [empty, empty / "fashion-mnist"]
    monkeypatch.setenv("JAXBYZ_DATA_DIR", str(empty))
    with pytest.raises(data.DatasetNotFoundError, match=r"not found in \$JAXBYZ_DATA_DIR") as err:
        data.load_dataset("fashion-mnist")
    assert "unset JAXBYZ_DATA_DIR" in str(err.value)
    # an explicit folder wins over the environment variable
    monkeypatch.setenv("JAXBYZ_DATA_DIR", str(folder))
    with pytest.raises(data.DatasetNotFoundError, match="--data-dir"):
        data.load_dataset("fashion-mnist", data_dir=empty)


def _must_not_be_called(*args, **kwargs):
    raise AssertionError("no fallback when a folder is chosen")


def _tfds_unavailable(*args, **kwargs):
    raise data.DatasetNotFoundError("not prepared")


def test_unknown_dataset():
    with pytest.raises(ValueError, match="--dataset 'imagenet' is unknown"):
        data.load_dataset("imagenet")


def test_tfds_source_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.load_dataset("cifar10")
    assert ds.train_x.shape == (24, 32, 32, 3) and ds.num_classes == 10
    assert ds.train_y.dtype == np.int32 and ds.train_x.dtype == np.uint8


def test_tfds_splits_are_checked():
    good = [{"image": np.zeros((32, 32, 3), np.uint8), "label": 3}] * 4
    images, labels = data._tfds_split("cifar10", "train", good, 10)
    assert images.shape == (4, 32, 32, 3) and labels.dtype == np.int32
    bad_label = [*good, {"image": np.zeros((32, 32, 3), np.uint8), "label": 10}]
    odd_image = [*good, {"image": np.zeros((28, 28, 3), np.uint8), "label": 0}]
    small = [{"image": np.zeros((28, 28), np.uint8), "label": 0}]
    float_label = [{"image": np.zeros((32, 32, 3), np.uint8), "label": 0.5}]
    for items, match in (
        ([], "split 'train' holds no images"),
        (bad_label, r"split 'train' holds label 10 \(at index 4\); --dataset cifar10 has 10"),
        (odd_image, r"images of different shapes \[28, 28, 3\], \[32, 32, 3\]"),
        (small, r"shape \[1, 28, 28, 1\]; images of --dataset cifar10 are \[N, 32, 32, 3\]"),
        (float_label, "64-bit floats; labels are integers"),
    ):
        with pytest.raises(data.DatasetError, match=match) as err:
            data._tfds_split("cifar10", "train", items, 10)
        assert "\n" not in str(err.value) and str(err.value).startswith("--dataset cifar10: ")


def test_synthetic_any_size():
    ds = data.make_synthetic(n_train=50, n_test=7, shape=(5,), num_classes=3)
    assert ds.train_x.shape == (50, 5) and ds.test_y.shape == (7,)
    assert ds.train_x.dtype == ds.test_x.dtype == np.float32  # as the IDX and tfds sources
    assert set(np.unique(ds.train_y)) <= {0, 1, 2}
    for kwargs, match in (
        ({"n_train": 0}, "n_train"),
        ({"num_classes": 0}, "num_classes"),
        ({"shape": (5, 0)}, "shape must be positive integers"),
        ({"separation": float("nan")}, "separation must be finite"),
    ):
        with pytest.raises(ValueError, match=match):
            data.make_synthetic(**kwargs)


def test_check_split_names_the_problem():
    images, labels = np.zeros((3, 2), np.float32), np.array([0, 1, 2])
    assert data.check_split("x", images, labels, (2,), 3, ("a", "b"), np.float32).dtype == np.int32
    for args, match in (
        ((images, labels[:2]), "b holds 2 labels for 3 images in a"),
        ((images, labels - 1), r"b holds label -1 \(at index 0\); --dataset x has 3 classes"),
        ((images[:0], labels[:0]), "a holds no images"),
        ((images, labels[:, None]), r"b holds an array of shape \[3, 1\]; labels are \[N\]"),
    ):
        with pytest.raises(data.DatasetError, match=match):
            data.check_split("x", *args, (2,), 3, ("a", "b"), np.float32)


def test_sampling_is_per_worker_and_in_range():
    idx = data.sample_indices(jax.random.key(0), 4, 16, 100)
    assert idx.shape == (4, 16)
    assert int(idx.min()) >= 0 and int(idx.max()) < 100
    assert len({tuple(np.asarray(row)) for row in idx}) == 4


def test_dirichlet_partition_covers_and_is_skewed():
    labels = np.repeat(np.arange(10), 100)
    table, lengths = data.dirichlet_partition(labels, num_workers=5, alpha=0.1, seed=0)
    assert lengths.sum() == 1000 and (lengths >= 1).all()
    owned = np.concatenate([table[i, : lengths[i]] for i in range(5)])
    np.testing.assert_array_equal(np.sort(owned), np.arange(1000))
    # with a small alpha most workers see few classes
    classes = [len(np.unique(labels[table[i, : lengths[i]]])) for i in range(5)]
    assert min(classes) < 10
    idx = data.sample_indices(jax.random.key(0), 5, 8, 1000, (table, lengths))
    for i in range(5):
        assert set(np.asarray(idx[i]).tolist()) <= set(table[i, : lengths[i]].tolist())
    with pytest.raises(ValueError, match="dirichlet-alpha"):
        data.dirichlet_partition(labels, 5, 0.0)
