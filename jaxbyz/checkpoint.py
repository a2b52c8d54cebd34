"""Run-state checkpoints: save a pytree of JAX arrays every K steps, restore it bit-exactly.

What is saved. Any pytree of arrays (``chex.dataclass``, NamedTuples such as optax states with
leaf-free ``EmptyState()`` nodes, dicts, tuples): every leaf, by its key path, with its exact
dtype and bits. Typed PRNG keys (``jax.random.key``, dtype ``key<fry>``) are stored as their raw
``jax.random.key_data`` (uint32) and re-wrapped with their implementation on restore, so the
restored key draws the same numbers. With the arrays goes a JSON dictionary (the run's
configuration, ...) to which :func:`save` adds ``"step"`` and ``"checkpoint_format"``.

Where. ``<directory>/<step>/``; the training CLI uses ``<result-directory>/checkpoints/``.
:func:`resolve` accepts a result directory, its ``checkpoints/`` folder or one step folder.

Atomicity. orbax writes a checkpoint into ``<step>.orbax-checkpoint-tmp``, writes
``commit_success.txt`` last, then renames the folder to ``<step>`` (one ``rename``, atomic on a
POSIX file system). :func:`steps` lists only folders named by a number that hold
``commit_success.txt``, so a process killed (even by SIGKILL) at any moment leaves the previous
complete checkpoints plus, at most, a temporary folder that is never loaded and that the next
:func:`save` deletes. Old checkpoints are pruned only after the new one is complete, each by a
rename to ``<step>.deleting`` before its removal, so a half-deleted folder is never listed
either. (No fsync: a power loss, unlike a killed process, may lose recently written data.)

Layout on disk (orbax-checkpoint 0.12, OCDBT/zarr arrays)::

    <directory>/<step>/
        _CHECKPOINT_METADATA          orbax: item names, timestamps
        commit_success.txt            written last, before the rename
        metadata/metadata             the JSON dictionary (readable with ``cat``)
        state/                        the arrays: a flat dict {"state.momenta": ...,
            _METADATA, manifest.ocdbt, "state.opt[1].mu": ...}, names = jax key paths;
            ocdbt.process_0/, d/ ...  custom metadata: which leaves are PRNG keys (their impl)

Why orbax. It is JAX's standard checkpointer: it writes and reads ``jax.Array`` shards in
parallel from every device (and host) straight into the target ``NamedSharding``, handles the
temporary-folder-and-rename atomicity and multi-host coordination, and stores arrays in an
open format (tensorstore/zarr). It is imported only inside these functions: a run without
checkpoints does not pay its import time.

Saving is synchronous: :func:`save` returns once the checkpoint is complete on disk. An async
save would overlap the writing with the next steps, but on a few shared CPU cores the writer
competes with the training for the same cores, and a synchronous save keeps the guarantee
simple (when ``save`` returns, the checkpoint is there).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jax
import numpy as np

CHECKPOINT_FORMAT = 1  # bump when the layout of the saved state changes
SUBDIR = "checkpoints"  # <result-directory>/checkpoints/
COMMIT_FILE = "commit_success.txt"  # orbax writes it last, inside the temporary folder
METADATA_FILE = Path("metadata") / "metadata"  # orbax JsonSave of item "metadata"
_DELETING = ".deleting"


# ----------------------------------------------------------------------------- listing


def _is_complete(folder: Path) -> bool:
    return folder.name.isdigit() and (folder / COMMIT_FILE).is_file()


def _numbered(directory: Path) -> list[Path]:
    """The folders of ``directory`` named by a number (orbax takes each for a checkpoint)."""
    if not directory.is_dir():
        return []
    return [p for p in directory.iterdir() if p.name.isdigit() and p.is_dir()]


def steps(directory: str | Path) -> list[int]:
    """The steps of the complete checkpoints in ``directory``, ascending (temporary, partial
    and half-deleted folders are ignored); ``[]`` when the directory does not exist."""
    return sorted(int(p.name) for p in _numbered(Path(directory)) if _is_complete(p))


def latest(directory: str | Path) -> int | None:
    """The newest complete checkpoint's step, or None."""
    found = steps(directory)
    return found[-1] if found else None


