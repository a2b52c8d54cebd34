"""NumPy on the host inside XLA programs (the CPU backend only): order statistics over the worker
axis and the Gram matrix, as XLA FFI custom calls.

On the CPU backend XLA has no fast selection: its sort is generic and slow, and a sorting network
over ``n > 128`` rows costs ``O(n log² n)`` compare-exchanges per coordinate (the median of
256 x 79,510 floats took 628 ms layer by layer on column blocks, NumPy's ``np.partition`` 143 ms).
Its dot computes ``X Xᵀ`` as a general product where BLAS runs a symmetric rank-k update (half the
multiply-adds). Both are therefore handed to NumPy, inside the compiled program:

- :func:`select`: the ``[n, d]`` matrix is cut into blocks of columns of about 1 MB, each
  transposed into a contiguous ``[c, n]`` block (in cache), where every coordinate is a contiguous
  row of ``n`` values; in each block the window of ranks ``lo .. hi`` is brought to its sorted
  place by single-``kth`` introselects (``partition`` at ``hi``, then at ``lo`` among the values
  below ``x_(hi)``) and a sort of the values strictly between them, ``O(n + (hi - lo) log(hi -
  lo))`` per coordinate; the blocks are spread over a thread pool of one thread per core (NumPy
  releases the GIL in its copies, partitions and sorts); the rows ``x_(lo) .. x_(hi)`` are written
  into XLA's result ``[hi - lo + 1, d]``.
- :func:`gram`: ``np.dot(X, X.T)`` (BLAS ``syrk``, float32 accumulation, no reduced precision)
  written into XLA's result ``[n, n]``; with ``d`` large, as the sum (in a fixed order) of the
  Gram matrices of one contiguous block of columns per core, each computed by OpenBLAS
  restricted to its calling thread of the pool (``openblas_set_num_threads_local``). OpenBLAS's
  own threads spin while they wait, and where other work shares the cores one call took 50 times
  longer than XLA's dot; threads of the pool block instead. Without that control (another BLAS
  than NumPy's OpenBLAS) it is one ``np.dot``.

Exactness: an order statistic is a value of the input, so the selected rows equal, bit for bit,
those of any other exact method (the sorting network, ``jnp.sort``) except for the sign of a zero
when ``-0.0`` and ``+0.0`` tie; the sums over ranks that the rules take afterwards run in XLA as
before. NaN: callers replace NaN by +Inf for values; a NaN that remains (a distance key computed
from an infinite centre) makes every rank of its coordinate NaN, as the NaN-propagating
``min``/``max`` of a sorting network do (every output of a sorting network depends on every
input). The Gram matrix agrees with XLA's to float32 rounding (another order of additions).

Why an FFI call and not ``jax.pure_callback``: the callback copies its operand into a fresh host
array first, which for the 81 MB of a 256 x 79,510 matrix took 60 to 340 ms on the 2-core VM (as
long as the selection itself), and programs holding Python callbacks are never written to JAX's
persistent compilation cache. An FFI handler receives pointers to XLA's own buffers; the one here
is a ctypes function (no compiled extension) reading the C structures of ``xla/ffi/api/c_api.h``
(API 0.x, a stable binary interface): it answers XLA's metadata query, ignores the stages before
execution, wraps operands and results as NumPy arrays without copying, and turns a Python
exception into an XLA error. It holds the GIL while it runs Python (NumPy's kernels release it).

Transformations: ``vmap`` reaches the handler as leading batch axes (``expand_dims``), looped
over; ``jit`` and ``lax.scan`` need nothing; in a sharded program XLA gathers the operand
(``shard_map`` calls it on each device's block). Derivatives come from ``custom_jvp``: the tangent
of ``x_(r)`` is the tangent of the entry it selects (ties: the lowest row index; its indices come
from a stable ``argsort``, computed only when differentiating), the tangent of ``X Xᵀ`` is
``dX Xᵀ + X dXᵀ`` by XLA. Callers use these only on the CPU backend (``lax.platform_dependent`` in
:mod:`jaxbyz.aggregators.order` and :mod:`jaxbyz.aggregators.distance`).
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

BLOCK_BYTES = 1 << 20  # a transposed block of columns: about the size of a core's L2 cache
MIN_BLOCK_COLUMNS = 64
GRAM_MIN_COLUMNS = 4096  # columns per thread below which the Gram matrix is one BLAS call
SUPPORTED = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16))


@functools.cache
def _pool() -> ThreadPoolExecutor:
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return ThreadPoolExecutor(max(1, threads or 1), thread_name_prefix="jaxbyz-select")


def block_columns(n: int, itemsize: int) -> int:
    """Columns per transposed block: about :data:`BLOCK_BYTES` of ``n`` values each."""
    return max(MIN_BLOCK_COLUMNS, BLOCK_BYTES // (n * itemsize))


def _sort_window(T: np.ndarray, lo: int, hi: int) -> None:
    """Rows of ``T`` ``[c, n]`` rearranged in place so that ``T[:, lo:hi+1]`` holds the ranks
    ``lo .. hi`` of each row, sorted."""
    T.partition(hi, axis=1)  # T[:, :hi] <= T[:, hi] <= T[:, hi+1:]
    if lo == hi:
        return
    if lo == 0:
        T[:, :hi].sort(axis=1)
        return
    T[:, :hi].partition(lo, axis=1)
    if hi - lo >= 2:
        T[:, lo + 1 : hi].sort(axis=1)


def _window_block(
    X: np.ndarray, out: np.ndarray, a: int, b: int, lo: int, hi: int, nan_as_inf: bool
) -> None:
    T = np.ascontiguousarray(X[:, a:b].T)
    nan = None
    if not nan_as_inf and np.isnan(T.max()):  # NaN propagates through max: one pass
        nan = np.isnan(T).any(axis=1)
    _sort_window(T, lo, hi)  # NaN sorts after +Inf: with NaN as +Inf, the same ranks
    window = T[:, lo : hi + 1]
    if nan is not None:
        window[nan] = np.nan
    if nan_as_inf:
        np.copyto(window, np.inf, where=np.isnan(window))
    out[:, a:b] = window.T


def _argwindow_block(
    X: np.ndarray, out: np.ndarray, a: int, b: int, lo: int, hi: int, nan_as_inf: bool
) -> None:
    order = np.argsort(X[:, a:b], axis=0, kind="stable")
    out[:, a:b] = order[lo : hi + 1]


def _by_blocks(block_fn, X: np.ndarray, out: np.ndarray, *ranks_and_mode) -> None:
    n, d = X.shape
    step = block_columns(n, X.dtype.itemsize)
    starts = range(0, d, step)
    if len(starts) == 1:
        block_fn(X, out, 0, d, *ranks_and_mode)
        return
    jobs = [_pool().submit(block_fn, X, out, a, min(a + step, d), *ranks_and_mode) for a in starts]
    for job in jobs:
        job.result()


def _windows(X: np.ndarray, out: np.ndarray, lo: int, hi: int, nan_as_inf: bool) -> None:
    """``out`` ``[..., hi-lo+1, d]`` filled from ``X`` ``[..., n, d]`` (leading batch axes):
    the sorted ranks (float ``out``) or their row indices (int32 ``out``)."""
    n, d = X.shape[-2:]
    block_fn = _argwindow_block if out.dtype == np.int32 else _window_block
    flat_x, flat_out = X.reshape(-1, n, d), out.reshape(-1, hi - lo + 1, d)
    for i in range(flat_x.shape[0]):
        _by_blocks(block_fn, flat_x[i], flat_out[i], lo, hi, nan_as_inf)


# ---------------------------------------------------------------------------------------------- #
# The XLA FFI custom calls (CPU), implemented in Python through ctypes: see the module doc.

_TARGET = "jaxbyz_select_window"
_GRAM_TARGET = "jaxbyz_gram"
_FFI_API_VERSION = (0, 1)
_EXECUTE = 3
_METADATA = 1
_ERROR_INTERNAL = 13
_DTYPES = {4: np.int32, 10: np.float16, 11: np.float32, 12: np.float64}


class _ExtensionBase(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_size_t), ("type", ctypes.c_int), ("next", ctypes.c_void_p)]


class _ApiVersion(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("extension_start", ctypes.c_void_p),
        ("major_version", ctypes.c_int),
        ("minor_version", ctypes.c_int),
    ]


class _Metadata(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("api_version", _ApiVersion),
        ("traits", ctypes.c_uint32),
        ("state_type_id", ctypes.c_int64),
    ]


class _MetadataExtension(ctypes.Structure):
    _fields_ = [("extension_base", _ExtensionBase), ("metadata", ctypes.POINTER(_Metadata))]


class _Buffer(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("extension_start", ctypes.c_void_p),
        ("dtype", ctypes.c_int),
        ("data", ctypes.c_void_p),
        ("rank", ctypes.c_int64),
        ("dims", ctypes.POINTER(ctypes.c_int64)),
    ]


class _List(ctypes.Structure):  # XLA_FFI_Args and XLA_FFI_Rets
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("extension_start", ctypes.c_void_p),
        ("size", ctypes.c_int64),
        ("types", ctypes.c_void_p),
        ("items", ctypes.POINTER(ctypes.c_void_p)),
    ]


class _Attrs(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("extension_start", ctypes.c_void_p),
        ("size", ctypes.c_int64),
        ("types", ctypes.c_void_p),
        ("names", ctypes.c_void_p),
        ("attrs", ctypes.c_void_p),
    ]


class _CallFrame(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("extension_start", ctypes.POINTER(_ExtensionBase)),
        ("api", ctypes.c_void_p),
        ("ctx", ctypes.c_void_p),
        ("stage", ctypes.c_int),
        ("args", _List),
        ("rets", _List),
        ("attrs", _Attrs),
        ("future", ctypes.c_void_p),
    ]


class _ErrorCreateArgs(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("extension_start", ctypes.c_void_p),
        ("message", ctypes.c_char_p),
        ("errc", ctypes.c_int),
    ]


class _ApiHead(ctypes.Structure):  # XLA_FFI_Api up to its first function, XLA_FFI_Error_Create
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("extension_start", ctypes.c_void_p),
        ("api_version", _ApiVersion),
        ("internal_api", ctypes.c_void_p),
        ("error_create", ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(_ErrorCreateArgs))),
    ]


def _array(pointer: int) -> np.ndarray:
    """The XLA buffer at ``pointer`` as a NumPy array sharing its memory."""
    buffer = ctypes.cast(pointer, ctypes.POINTER(_Buffer)).contents
    dims = tuple(buffer.dims[i] for i in range(buffer.rank))
    dtype = np.dtype(_DTYPES[buffer.dtype])
    size = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if size == 0:
        return np.empty(dims, dtype)
    raw = (ctypes.c_char * size).from_address(buffer.data)
    return np.frombuffer(raw, dtype).reshape(dims)


def _error(frame: _CallFrame, message: str) -> int | None:
    api = ctypes.cast(frame.api, ctypes.POINTER(_ApiHead)).contents
    args = _ErrorCreateArgs(
        ctypes.sizeof(_ErrorCreateArgs), None, message.encode(), _ERROR_INTERNAL
    )
    return api.error_create(ctypes.byref(args))


def _handler(name: str, body):
    """A ctypes XLA FFI handler: ``body(args, rets)`` on the operands and results as NumPy
    arrays sharing XLA's buffers (``rets`` filled in place)."""

    def handle(frame_pointer: ctypes._Pointer) -> int | None:
        frame = frame_pointer.contents
        extension = frame.extension_start
        if extension:
            if extension.contents.type == _METADATA:
                ext = ctypes.cast(extension, ctypes.POINTER(_MetadataExtension)).contents
                ext.metadata.contents.api_version.major_version = _FFI_API_VERSION[0]
                ext.metadata.contents.api_version.minor_version = _FFI_API_VERSION[1]
                ext.metadata.contents.traits = 0
            return None
        if frame.stage != _EXECUTE:
            return None
        try:
            args = [_array(frame.args.items[i]) for i in range(frame.args.size)]
            rets = [_array(frame.rets.items[i]) for i in range(frame.rets.size)]
            body(args, rets)
        except BaseException as err:  # reported to XLA, which raises it in the caller
            return _error(frame, f"{name}: {type(err).__name__}: {err}")
        return None

    handler = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(_CallFrame))(handle)
    _HANDLERS[name] = handler  # ctypes frees the function pointer with its Python object
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(handler), platform="cpu")


