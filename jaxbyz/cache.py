"""The persistent compilation cache: compiled programs kept on disk across processes.

Every entry point (``python -m jaxbyz.train``, ``python -m jaxbyz.experiments.sweep``, the
benchmarks) turns JAX's persistent compilation cache on by default, so a second run of the same
command (or a resumed sweep) loads its programs instead of compiling them again. The folder is,
in order: the ``--cache-dir`` flag, the ``JAXBYZ_CACHE_DIR`` environment variable, then
``~/.cache/jaxbyz/xla``. ``--cache-dir none`` (or ``JAXBYZ_CACHE_DIR=none``) turns it off. The
cache may be deleted at any time; JAX keys its entries by the program, the backend and the JAX
version, so a stale entry is never used.

Programs that call back into Python (``jax.pure_callback``) are not cached by JAX; programs that
compile in under :data:`MIN_COMPILE_SECONDS` are not worth a file and are not stored either.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

ENVIRONMENT = "JAXBYZ_CACHE_DIR"
OFF = ("none", "off", "")
MIN_COMPILE_SECONDS = 0.5


def default_dir() -> str:
    """The cache folder when no flag gives one: ``$JAXBYZ_CACHE_DIR`` or
    ``~/.cache/jaxbyz/xla``."""
    return os.environ.get(ENVIRONMENT, str(Path.home() / ".cache" / "jaxbyz" / "xla"))


def resolve(folder: str | Path | None) -> Path | None:
    """The folder to use for ``folder`` (a flag's value; None: :func:`default_dir`), or None
    when the cache is off."""
    value = default_dir() if folder is None else str(folder)
    return None if value.strip().lower() in OFF else Path(value).expanduser()


def enable(folder: str | Path | None = None) -> Path | None:
    """Turn the persistent cache on in ``folder`` (see :func:`resolve`); returns the folder, or
    None when off. A folder that cannot be created leaves the cache off with a ValueError naming
    the flag and the fix."""
    path = resolve(folder)
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"--cache-dir {str(path)!r} cannot be created ({err.strerror}); fix: another folder, "
            f"or --cache-dir none (or {ENVIRONMENT}=none) to compile without a cache"
        ) from None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


CACHE_HELP = (
    "persistent compilation cache: a second run of the same command compiles nothing; 'none' "
    f"turns it off (default: ${ENVIRONMENT} or ~/.cache/jaxbyz/xla)"
)