def resolve(path: str | Path) -> tuple[Path, int]:
    """``(directory, step)`` of the checkpoint a user means by ``path``: one step folder
    (``.../checkpoints/120``), or the latest checkpoint of a checkpoints folder or of a result
    directory holding ``checkpoints/``."""
    path = Path(path)
    if _is_complete(path):
        return path.parent, int(path.name)
    for directory in (path, path / SUBDIR):
        step = latest(directory)
        if step is not None:
            return directory, step
    raise ValueError(
        f"no checkpoint at {path}: looked for a complete checkpoint folder <step>/ (holding "
        f"{COMMIT_FILE}) in {path} and in {path / SUBDIR}, or {path} being one"
    )


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of the checkpoint :func:`resolve` finds at ``path`` (without orbax)."""
    directory, step = resolve(path)
    return json.loads((directory / str(step) / METADATA_FILE).read_text())


# ----------------------------------------------------------------------------- leaves


def _leaves(tree: Any) -> tuple[list[str], list[Any], Any]:
    """Names (``"state" + key path``), leaves and treedef of ``tree``."""
    with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
    names = ["state" + jax.tree_util.keystr(path) for path, _ in with_path]
    if len(set(names)) != len(names):
        raise ValueError(f"two leaves of the state have the same key path: {names}")
    return names, [leaf for _, leaf in with_path], treedef


def _is_key(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _key_impl(leaf: Any) -> str:
    """The PRNG implementation's name of a key array or of its ``ShapeDtypeStruct``."""
    found: list[Any] = []
    jax.eval_shape(lambda k: found.append(jax.random.key_impl(k)), leaf)
    return str(found[0])


def _describe(shape: tuple[int, ...], dtype: Any) -> str:
    return f"{np.dtype(dtype).name}[{','.join(map(str, shape))}]"


# ----------------------------------------------------------------------------- orbax


