"""Dataset sources and on-device sampling.

Sources:
- ``fashion-mnist`` / ``mnist`` from IDX files: a folder given by flag, the environment variable
  ``JAXBYZ_DATA_DIR``, Debian's ``/usr/share/datasets/<name>`` (package ``dataset-fashion-mnist``),
  or a one-time download of the official files into ``~/.cache/jaxbyz/<name>``;
- ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100`` through ``tfds.data_source`` (no
  TensorFlow needed; tested with ``tfds.testing.mock_data``);
- ``synthetic``: a generated Gaussian-mixture classification task of any size.

The whole training set lives on the device as raw arrays; each worker's batch is an index gather
from its own key (``sample_batches``). Pre-processing follows the paper's code: MNIST is scaled to
[0, 1] then normalised with (0.1307, 0.3081); Fashion-MNIST is scaled to [0, 1] with random
horizontal flips; CIFAR is normalised per channel with random horizontal flips.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
import urllib.request
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

DATASETS = ("fashion-mnist", "mnist", "fashion_mnist", "cifar10", "cifar100", "synthetic")
# the paper's dataset names that differ from ours
DATASET_ALIASES = {"fashionmnist": "fashion-mnist"}
# classes of each dataset, known before loading it (for checking a configuration); synthetic:
# make_synthetic's default
NUM_CLASSES = {name: 100 if name == "cifar100" else 10 for name in DATASETS}
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
IDX_URLS = {
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/",
}
DEBIAN_DIRS = {
    "fashion-mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "/usr/share/datasets/mnist",
}
TFDS_NAMES = {"fashion_mnist": "fashion_mnist", "cifar10": "cifar10", "cifar100": "cifar100"}
# (mean, std, random horizontal flip) as in the paper's code (experiments/dataset.py)
PREPROCESS = {
    "mnist": ((0.1307,), (0.3081,), False),
    "fashion-mnist": ((0.0,), (1.0,), True),
    "fashion_mnist": ((0.0,), (1.0,), True),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), True),
    "cifar100": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), True),
    "synthetic": ((0.0,), (1.0,), False),
}


class DatasetNotFoundError(ValueError):
    """A dataset could not be found or fetched; the message says how to get it."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A classification dataset held as arrays (NHWC images, integer labels).

    ``scale`` maps the stored dtype to [0, 1] (1/255 for uint8 images, 1 for synthetic floats);
    ``mean``/``std`` are per-channel normalisation constants; ``flip`` enables random
    horizontal flips of training samples.
    """

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


# --------------------------------------------------------------------------------------------- #
# IDX files


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a NumPy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fd:
        raw = fd.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def idx_complete(folder: Path) -> bool:
    """Whether ``folder`` holds the four IDX files of a dataset (gzipped or not)."""
    return all(_find_idx(folder, stem) is not None for stem in IDX_FILES.values())


def cache_dir() -> Path:
    """Where downloaded datasets are cached (``$XDG_CACHE_HOME/jaxbyz`` or ``~/.cache/jaxbyz``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "jaxbyz"


def _download_idx(name: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem in IDX_FILES.values():
        target = folder / f"{stem}.gz"
        if target.is_file():
            continue
        tmp = target.with_suffix(".gz.part")
        with urllib.request.urlopen(IDX_URLS[name] + f"{stem}.gz", timeout=30) as response:
            tmp.write_bytes(response.read())
        tmp.replace(target)


def idx_folders(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    """The folders searched for ``name``'s IDX files, in order."""
    folders = []
    if data_dir is not None:
        folders += [Path(data_dir), Path(data_dir) / name]
    env = os.environ.get("JAXBYZ_DATA_DIR")
    if env:
        folders += [Path(env), Path(env) / name]
    if name in DEBIAN_DIRS:
        folders.append(Path(DEBIAN_DIRS[name]))
    folders.append(cache_dir() / name)
    return folders


def _not_found(name: str, folders: list[Path], reasons: list[str]) -> DatasetNotFoundError:
    searched = ", ".join(str(f) for f in folders)
    debian = " or `apt-get install -y dataset-fashion-mnist`" if name == "fashion-mnist" else ""
    return DatasetNotFoundError(
        f"--dataset {name}: not found (searched {searched}; {'; '.join(reasons)}). "
        f"Fix: put the four IDX files in a folder and pass --data-dir DIR (or set JAXBYZ_DATA_DIR)"
        f"{debian}, or allow a one-time download (network), or `pip install tensorflow-datasets` "
        f"and use --dataset {name.replace('-', '_')}; or run with --dataset synthetic"
    )


def load_idx_dataset(
    name: str, data_dir: str | os.PathLike | None = None, download: bool = True
) -> Dataset:
    """Load ``fashion-mnist`` or ``mnist`` from IDX files, downloading them once if allowed."""
    folders = idx_folders(name, data_dir)
    folder = next((f for f in folders if idx_complete(f)), None)
    reasons = []
    if folder is None and download:
        try:
            _download_idx(name, cache_dir() / name)
            folder = cache_dir() / name
        except OSError as err:
            reasons.append(f"download failed: {err}")
    if folder is None:
        try:
            return load_tfds_dataset(name.replace("-", "_"), data_dir=None, download=download)
        except DatasetNotFoundError as err:
            reasons.append(f"tensorflow-datasets: {err}")
        raise _not_found(name, folders, reasons)
    arrays = {key: read_idx(_find_idx(folder, stem)) for key, stem in IDX_FILES.items()}
    mean, std, flip = PREPROCESS[name]
    return Dataset(
        name=name,
        train_x=arrays["train_x"][..., None],
        train_y=arrays["train_y"].astype(np.int32),
        test_x=arrays["test_x"][..., None],
        test_y=arrays["test_y"].astype(np.int32),
        num_classes=10,
        scale=1.0 / 255.0,
        mean=mean,
        std=std,
        flip=flip,
    )


# --------------------------------------------------------------------------------------------- #
# tensorflow-datasets


def _tfds_split(source) -> tuple[np.ndarray, np.ndarray]:
    try:
        items = source.__getitems__(list(range(len(source))))
    except TypeError:  # tfds.testing.mock_data patches sources without a bound __getitems__
        items = [source[i] for i in range(len(source))]
    images = np.stack([np.asarray(item["image"]) for item in items])
    labels = np.asarray([item["label"] for item in items], np.int32)
    if images.ndim == 3:
        images = images[..., None]
    return images, labels


def load_tfds_dataset(
    name: str, data_dir: str | os.PathLike | None = None, download: bool = True
) -> Dataset:
    """Load ``mnist``, ``fashion_mnist``, ``cifar10`` or ``cifar100`` with ``tfds.data_source``."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DatasetNotFoundError(
            f"--dataset {name} needs tensorflow-datasets: `pip install tensorflow-datasets`"
        ) from err
    try:
        sources = tfds.data_source(
            name,
            split=["train", "test"],
            data_dir=None if data_dir is None else str(data_dir),
            download=download,
        )
        train_x, train_y = _tfds_split(sources[0])
        test_x, test_y = _tfds_split(sources[1])
        info = tfds.builder(name, data_dir=None if data_dir is None else str(data_dir)).info
        num_classes = int(info.features["label"].num_classes)
    except Exception as err:  # tfds raises many kinds: report them all the same way
        raise DatasetNotFoundError(
            f"--dataset {name}: tensorflow-datasets could not prepare it ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); fix: run once with network access, "
            f"or pass --data-dir to a prepared tfds folder, or use --dataset synthetic"
        ) from err
    mean, std, flip = PREPROCESS.get(name, ((0.0,), (1.0,), False))
    return Dataset(
        name=name,
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=num_classes,
        scale=1.0 / 255.0,
        mean=mean,
        std=std,
        flip=flip,
    )


# --------------------------------------------------------------------------------------------- #
# Synthetic


def make_synthetic(
    n_train: int = 6000,
    n_test: int = 1000,
    shape: tuple[int, ...] = (28, 28, 1),
    num_classes: int = 10,
    separation: float = 1.0,
    seed: int = 0,
) -> Dataset:
    """A Gaussian-mixture classification task: ``x = separation * mu_y + N(0, I)``.

    Class centres ``mu_k`` are i.i.d. normal with norm about 3 whatever the input size, so that
    two classes are about ``4.2 * separation`` apart against unit noise: learnable (a linear
    model reaches roughly 85% at ``separation=1``) but not trivial.
    """
    for param, value in (("n_train", n_train), ("n_test", n_test), ("num_classes", num_classes)):
        if value < 1:
            raise ValueError(f"synthetic dataset: {param} must be >= 1, got {value}")
    rng = np.random.default_rng(seed)
    dim = int(np.prod(shape))
    scale = np.float32(3.0 / np.sqrt(dim))  # a NumPy float64 scalar would promote the arrays
    centres = rng.standard_normal((num_classes, dim)).astype(np.float32) * scale

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, num_classes, count).astype(np.int32)
        noise = rng.standard_normal((count, dim)).astype(np.float32)
        x = separation * centres[labels] + noise
        return x.reshape((count, *shape)), labels

    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    mean, std, flip = PREPROCESS["synthetic"]
    return Dataset("synthetic", train_x, train_y, test_x, test_y, num_classes, 1.0, mean, std, flip)


def load_dataset(
    name: str, data_dir: str | os.PathLike | None = None, download: bool = True, **synthetic
) -> Dataset:
    """Load dataset ``name`` (one of ``DATASETS``); raises ``DatasetNotFoundError`` if missing."""
    if name not in DATASETS:
        raise ValueError(f"--dataset {name!r} is unknown; choose one of {', '.join(DATASETS)}")
    if name == "synthetic":
        return make_synthetic(**synthetic)
    if name in IDX_URLS:
        return load_idx_dataset(name, data_dir, download)
    return load_tfds_dataset(TFDS_NAMES[name], data_dir, download)


# --------------------------------------------------------------------------------------------- #
# On-device sampling


def dirichlet_partition(
    labels: np.ndarray, num_workers: int, alpha: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split example indices across workers with per-class Dirichlet(alpha) proportions.

    Returns ``(table [w, L], lengths [w])``: worker ``i`` owns ``table[i, :lengths[i]]`` (rows are
    padded by repetition so the table has a static shape). Every worker gets at least one example.
    """
    if alpha <= 0:
        raise ValueError(f"--dirichlet-alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    owned: list[list[int]] = [[] for _ in range(num_workers)]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        shares = rng.dirichlet(np.full(num_workers, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
        for worker, part in enumerate(np.split(idx, cuts)):
            owned[worker].extend(part.tolist())
    spare = rng.permutation(len(labels))
    for worker in range(num_workers):
        if not owned[worker]:
            owned[worker].append(int(spare[worker % len(spare)]))
    lengths = np.array([len(o) for o in owned], np.int32)
    table = np.stack([np.resize(np.array(o, np.int32), lengths.max()) for o in owned])
    return table, lengths


def preprocess(x: Array, dataset: Dataset, xp: Any = jnp) -> Array:
    """Raw stored samples -> float32 model inputs (scaled then normalised per channel); ``xp``
    is ``jax.numpy`` (on the device, in the step) or ``numpy`` (once, on the host)."""
    x = x.astype(xp.float32) * xp.float32(dataset.scale)
    mean = xp.asarray(dataset.mean, xp.float32)
    std = xp.asarray(dataset.std, xp.float32)
    return (x - mean) / std


def host_arrays(dataset: Dataset) -> dict[str, np.ndarray]:
    """What a run keeps on the device: the raw training set (batches are gathered from it and
    preprocessed in the step), the labels, and the test set already preprocessed (it is read
    whole at every evaluation: normalising it once saves about 20 ms per evaluation of
    Fashion-MNIST on a 2-core CPU)."""
    return {
        "train_x": dataset.train_x,
        "train_y": dataset.train_y,
        "test_inputs": preprocess(dataset.test_x, dataset, np),
        "test_y": dataset.test_y,
    }


def sample_indices(
    key: Array,
    num_workers: int,
    batch_size: int,
    num_train: int,
    partition: tuple[Array, Array] | None = None,
) -> Array:
    """Per-worker example indices ``[w, b]``, each worker drawing from its own key.

    IID: uniform over the training set. Non-IID: uniform over the worker's own partition.
    """
    keys = jax.random.split(key, num_workers)
    if partition is None:
        return jax.vmap(lambda k: jax.random.randint(k, (batch_size,), 0, num_train))(keys)
    table, lengths = partition
    position = jax.vmap(lambda k, n: jax.random.randint(k, (batch_size,), 0, n))(keys, lengths)
    return jnp.take_along_axis(table, position, axis=1)


def gather_batches(
    key: Array, images: Array, labels: Array, indices: Array, dataset: Dataset, flip: bool
) -> tuple[Array, Array]:
    """Gather ``[w, b, ...]`` inputs and labels, with random horizontal flips when ``flip``
    (the dataset's default ``dataset.flip``, off with ``--no-transform``)."""
    x = preprocess(images[indices], dataset)
    if flip:
        flips = jax.random.bernoulli(key, 0.5, indices.shape)
        x = jnp.where(flips[..., None, None, None], x[..., ::-1, :], x)
    return x, labels[indices]