def _window_body(args: list[np.ndarray], rets: list[np.ndarray]) -> None:
    X, bounds = args
    lo, hi, nan_as_inf = (int(v) for v in bounds.reshape(-1)[:3])
    _windows(X, rets[0], lo, hi, bool(nan_as_inf))


@functools.cache
def _blas_local_threads() -> Any:
    """OpenBLAS's ``openblas_set_num_threads_local`` (the BLAS NumPy loaded; OpenBLAS >= 0.3.27:
    the calling thread's count only), or None where NumPy's BLAS is another library."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            setter = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        setter.argtypes, setter.restype = [ctypes.c_int], ctypes.c_int
        return setter
    return None


def blas_single_threaded() -> bool:
    """Whether this process can run BLAS single-threaded in a chosen thread (see :func:`gram`)."""
    return _blas_local_threads() is not None


def _partial_gram(X: np.ndarray, a: int, b: int) -> np.ndarray:
    """``X[:, a:b] X[:, a:b]ᵀ`` by BLAS ``syrk`` in the calling thread alone, on a contiguous
    copy of the block (NumPy's product of the strided view took twice as long)."""
    setter = _blas_local_threads()
    previous = setter(1) if setter is not None else None
    try:
        block = np.ascontiguousarray(X[:, a:b])
        with np.errstate(all="ignore"):  # ±Inf and NaN rows propagate silently, as in XLA
            return np.dot(block, block.T)
    finally:
        if setter is not None:
            setter(previous)


def _blocked_gram(X: np.ndarray, out: np.ndarray) -> None:
    """``out = X Xᵀ`` as the sum, in a fixed order, of the Gram matrices of one contiguous block
    of columns per core, each computed by single-threaded BLAS on a thread of the pool."""
    d = X.shape[1]
    parts = min(_pool()._max_workers, max(1, d // GRAM_MIN_COLUMNS))
    if parts == 1 or not blas_single_threaded():
        with np.errstate(all="ignore"):
            np.dot(X, X.T, out=out)
        return
    bounds = [d * i // parts for i in range(parts + 1)]
    jobs = [_pool().submit(_partial_gram, X, a, b) for a, b in itertools.pairwise(bounds)]
    total = jobs[0].result()
    for job in jobs[1:]:
        total += job.result()
    out[...] = total


def _gram_body(args: list[np.ndarray], rets: list[np.ndarray]) -> None:
    (X,), (K,) = args, rets
    n, d = X.shape[-2:]
    flat_x, flat_k = X.reshape(-1, n, d), K.reshape(-1, n, n)
    for i in range(flat_x.shape[0]):
        _blocked_gram(flat_x[i], flat_k[i])


_HANDLERS: dict[str, object] = {}
_handler(_TARGET, _window_body)
_handler(_GRAM_TARGET, _gram_body)


def _window_call(X: Array, lo: int, hi: int, nan_as_inf: bool, dtype: jnp.dtype) -> Array:
    shape = jax.ShapeDtypeStruct((hi - lo + 1, X.shape[1]), dtype)
    call = jax.ffi.ffi_call(_TARGET, shape, vmap_method="expand_dims")
    return call(X, jnp.asarray([lo, hi, int(nan_as_inf)], jnp.int32))


@jax.custom_jvp
def gram(X: Array) -> Array:
    """``X Xᵀ`` ``[n, n]`` of ``X`` ``[n, d]`` (float32 or float64) by the host's BLAS, as
    ``X @ X.T`` in NumPy (a symmetric rank-k update: half the products of a general one).
    Derivative: ``dX Xᵀ + X dXᵀ``, by XLA."""
    shape = jax.ShapeDtypeStruct((X.shape[0], X.shape[0]), X.dtype)
    return jax.ffi.ffi_call(_GRAM_TARGET, shape, vmap_method="expand_dims")(X)


@gram.defjvp
def _gram_jvp(primals: tuple, tangents: tuple) -> tuple[Array, Array]:
    (X,), (dX,) = primals, tangents
    P = jnp.dot(dX, X.T, precision=jax.lax.Precision.HIGHEST)
    return gram(X), P + P.T


def gram_supported(X: Array) -> bool:
    """Whether :func:`gram` handles ``X``'s dtype (BLAS: float32, float64)."""
    return np.dtype(X.dtype) in (np.dtype(np.float32), np.dtype(np.float64))


def supported(X: Array) -> bool:
    """Whether :func:`select` handles ``X``'s dtype (floating point NumPy sorts natively)."""
    return np.dtype(X.dtype) in SUPPORTED


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def select(X: Array, lo: int, hi: int, nan_as_inf: bool = False) -> Array:
    """The order statistics ``x_(lo) .. x_(hi)`` (0-based, inclusive) over axis 0 of ``X``
    ``[n, d]``, as ``[hi - lo + 1, d]`` rows, computed on the host by NumPy (module doc).

    ``nan_as_inf``: NaN counts as +Inf (exactly the ranks of ``nan_to_inf(X)``, without XLA
    writing that matrix first); else a NaN makes every rank of its coordinate NaN."""
    n = X.shape[0]
    if not 0 <= lo <= hi < n:
        raise ValueError(f"ranks {lo}..{hi} out of range for {n} rows")
    return _window_call(X, lo, hi, nan_as_inf, X.dtype)


@select.defjvp
def _select_jvp(
    lo: int, hi: int, nan_as_inf: bool, primals: tuple, tangents: tuple
) -> tuple[Array, Array]:
    (X,), (dX,) = primals, tangents
    rows = jax.lax.stop_gradient(_window_call(X, lo, hi, nan_as_inf, jnp.int32))
    return select(X, lo, hi, nan_as_inf), jnp.take_along_axis(dX, rows, axis=0)