@contextmanager
def _quiet_orbax() -> Iterator[None]:
    """Drop orbax's INFO logs (one line per file written, per rename, ...) even where absl's
    verbosity was lowered; its warnings and errors still reach stderr. (With the options used
    here it logs no warning on a normal save or restore: measured with orbax 0.12.8.)"""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _manager(directory: Path, *, write: bool) -> Any:
    import orbax.checkpoint as ocp

    # not `read_only=True` to read: orbax then logs two warnings per manager
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None,  # pruned here, atomically, after the save is complete
        enable_async_checkpointing=False,
        cleanup_tmp_directories=write,  # a killed save's <step>.orbax-checkpoint-tmp
        create=write,
    )
    handlers = {"state": ocp.StandardCheckpointHandler(), "metadata": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def _prune(directory: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest complete checkpoints (and leftovers of a killed
    prune), each renamed away first so that a half-deleted folder is never listed."""
    if jax.process_index() != 0:
        return
    for step in steps(directory)[:-keep]:
        folder = directory / str(step)
        folder.rename(folder.with_name(folder.name + _DELETING))
    for leftover in directory.glob(f"*{_DELETING}"):
        shutil.rmtree(leftover, ignore_errors=True)


def discard(directory: str | Path, after: int = -1) -> None:
    """Delete the checkpoints of steps above ``after`` (all by default): a run that resumes
    from an earlier step, or starts over, writes those steps again."""
    directory = Path(directory)
    for step in steps(directory):
        if step > after:
            folder = directory / str(step)
            folder.rename(folder.with_name(folder.name + _DELETING))
    for leftover in directory.glob(f"*{_DELETING}"):
        shutil.rmtree(leftover, ignore_errors=True)


def save(
    directory: str | Path, step: int, state: Any, metadata: dict[str, Any], keep: int = 2
) -> Path:
    """Write ``state`` and ``metadata`` (JSON-serialisable) as ``<directory>/<step>/``, atomically,
    then keep only the ``keep`` newest complete checkpoints. Steps must increase: a step at or
    below the latest one already there raises ``FileExistsError``/``ValueError``. Every process
    of a multi-host run must call it (orbax writes each host's shards). Returns the folder."""
    import orbax.checkpoint as ocp

    directory = Path(directory)
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    if step < 0:
        raise ValueError(f"step must be non-negative, got {step}")
    in_the_way = [p for p in _numbered(directory) if int(p.name) >= step and not _is_complete(p)]
    if in_the_way:
        raise ValueError(
            f"cannot save step {step}: {in_the_way[0]} is an incomplete checkpoint folder (no "
            f"{COMMIT_FILE}, not written by this module); move or delete it"
        )
    last = latest(directory)
    if last is not None and step <= last:
        if step == last:
            raise FileExistsError(f"checkpoint {directory / str(step)} already exists")
        raise ValueError(f"cannot save step {step} in {directory}: it holds step {last} already")
    stored = {**metadata, "step": int(step), "checkpoint_format": CHECKPOINT_FORMAT}
    json.dumps(stored)  # raise TypeError here rather than half-way through orbax
    names, leaves, _ = _leaves(state)
    keys = {name: _key_impl(x) for name, x in zip(names, leaves, strict=True) if _is_key(x)}
    arrays = {
        name: jax.random.key_data(x) if name in keys else x
        for name, x in zip(names, leaves, strict=True)
    }
    # orbax refuses arrays of size 0 (a stage with no rows): their shape and dtype suffice
    empty = {k: [list(v.shape), np.dtype(v.dtype).name] for k, v in arrays.items() if not v.size}
    arrays = {k: v for k, v in arrays.items() if k not in empty}
    custom = {"prng_keys": keys, "empty": empty}
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(arrays, custom_metadata=custom),
        metadata=ocp.args.JsonSave(stored),
    )
    with _quiet_orbax():
        manager = _manager(directory, write=True)
        try:
            if not manager.save(int(step), args=args):
                raise RuntimeError(f"orbax declined to save step {step} in {directory}")
            manager.wait_until_finished()
        finally:
            manager.close()
    _prune(directory, keep)
    return directory / str(step)


def _targets(like: Any) -> tuple[list[str], Any, dict[str, Any], dict[str, str]]:
    """Names, treedef, abstract arrays (as stored: key data for keys) and key impls of
    ``like``; leaves without a sharding go to the first local device."""
    names, leaves, treedef = _leaves(like)
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    targets, keys = {}, {}
    for name, leaf in zip(names, leaves, strict=True):
        if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
            raise TypeError(f"leaf {name} of `like` is {type(leaf).__name__}, not an array")
        sharding = getattr(leaf, "sharding", None) or default
        abstract = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)
        if _is_key(leaf):
            keys[name] = _key_impl(leaf)
            abstract = jax.eval_shape(jax.random.key_data, abstract)
        targets[name] = jax.ShapeDtypeStruct(abstract.shape, abstract.dtype, sharding=sharding)
    return names, treedef, targets, keys


def _check(
    path: Path,
    targets: dict[str, Any],
    keys: dict[str, str],
    found: dict[str, Any],
    found_keys: dict[str, str],
) -> None:
    """Raise a one-line ValueError at the first leaf where the checkpoint differs from `like`."""

    def mismatch(name: str, expected: str, got: str) -> ValueError:
        return ValueError(
            f"checkpoint {path} does not match the state: leaf {name} expected {expected}, "
            f"found {got}"
        )

    for name, target in targets.items():
        expected = _describe(target.shape, target.dtype)
        if name in keys:
            expected = f"PRNG key {keys[name]} (data {expected})"
        if name not in found:
            raise mismatch(name, expected, "no such leaf")
        got = _describe(tuple(found[name].shape), found[name].dtype)
        if name in found_keys:
            got = f"PRNG key {found_keys[name]} (data {got})"
        if got != expected:
            raise mismatch(name, expected, got)
    for name, array in found.items():
        if name not in targets:
            got = _describe(tuple(array.shape), array.dtype)
            raise mismatch(name, "no such leaf", got)


def restore(directory: str | Path, step: int, like: Any) -> tuple[Any, dict[str, Any]]:
    """The state saved at ``<directory>/<step>/`` and its metadata. ``like`` gives the
    structure, shapes, dtypes, PRNG-key types and shardings (concrete arrays or
    ``jax.ShapeDtypeStruct``, with ``.sharding`` to restore sharded); the result has them all.
    A checkpoint that differs from ``like`` raises ValueError naming the first differing leaf."""
    import orbax.checkpoint as ocp

    directory = Path(directory)
    path = directory / str(step)
    if not _is_complete(path):
        raise ValueError(f"no complete checkpoint at {path} (complete steps: {steps(directory)})")
    metadata = read_metadata(path)
    if metadata.get("checkpoint_format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"checkpoint {path} has format {metadata.get('checkpoint_format')}, this version "
            f"reads format {CHECKPOINT_FORMAT}"
        )
    names, treedef, targets, keys = _targets(like)
    with _quiet_orbax():
        manager = _manager(directory, write=False)
        try:
            saved = manager.item_metadata(step)["state"]
            custom = saved.custom_metadata or {}
            found_keys = custom.get("prng_keys", {})
            empty = {
                name: jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype))
                for name, (shape, dtype) in custom.get("empty", {}).items()
            }
            _check(path, targets, keys, {**dict(saved.tree), **empty}, found_keys)
            stored = {k: v for k, v in targets.items() if k not in empty}
            args = ocp.args.Composite(state=ocp.args.StandardRestore(stored))
            arrays = manager.restore(step, args=args)["state"] if stored else {}
        finally:
            manager.close()
    for name in empty:  # size-0 arrays, placed as `like` asks
        target = targets[name]
        arrays[name] = jax.device_put(np.zeros(target.shape, target.dtype), target.sharding)
    # a key array keeps its data's placement (replicated keys are spelled P(None,) by JAX, as
    # for any key array device_put with P())
    leaves = [
        jax.random.wrap_key_data(arrays[name], impl=keys[name]) if name in keys else arrays[name]
        for name in names
    ]
    return jax.tree_util.tree_unflatten(treedef, leaves), metadata
