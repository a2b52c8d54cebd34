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


def test_missing_dataset_names_every_remedy(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("JAXBYZ_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "DEBIAN_DIRS", {})
    monkeypatch.setattr(data, "load_tfds_dataset", _tfds_unavailable)
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load_dataset("fashion-mnist", data_dir=tmp_path / "nowhere", download=False)
    message = str(err.value)
    for remedy in ("--data-dir", "dataset-fashion-mnist", "download", "--dataset synthetic"):
        assert remedy in message


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


def test_synthetic_any_size():
    ds = data.make_synthetic(n_train=50, n_test=7, shape=(5,), num_classes=3)
    assert ds.train_x.shape == (50, 5) and ds.test_y.shape == (7,)
    assert ds.train_x.dtype == ds.test_x.dtype == np.float32  # as the IDX and tfds sources
    assert set(np.unique(ds.train_y)) <= {0, 1, 2}
    with pytest.raises(ValueError, match="n_train"):
        data.make_synthetic(n_train=0)


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
