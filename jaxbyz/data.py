"""Dataset sources, their checks, and on-device sampling.

Sources:
- ``fashion-mnist`` / ``mnist`` from IDX files (each gzipped, ``<name>.gz``, or not), in a folder
  ``DIR`` or ``DIR/<name>``. An explicit folder, ``--data-dir`` (``Config.data_dir``), is the only
  one searched: if it lacks any of the four files the load stops with an error naming the folder
  and the missing files, never falling back to another copy. The environment variable
  ``JAXBYZ_DATA_DIR`` is taken the same way (the user pointed at it: incomplete, it is an error
  too). With neither, the search order is Debian's ``/usr/share/datasets/<name>`` (package
  ``dataset-fashion-mnist``), then ``~/.cache/jaxbyz/<name>``, then a one-time download of the
  official files into that cache, then tensorflow-datasets;
- ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100`` through ``tfds.data_source`` (no
  TensorFlow needed; tested with ``tfds.testing.mock_data``);
- ``synthetic``: a generated Gaussian-mixture classification task of any size.

Checks at load, for every source: a damaged file (a ``.gz`` that is not gzip or whose stream is
truncated or corrupt, an IDX header with a wrong magic number, data type or number of
dimensions, announcing more or less data than the file holds) and inconsistent data (images and
labels of a split in different numbers, an empty split, images not of the dataset's shape, [N,
28, 28] for (fashion-)MNIST and [N, 32, 32, 3] for CIFAR, labels not integers in ``[0,
num_classes)``) raise :class:`DatasetError`, a missing dataset :class:`DatasetNotFoundError`;
both are ``ValueError`` whose message is one line naming the file (or folder, or split), the
problem and the fix. The checks cost a min and a max over the labels: loading stays one read and
one decompression per file.

The whole training set lives on the device as raw arrays; each worker's batch is an index gather
from its own key (``sample_batches``). Pre-processing follows the paper's code: MNIST is scaled to
[0, 1] then normalised with (0.1307, 0.3081); Fashion-MNIST is scaled to [0, 1] with random
horizontal flips; CIFAR is normalised per channel with random horizontal flips.

Non-IID data (``--partition``, :func:`honest_partition`): the training set is split across the
``h`` honest workers once, on the host, and each honest worker then samples its batches
uniformly from its own examples (the Byzantine workers and the study's extra rows keep sampling
from the whole set). With ``N`` training examples:

- ``iid`` (default): no split, every honest worker samples from the whole set;
- ``dirichlet:ALPHA`` (alias ``--dirichlet-alpha ALPHA``): each class's examples shared in
  Dirichlet(ALPHA) proportions (:func:`dirichlet_partition`);
- ``shards:K``: McMahan et al., "Communication-Efficient Learning of Deep Networks from
  Decentralized Data", AISTATS 2017: the examples sorted by label, cut in ``K h`` shards, ``K``
  drawn at random for each worker (:func:`shards_partition`);
- ``sorted``: the examples sorted by label, cut in ``h`` contiguous blocks
  (:func:`sorted_partition`; ByzFL's ``extreme_niid``);
- ``gamma:G``: a fraction ``G`` of the examples split IID, the rest sorted by label and cut in
  ``h`` blocks (:func:`gamma_partition`; ByzFL's ``gamma_similarity_niid``).

All but ``iid`` give every example to exactly one worker (``dirichlet`` may lend one example to
a worker left empty) and are deterministic given the seed (``sorted``: whatever the seed).
``sorted`` and ``gamma`` were checked against ByzFL's ``byzfl/fed_framework/data_distributor.py``
(LPD-EPFL/byzfl); :func:`gamma_partition` says where they differ.
"""

from __future__ import annotations

import dataclasses
import gzip
import http.client
import math
import os
import struct
import urllib.request
import zlib
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
# the shape of one stored image (HWC), per dataset and tensorflow-datasets name
IMAGE_SHAPES = {
    "fashion-mnist": (28, 28, 1),
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
    "cifar100": (32, 32, 3),
}
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
# IDX data type codes: (words for messages, big-endian NumPy dtype)
IDX_DTYPES = {
    0x08: ("unsigned bytes", ">u1"),
    0x09: ("signed bytes", ">i1"),
    0x0B: ("16-bit integers", ">i2"),
    0x0C: ("32-bit integers", ">i4"),
    0x0D: ("32-bit floats", ">f4"),
    0x0E: ("64-bit floats", ">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"
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


class DatasetError(ValueError):
    """A dataset's files are damaged or its arrays inconsistent; the message (one line) names
    the file, or the dataset and split, and the problem."""


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
# Consistency of the arrays


def _shape(shape: tuple[int, ...] | tuple[str | int, ...]) -> str:
    return "[" + ", ".join(str(n) for n in shape) + "]"


def _dtype_words(dtype: np.dtype) -> str:
    for words, code in IDX_DTYPES.values():
        if (np.dtype(code).kind, np.dtype(code).itemsize) == (dtype.kind, dtype.itemsize):
            return words
    return f"{dtype} values"


def check_split(
    name: str,
    images: np.ndarray,
    labels: np.ndarray,
    image_shape: tuple[int, ...],
    num_classes: int,
    where: tuple[str, str],
    image_dtype: type | None = np.uint8,
) -> np.ndarray:
    """Check one split of dataset ``name``: ``images`` of shape ``[N, *image_shape]`` (and of
    ``image_dtype`` when given), ``N >= 1``, as many integer ``labels`` ``[N]`` in ``[0,
    num_classes)``. ``where`` names the images and the labels in messages (their files, or the
    dataset's split). Raises :class:`DatasetError`; returns the labels as int32."""
    images_at, labels_at = where
    if images.shape[1:] != tuple(image_shape):
        raise DatasetError(
            f"{images_at} holds an array of shape {_shape(images.shape)}; images of --dataset "
            f"{name} are {_shape(('N', *image_shape))}"
        )
    if image_dtype is not None and images.dtype != np.dtype(image_dtype):
        raise DatasetError(
            f"{images_at} holds {_dtype_words(images.dtype)}; images of --dataset {name} are "
            f"{_dtype_words(np.dtype(image_dtype))}"
        )
    if labels.ndim != 1:
        raise DatasetError(
            f"{labels_at} holds an array of shape {_shape(labels.shape)}; labels are [N]"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{labels_at} holds {_dtype_words(labels.dtype)}; labels are integers")
    if len(images) == 0:
        raise DatasetError(f"{images_at} holds no images")
    if len(labels) != len(images):
        images_name = images_at
        if Path(images_at).parent == Path(labels_at).parent and os.sep in images_at:
            images_name = Path(images_at).name
        raise DatasetError(
            f"{labels_at} holds {len(labels)} labels for {len(images)} images in {images_name}"
        )
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        index = int(np.flatnonzero((labels < 0) | (labels >= num_classes))[0])
        raise DatasetError(
            f"{labels_at} holds label {int(labels[index])} (at index {index}); --dataset {name} "
            f"has {num_classes} classes, labels 0 to {num_classes - 1}"
        )
    return labels.astype(np.int32)


# --------------------------------------------------------------------------------------------- #
# IDX files


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _decompress(path: Path, raw: bytes) -> bytes:
    if raw[:2] != GZIP_MAGIC:
        start = "it is empty" if not raw else f"it starts with {raw[:4]!r}"
        raise DatasetError(f"{path}: not a gzip file despite its .gz name ({start})")
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise DatasetError(
            f"{path}: truncated gzip stream (the file ends before the stream does)"
        ) from None
    except (OSError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        problem = _first_line(err)
        if problem.startswith("Not a gzipped file"):
            problem = "unexpected bytes after the gzip stream"
        raise DatasetError(f"{path}: damaged gzip stream ({problem})") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped when its name ends with ``.gz``) into a NumPy array.

    Raises :class:`DatasetError`, one line naming the file and the problem, for a file that
    cannot be read, a ``.gz`` that is not gzip or is truncated or corrupt, a plain file that is
    gzipped, an IDX header with a wrong magic number, an unknown data type or no dimension, and
    a header announcing more or less data than the file holds.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DatasetError(
            f"{path}: cannot be read ({err.strerror or _first_line(err)}); fix: make it readable"
        ) from None
    gzipped = path.suffix == ".gz"
    if gzipped:
        raw = _decompress(path, raw)
    elif raw[:2] == GZIP_MAGIC:
        raise DatasetError(
            f"{path}: gzip-compressed but not named .gz; fix: rename it {path.name}.gz"
        )
    decompressed = " once decompressed" if gzipped else ""
    if len(raw) < 4:
        raise DatasetError(
            f"{path}: {len(raw)} bytes{decompressed}, too short for an IDX header (4 bytes)"
        )
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0:
        raise DatasetError(
            f"{path}: not an IDX file (it starts with bytes {raw[:4].hex(' ')}{decompressed}; an "
            "IDX file starts with two zero bytes)"
        )
    if dtype_code not in IDX_DTYPES:
        raise DatasetError(
            f"{path}: unknown IDX data type 0x{dtype_code:02X} (known: "
            + ", ".join(f"0x{code:02X} {words}" for code, (words, _) in IDX_DTYPES.items())
            + ")"
        )
    if ndim == 0:
        raise DatasetError(f"{path}: its IDX header announces 0 dimensions")
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise DatasetError(
            f"{path}: truncated IDX header ({ndim} dimensions need {offset} bytes, the file "
            f"holds {len(raw)}{decompressed})"
        )
    shape = struct.unpack(">" + "I" * ndim, raw[4:offset])
    words, code = IDX_DTYPES[dtype_code]
    dtype = np.dtype(code)
    announced, held = math.prod(shape) * dtype.itemsize, len(raw) - offset
    if held != announced:
        problem = "truncated: its" if held < announced else f"{held - announced} bytes too long:"
        raise DatasetError(
            f"{path}: {problem} header announces {_shape(shape)} {words} ({announced} bytes of "
            f"data), the file holds {held}{decompressed}"
        )
    return np.frombuffer(raw, dtype, offset=offset).reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def idx_complete(folder: Path) -> bool:
    """Whether ``folder`` holds the four IDX files of a dataset (gzipped or not)."""
    return all(_find_idx(folder, stem) is not None for stem in IDX_FILES.values())


def _lacking(folder: Path) -> list[str]:
    """What ``folder`` lacks of the four IDX files (a name that is not a regular file: said)."""
    lacking = []
    for stem in IDX_FILES.values():
        if _find_idx(folder, stem) is None:
            odd = [c for c in (folder / stem, folder / f"{stem}.gz") if c.exists()]
            lacking.append(f"{odd[0].name} (not a file)" if odd else f"{stem}[.gz]")
    return lacking


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


def _chosen_dir(data_dir: str | os.PathLike | None) -> tuple[Path, str] | None:
    """The folder the user chose, ``data_dir`` or else ``$JAXBYZ_DATA_DIR``, and how it was
    chosen (for messages); None when neither is set."""
    if data_dir is not None:
        return Path(data_dir), "--data-dir"
    env = os.environ.get("JAXBYZ_DATA_DIR")
    if env:
        return Path(env), "$JAXBYZ_DATA_DIR"
    return None


def idx_folders(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    """The folders searched for ``name``'s IDX files, in order: ``data_dir`` and
    ``data_dir/<name>`` when given (nothing else), else the same under ``$JAXBYZ_DATA_DIR``
    when set (nothing else), else Debian's folder and the download cache."""
    chosen = _chosen_dir(data_dir)
    if chosen is not None:
        return [chosen[0], chosen[0] / name]
    folders = [Path(DEBIAN_DIRS[name])] if name in DEBIAN_DIRS else []
    return [*folders, cache_dir() / name]


def _default_search(name: str) -> str:
    debian = f"{DEBIAN_DIRS[name]}, " if name in DEBIAN_DIRS else ""
    return f"{debian}{cache_dir() / name} or a one-time download"


def _not_in_chosen(name: str, folder: Path, how: str) -> DatasetNotFoundError:
    """The error of a chosen folder (``--data-dir`` or ``$JAXBYZ_DATA_DIR``) without the files."""
    if not folder.exists():
        problem = "the folder does not exist"
    elif not folder.is_dir():
        problem = "it is not a folder"
    else:
        best = min((folder, folder / name), key=lambda f: len(_lacking(f)))
        problem = f"{best} lacks {', '.join(_lacking(best))}"
    drop = "drop --data-dir" if how == "--data-dir" else "unset JAXBYZ_DATA_DIR"
    return DatasetNotFoundError(
        f"--dataset {name}: not found in {how} {folder}: {problem} (a chosen folder is the only "
        f"one searched); fix: put the four IDX files (gzipped or not) in {folder} or "
        f"{folder / name}, or {drop} to use {_default_search(name)}, or run with --dataset "
        "synthetic"
    )


def _not_found(name: str, folders: list[Path], reasons: list[str]) -> DatasetNotFoundError:
    searched = ", ".join(str(f) for f in folders)
    debian = " or `apt-get install -y dataset-fashion-mnist`" if name == "fashion-mnist" else ""
    return DatasetNotFoundError(
        f"--dataset {name}: not found (searched {searched}; {'; '.join(reasons)}). "
        f"Fix: put the four IDX files in a folder and pass --data-dir DIR (or set JAXBYZ_DATA_DIR)"
        f"{debian}, or allow a one-time download (network), or `pip install tensorflow-datasets` "
        f"and use --dataset {name.replace('-', '_')}; or run with --dataset synthetic"
    )


def _damaged_fix(name: str, folder: Path) -> str:
    """How to repair damaged IDX files of ``folder``."""
    if folder == cache_dir() / name:
        return f"fix: delete {folder} to download the dataset again"
    if name in DEBIAN_DIRS and folder == Path(DEBIAN_DIRS[name]):
        return f"fix: `apt-get install --reinstall dataset-{name}`"
    return "fix: replace the file with the dataset's original one"


def read_idx_folder(name: str, folder: Path) -> Dataset:
    """Read and check the four IDX files of dataset ``name`` (``fashion-mnist`` or ``mnist``)
    in ``folder`` (which must hold them); raises :class:`DatasetError` naming the file."""
    paths = {key: _find_idx(folder, stem) for key, stem in IDX_FILES.items()}
    arrays = {}
    try:
        for key, path in paths.items():
            arrays[key] = read_idx(path)
        labels = {
            split: check_split(
                name,
                arrays[f"{split}_x"],
                arrays[f"{split}_y"],
                IMAGE_SHAPES[name][:2],
                NUM_CLASSES[name],
                (str(paths[f"{split}_x"]), str(paths[f"{split}_y"])),
            )
            for split in ("train", "test")
        }
    except DatasetError as err:
        fix = "" if "fix:" in str(err) else f"; {_damaged_fix(name, folder)}"
        raise DatasetError(f"--dataset {name}: {err}{fix}") from None
    mean, std, flip = PREPROCESS[name]
    return Dataset(
        name=name,
        train_x=arrays["train_x"][..., None],
        train_y=labels["train"],
        test_x=arrays["test_x"][..., None],
        test_y=labels["test"],
        num_classes=NUM_CLASSES[name],
        scale=1.0 / 255.0,
        mean=mean,
        std=std,
        flip=flip,
    )


def load_idx_dataset(
    name: str, data_dir: str | os.PathLike | None = None, download: bool = True
) -> Dataset:
    """Load ``fashion-mnist`` or ``mnist`` from IDX files (see the module's docstring for where
    they are searched), downloading them once if allowed and no folder was chosen."""
    chosen = _chosen_dir(data_dir)
    folders = idx_folders(name, data_dir)
    folder = next((f for f in folders if idx_complete(f)), None)
    if chosen is not None:
        if folder is None:
            raise _not_in_chosen(name, *chosen)
        return read_idx_folder(name, folder)
    reasons = []
    if folder is None and download:
        try:
            _download_idx(name, cache_dir() / name)
            folder = cache_dir() / name
        except (OSError, http.client.HTTPException) as err:
            reasons.append(f"download failed: {_first_line(err)}")
    if folder is None:
        try:
            return load_tfds_dataset(name.replace("-", "_"), data_dir=None, download=download)
        except DatasetNotFoundError as err:
            reasons.append(f"tensorflow-datasets: {err}")
        raise _not_found(name, folders, reasons)
    return read_idx_folder(name, folder)


# --------------------------------------------------------------------------------------------- #
# tensorflow-datasets


def _tfds_items(source) -> list[dict[str, Any]]:
    try:
        return list(source.__getitems__(list(range(len(source)))))
    except TypeError:  # tfds.testing.mock_data patches sources without a bound __getitems__
        return [source[i] for i in range(len(source))]


def _tfds_split(
    name: str, split: str, items: list[dict[str, Any]], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    where = f"tensorflow-datasets {name} split {split!r}"
    if not items:
        raise DatasetError(f"--dataset {name}: {where} holds no images")
    try:
        images = np.stack([np.asarray(item["image"]) for item in items])
    except ValueError:
        shapes = sorted({np.shape(item["image"]) for item in items})
        raise DatasetError(
            f"--dataset {name}: {where} holds images of different shapes "
            + ", ".join(_shape(s) for s in shapes[:4])
        ) from None
    labels = np.asarray([item["label"] for item in items])
    if images.ndim == 3:
        images = images[..., None]
    try:
        labels = check_split(name, images, labels, IMAGE_SHAPES[name], num_classes, (where, where))
    except DatasetError as err:
        raise DatasetError(f"--dataset {name}: {err}") from None
    return images, labels


def load_tfds_dataset(
    name: str, data_dir: str | os.PathLike | None = None, download: bool = True
) -> Dataset:
    """Load ``mnist``, ``fashion_mnist``, ``cifar10`` or ``cifar100`` with ``tfds.data_source``,
    and check it (:func:`check_split`)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DatasetNotFoundError(
            f"--dataset {name} needs tensorflow-datasets: `pip install 'jaxbyz[tfds]'` (or "
            "`pip install tensorflow-datasets`)"
        ) from err
    try:
        sources = tfds.data_source(
            name,
            split=["train", "test"],
            data_dir=None if data_dir is None else str(data_dir),
            download=download,
        )
        items = {"train": _tfds_items(sources[0]), "test": _tfds_items(sources[1])}
        info = tfds.builder(name, data_dir=None if data_dir is None else str(data_dir)).info
        num_classes = int(info.features["label"].num_classes)
    except Exception as err:  # tfds raises many kinds: report them all the same way
        raise DatasetNotFoundError(
            f"--dataset {name}: tensorflow-datasets could not prepare it ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); fix: run once with network access, "
            f"or pass --data-dir to a prepared tfds folder, or use --dataset synthetic"
        ) from err
    expected = NUM_CLASSES.get(name, num_classes)
    if num_classes != expected:
        raise DatasetError(
            f"--dataset {name}: tensorflow-datasets describes {num_classes} classes, "
            f"expected {expected}"
        )
    train_x, train_y = _tfds_split(name, "train", items["train"], num_classes)
    test_x, test_y = _tfds_split(name, "test", items["test"], num_classes)
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
    if not shape or any(int(n) != n or n < 1 for n in shape):
        raise ValueError(f"synthetic dataset: shape must be positive integers, got {shape}")
    if not np.isfinite(separation):
        raise ValueError(f"synthetic dataset: separation must be finite, got {separation}")
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
    for images, labels, split in ((train_x, train_y, "train"), (test_x, test_y, "test")):
        where = f"synthetic split {split!r}"
        check_split("synthetic", images, labels, shape, num_classes, (where, where), np.float32)
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


# --------------------------------------------------------------------------------------------- #
# Non-IID partitions of the honest workers (--partition)

PARTITION_FORMS = (
    "iid, sorted, dirichlet:ALPHA (ALPHA > 0), shards:K (an integer K >= 1), gamma:G (0 <= G <= 1)"
)
# partitions drawn from the run's seed (the others are the same for every seed)
SEEDED_PARTITIONS = ("dirichlet", "shards", "gamma")
_EXAMPLES = {"dirichlet": "0.5", "shards": "2", "gamma": "0.5"}


def _bad_partition(spec: Any, why: str) -> ValueError:
    return ValueError(f"--partition {spec!r} is invalid: {why}; accepted: {PARTITION_FORMS}")


def parse_partition(spec: str) -> tuple[str, float | int | None]:
    """``spec`` (``--partition``) as ``(kind, parameter)``: ``("iid", None)``, ``("sorted",
    None)``, ``("dirichlet", alpha)``, ``("shards", k)`` or ``("gamma", g)``.

    Raises a one-line ValueError naming ``--partition``, the value and the accepted forms.
    """
    if not isinstance(spec, str):
        raise _bad_partition(spec, "it must be a string")
    kind, sep, raw = spec.strip().lower().partition(":")
    if kind in ("iid", "sorted"):
        if sep:
            raise _bad_partition(spec, f"{kind} takes no parameter")
        return kind, None
    if kind not in SEEDED_PARTITIONS:
        raise _bad_partition(spec, f"unknown partition {kind!r}")
    if not raw.strip():
        raise _bad_partition(spec, f"{kind} needs a parameter, e.g. {kind}:{_EXAMPLES[kind]}")
    if kind == "shards":
        try:
            k = int(raw)
        except ValueError:
            k = None
        if k is None or k < 1:
            raise _bad_partition(spec, f"K={raw.strip()} must be an integer >= 1")
        return kind, k
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if kind == "dirichlet" and not (math.isfinite(value) and value > 0):
        raise _bad_partition(spec, f"ALPHA={raw.strip()} must be a finite number > 0")
    if kind == "gamma" and not 0.0 <= value <= 1.0:
        raise _bad_partition(spec, f"G={raw.strip()} must be a number in [0, 1]")
    return kind, value


def resolve_partition(
    partition: str, dirichlet_alpha: float | None = None
) -> tuple[str, float | int | None]:
    """The partition of a configuration: ``--partition``, where ``--dirichlet-alpha A`` is an
    alias of ``--partition dirichlet:A``. Both given and different: ValueError."""
    parsed = parse_partition(partition)
    if dirichlet_alpha is None:
        return parsed
    alias = ("dirichlet", dirichlet_alpha)
    if parsed[0] != "iid" and parsed != alias:
        raise ValueError(
            f"--partition {partition!r} and --dirichlet-alpha {dirichlet_alpha!r} disagree "
            f"(--dirichlet-alpha A is --partition dirichlet:A); fix: give only one of them"
        )
    return alias


def partition_uses_seed(partition: str, dirichlet_alpha: float | None = None) -> bool:
    """Whether the partition is drawn from the run's seed (True also for an invalid one, which
    the checks refuse elsewhere)."""
    try:
        return resolve_partition(partition, dirichlet_alpha)[0] in SEEDED_PARTITIONS
    except ValueError:
        return True


def _table(owned: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(table, lengths)`` of :func:`dirichlet_partition` from each worker's indices."""
    lengths = np.array([len(o) for o in owned], np.int32)
    table = np.stack([np.resize(np.asarray(o, np.int32), lengths.max()) for o in owned])
    return table, lengths


def _check_split(spec: str, num_examples: int, num_workers: int) -> None:
    if num_workers < 1 or num_examples < num_workers:
        raise ValueError(
            f"--partition {spec}: the {num_examples} training examples cannot be split across "
            f"{num_workers} honest workers (each needs at least one); fix: fewer workers or a "
            "larger training set"
        )


def _by_label(labels: np.ndarray, indices: np.ndarray | None = None) -> np.ndarray:
    """``indices`` (default: all) sorted by label, in index order within a label."""
    indices = np.arange(len(labels)) if indices is None else np.sort(indices)
    return indices[np.argsort(labels[indices], kind="stable")]


def sorted_partition(labels: np.ndarray, num_workers: int) -> tuple[np.ndarray, np.ndarray]:
    """The examples sorted by label (index order within a label), cut in ``num_workers``
    contiguous blocks of sizes ``floor(N / w)`` or one more (the first ``N mod w`` blocks):
    ByzFL's ``extreme_niid``. Every example is owned once; needs ``N >= w``; no randomness."""
    _check_split("sorted", len(labels), num_workers)
    return _table(np.array_split(_by_label(labels), num_workers))


def shards_partition(
    labels: np.ndarray, num_workers: int, shards: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """McMahan et al. (AISTATS 2017)'s pathological non-IID split: the examples sorted by label,
    cut in ``shards x w`` contiguous shards (sizes ``floor(N / (k w))`` or one more), each worker
    given ``shards`` of them drawn without replacement from ``seed``. Every example is owned
    once; needs ``N >= shards x w``."""
    total = shards * num_workers
    if shards < 1 or len(labels) < total:
        raise ValueError(
            f"--partition shards:{shards}: {total} shards ({shards} per honest worker x "
            f"{num_workers}) cannot be cut from {len(labels)} training examples; fix: a smaller "
            "K or fewer workers"
        )
    pieces = np.array_split(_by_label(labels), total)
    order = np.random.default_rng(seed).permutation(total).reshape(num_workers, shards)
    return _table([np.concatenate([pieces[s] for s in row]) for row in order])


def gamma_partition(
    labels: np.ndarray, num_workers: int, gamma: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """ByzFL's ``gamma_similarity_niid``: ``floor(gamma N)`` examples shuffled and split evenly
    (the IID share), the other ``N - floor(gamma N)`` sorted by label and cut in ``w``
    contiguous blocks (:func:`sorted_partition`); worker ``i`` owns one IID piece and block
    ``i``. ``gamma = 1``: an IID split; ``gamma = 0``: :func:`sorted_partition`.

    Two choices differ from ByzFL (``byzfl/fed_framework/data_distributor.py``, checked): the
    IID share is a random subset drawn from ``seed`` (ByzFL takes the first ``floor(gamma N)``
    examples in stored order, which depends on how the files are ordered), and worker ``i``
    gets IID piece ``w - 1 - i`` (``numpy.array_split`` makes the first pieces of both splits
    the larger, so ByzFL's worker sizes can differ by 2; reversed, they differ by at most 1 and
    no worker is empty when ``N >= w``). Every example is owned once.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"--partition gamma:{gamma} is invalid: G must be in [0, 1]")
    _check_split(f"gamma:{gamma}", len(labels), num_workers)
    shared_count = int(len(labels) * gamma)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    shared = np.array_split(order[:shared_count], num_workers)
    blocks = np.array_split(_by_label(labels, order[shared_count:]), num_workers)
    return _table(
        [np.concatenate([shared[num_workers - 1 - i], blocks[i]]) for i in range(num_workers)]
    )


def honest_partition(
    labels: np.ndarray,
    num_workers: int,
    partition: str = "iid",
    seed: int = 0,
    dirichlet_alpha: float | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The training examples of each of ``num_workers`` honest workers as ``(table [w, L],
    lengths [w])`` (see :func:`dirichlet_partition`), or None for ``iid`` (each worker draws from
    the whole training set). ``partition`` is ``--partition``, ``dirichlet_alpha`` its alias
    ``--dirichlet-alpha`` (:func:`resolve_partition`); host-side NumPy, deterministic in
    ``seed``."""
    kind, value = resolve_partition(partition, dirichlet_alpha)
    labels = np.asarray(labels)
    if kind == "iid":
        return None
    if kind == "dirichlet":
        return dirichlet_partition(labels, num_workers, value, seed=seed)
    if kind == "shards":
        return shards_partition(labels, num_workers, int(value), seed)
    if kind == "gamma":
        return gamma_partition(labels, num_workers, float(value), seed)
    return sorted_partition(labels, num_workers)


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
