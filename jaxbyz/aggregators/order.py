"""Order statistics over the worker axis (axis 0) of an ``[n, d]`` matrix.

XLA's generic sort is very slow on CPU (``jnp.sort`` over 51 rows of 79,510 floats: ~350 ms, 10x
PyTorch). For ``n <= NETWORK_MAX_ROWS`` the sorted rows come instead from
Batcher's odd-even merge sorting network, a fixed sequence of compare-exchanges
``(x_a, x_b) <- (min, max)`` applied to whole rows: XLA fuses the whole network and the rule that
consumes it into one elementwise loop (the median of 51 rows: ~4 ms). Only the comparators on which
the requested order statistics depend are emitted.

Above ``NETWORK_MAX_ROWS`` (where compiling one fused network takes minutes) the requested ranks
are taken as one window ``lo .. hi`` (:func:`rank_window`), chosen per platform when the program
is lowered (``lax.platform_dependent``):

- on CPU, NumPy's selection on the host (:func:`jaxbyz.aggregators.host.select`, an XLA FFI call
  reading XLA's buffer in place): introselect per coordinate on transposed column blocks, on all
  cores. The median of 256 x 79,510 floats fell from 628 ms (the network below) to NumPy's
  ``np.partition`` time on the same matrix or less (figures in ``benchmarks/README.md``);
- elsewhere, the rows ``lo .. hi`` of ``jnp.sort`` over the whole matrix: on GPU and TPU one sort
  kernel beats any blocked scheme (the blocked network below took 208 ms for the median of
  1024 x 79,510 on an H200, ~300 blocks x ~55 layers of kernel launches).

The window is returned as a :class:`RankWindow`, indexed by rank. Its values are the network's
(an order statistic is an input value: only the sign of a tied zero may differ), and the sums over
ranks that the rules take afterwards are the same XLA products over the same rows in the same
order, so the rules' results are those of the network bit for bit (``tests/test_cpu_selection.py``).
``CPU_SELECTION = "network"`` (read when a program is traced) restores the previous CPU path: the
layered network run as a ``scan`` over its layers on blocks of 256 columns that stay in cache
(:func:`columnwise`, :func:`sort_rows`), 10x faster than ``jnp.sort`` on CPU but 4-7x slower than
NumPy. Up to ``NETWORK_MAX_ROWS`` the fused network is used everywhere (on an H200 the median of
51 x 79,510 takes 0.24 ms).

Callers replace NaN by +Inf first (:func:`jaxbyz.aggregators.ops.nan_to_inf`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.lax import platform_dependent

from jaxbyz.aggregators import host
from jaxbyz.aggregators.ops import nan_to_inf
from jaxbyz.rows import row_weighted_sum

Array = jax.Array

NETWORK_MAX_ROWS = 128
CHUNK_COLUMNS = 256
CPU_SELECTION = "host"  # above NETWORK_MAX_ROWS on CPU: "host" (NumPy) or "network" (blocked)


@functools.cache
def batcher_network(n: int) -> tuple[tuple[int, int], ...]:
    """Comparators ``(a, b)``, ``a < b``, of Batcher's odd-even merge sort on ``n`` wires.

    Built for the next power of two; comparators touching a wire ``>= n`` are dropped, which is
    exact since those wires can be taken as +Inf padding that never moves.
    """
    size = 1 << max(0, (n - 1).bit_length())
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return tuple((a, b) for a, b in pairs if b < n)


@functools.cache
def pruned_network(n: int, outputs: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """The comparators of :func:`batcher_network` on which the wires ``outputs`` depend."""
    needed = set(outputs)
    kept = []
    for a, b in reversed(batcher_network(n)):
        if a in needed or b in needed:
            kept.append((a, b))
            needed.update((a, b))
    return tuple(reversed(kept))


@functools.cache
def batcher_layers(n: int) -> tuple[tuple[int, np.ndarray], ...]:
    """The comparators of :func:`batcher_network` by layers of disjoint pairs ``(w, w + k)``
    with one stride ``k`` per layer, each as ``(k, role)``: ``role[w]`` is 1 where wire ``w``
    takes the minimum (partner ``w + k``), 2 the maximum (partner ``w - k``), 0 idle."""
    layers = []
    for k, pairs in _layered_pairs(n):
        role = np.zeros((n, 1), np.int8)
        for a, b in pairs:
            role[a], role[b] = 1, 2
        layers.append((k, role))
    return tuple(layers)


def _layered_pairs(n: int) -> list[tuple[int, list[tuple[int, int]]]]:
    size = 1 << max(0, (n - 1).bit_length())
    layers = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            layer = [
                (i + j, i + j + k)
                for j in range(k % p, size - k, 2 * k)
                for i in range(min(k, size - j - k))
                if (i + j) // (2 * p) == (i + j + k) // (2 * p) and i + j + k < n
            ]
            if layer:
                layers.append((k, layer))
            k //= 2
        p *= 2
    return layers


def sort_rows(X: Array) -> Array:
    """``X`` sorted along axis 0 by the layered network, one layer per step of a scan: the rows
    shifted by the layer's stride and one ``min``/``max``/``where`` over the whole array. (Unrolled,
    XLA fuses the layers and recomputes them exponentially.) Meant for a cache-sized block of
    columns (see :func:`columnwise`)."""
    n = X.shape[0]
    layers = batcher_layers(n)
    strides = jnp.asarray([k for k, _ in layers], jnp.int32)
    roles = jnp.asarray(np.stack([role for _, role in layers]))

    def layer(X: Array, stride_role: tuple[Array, Array]) -> tuple[Array, None]:
        k, role = stride_role
        twice = jnp.concatenate([X, X])
        below = lax.dynamic_slice_in_dim(twice, k, n, axis=0)  # partner w + k
        above = lax.dynamic_slice_in_dim(twice, n - k, n, axis=0)  # partner w - k
        low, high = jnp.minimum(X, below), jnp.maximum(X, above)
        return jnp.where(role == 1, low, jnp.where(role == 2, high, X)), None

    return lax.scan(layer, X, (strides, roles))[0]


def sorted_rows(X: Array) -> Array:
    """``X`` sorted along axis 0: :func:`sort_rows` (the layered network) on CPU, XLA's sort on
    other platforms (see the module doc)."""
    return platform_dependent(X, cpu=sort_rows, default=lambda X: jnp.sort(X, axis=0))


def columnwise(body: Callable[[Array], Array], X: Array, chunk: int = CHUNK_COLUMNS) -> Array:
    """``body`` (``[n, c] -> [c]``, column by column) applied to ``X`` ``[n, d]``.

    For ``n <= NETWORK_MAX_ROWS`` it runs once on the whole matrix (a fused network), and so it
    does above when the order statistics come from the host (:data:`CPU_SELECTION` ``"host"``,
    the default). With ``"network"``, above ``NETWORK_MAX_ROWS``, on CPU it runs on blocks of
    ``chunk`` columns in a loop, so that the layered sort of each block stays in cache (the last
    block overlaps the previous one rather than padding ``X``); on other platforms once on the
    whole matrix, which it then sorts with XLA's sort.
    """
    n, d = X.shape
    if n <= NETWORK_MAX_ROWS or d <= chunk or _host_selection(X):
        return body(X)
    # off CPU, the whole matrix at once (``body`` then sorts with jnp.sort: see the module doc)
    return platform_dependent(X, cpu=lambda X: _by_blocks(body, X, chunk), default=body)


def _by_blocks(body: Callable[[Array], Array], X: Array, chunk: int) -> Array:
    d = X.shape[1]
    starts = jnp.asarray([*range(0, d - chunk, chunk), d - chunk], jnp.int32)

    def step(i: Array, out: Array) -> Array:
        block = lax.dynamic_slice_in_dim(X, starts[i], chunk, axis=1)
        return lax.dynamic_update_slice_in_dim(out, body(block), starts[i], axis=0)

    return lax.fori_loop(0, starts.shape[0], step, jnp.zeros((d,), X.dtype))


def _host_selection(X: Array) -> bool:
    """Whether order statistics of ``X`` above ``NETWORK_MAX_ROWS`` come from a window of ranks
    (host selection on CPU, ``jnp.sort`` elsewhere) rather than the blocked network."""
    return CPU_SELECTION == "host" and host.supported(X)


class RankWindow:
    """The sorted rows of ranks ``lo .. lo + k - 1`` (``rows`` ``[k, d]``), indexed by rank:
    ``S[r]`` is the row of rank ``r`` and ``S[a:b]`` the rows of ranks ``a .. b - 1``."""

    def __init__(self, rows: Array, lo: int):
        self.rows, self.lo = rows, lo

    @property
    def dtype(self) -> jnp.dtype:
        return self.rows.dtype

    def __getitem__(self, r: int | slice) -> Array:
        k = self.rows.shape[0]
        if isinstance(r, slice):
            start = self.lo if r.start is None else r.start
            stop = self.lo + k if r.stop is None else r.stop
            if r.step not in (None, 1) or not self.lo <= start <= stop <= self.lo + k:
                raise IndexError(f"ranks {r} outside the window {self.lo}..{self.lo + k - 1}")
            return self.rows[start - self.lo : stop - self.lo]
        if not self.lo <= r < self.lo + k:
            raise IndexError(f"rank {r} outside the window {self.lo}..{self.lo + k - 1}")
        return self.rows[r - self.lo]


Ranked = dict[int, Array] | Array | RankWindow


def rank_window(X: Array, lo: int, hi: int, nan_as_inf: bool = False) -> Array:
    """The sorted rows of ranks ``lo .. hi`` of ``X`` ``[n, d]``, ``[hi - lo + 1, d]``: NumPy's
    selection on the host on CPU (:func:`jaxbyz.aggregators.host.select`), the rows of
    ``jnp.sort`` elsewhere. ``nan_as_inf``: NaN counts as +Inf."""

    def sort(X: Array) -> Array:
        return jnp.sort(nan_to_inf(X) if nan_as_inf else X, axis=0)[lo : hi + 1]

    return platform_dependent(X, cpu=lambda X: host.select(X, lo, hi, nan_as_inf), default=sort)


def order_statistics(
    X: Array | Sequence[Array], ranks: Sequence[int], nan_as_inf: bool = False
) -> Ranked:
    """The order statistics ``x_(r)`` (0-based ``r``-th smallest per coordinate) of ``X``.

    ``X`` is an ``[n, d]`` matrix or a list of ``n`` rows ``[d]`` (lazy expressions that XLA fuses
    into the network). Returns ``S`` with ``S[r]`` the ``[d]`` row of rank ``r``: a dict of the
    requested ranks (network), or above ``NETWORK_MAX_ROWS`` a :class:`RankWindow` of the ranks
    from the smallest to the largest requested (or, with ``CPU_SELECTION = "network"``, the whole
    sorted matrix). Ties and ±Inf are exact. NaN must have been replaced by +Inf, or
    ``nan_as_inf=True`` given: then NaN counts as +Inf, and on the host path (CPU, above
    ``NETWORK_MAX_ROWS``) XLA does not write the replaced matrix first (a pass over ``X`` that
    costs 44 ms at 256 x 79,510 on the 2-core VM, where every fresh buffer page-faults).
    """
    n = len(X) if isinstance(X, (list, tuple)) else X.shape[0]
    wanted = tuple(sorted(set(ranks)))
    if any(r < 0 or r >= n for r in wanted):
        raise ValueError(f"order statistics {wanted} out of range for {n} rows")
    if n > NETWORK_MAX_ROWS:
        X = jnp.stack(X) if isinstance(X, (list, tuple)) else X
        if _host_selection(X):
            return RankWindow(rank_window(X, wanted[0], wanted[-1], nan_as_inf), wanted[0])
        return sorted_rows(nan_to_inf(X) if nan_as_inf else X)
    if nan_as_inf:
        X = [nan_to_inf(x) for x in X] if isinstance(X, (list, tuple)) else nan_to_inf(X)
    rows = tuple(X) if isinstance(X, (list, tuple)) else tuple(X[i] for i in range(n))
    return dict(zip(wanted, network_ranks(rows, wanted), strict=True))


def _network(rows: tuple[Array, ...], wanted: tuple[int, ...]) -> tuple[Array, ...]:
    """The rows of ranks ``wanted`` by the pruned network's compare-exchanges."""
    return _network_with_sources(rows, wanted, sources=False)[0]


def _network_with_sources(
    rows: tuple[Array, ...], wanted: tuple[int, ...], sources: bool = True
) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
    """The rows of ranks ``wanted`` and, with ``sources``, for each the ``[d]`` index of the
    input row each value comes from: the network carrying row indices, exchanged where
    ``x_a > x_b`` (ties keep the lower index first)."""
    values = list(rows)
    index = [jnp.full(rows[0].shape, i, jnp.int32) for i in range(len(rows))] if sources else []
    for a, b in pruned_network(len(rows), wanted):
        if sources:
            swap = values[a] > values[b]
            index[a], index[b] = (
                jnp.where(swap, index[b], index[a]),
                jnp.where(swap, index[a], index[b]),
            )
        values[a], values[b] = jnp.minimum(values[a], values[b]), jnp.maximum(values[a], values[b])
    return tuple(values[r] for r in wanted), tuple(index[r] for r in wanted) if sources else ()


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def network_ranks(rows: tuple[Array, ...], wanted: tuple[int, ...]) -> tuple[Array, ...]:
    """The order statistics of ranks ``wanted`` of the ``n`` rows ``rows`` (each ``[d]``), by the
    fused network (module doc). Derivative: the tangent of ``x_(r)`` is the tangent of the entry
    it is (the network run again carrying row indices, only when differentiating), a masked sum
    that XLA fuses; reverse-mode autodiff through the ``min``/``max`` network itself keeps a mask
    per comparator and took 20 times longer on CPU (trmean of 19 x 79,510)."""
    return _network(rows, wanted)


@network_ranks.defjvp
def _network_ranks_jvp(
    wanted: tuple[int, ...], primals: tuple, tangents: tuple
) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
    (rows,), (drows,) = primals, tangents
    values, sources = _network_with_sources(rows, wanted)
    sources = lax.stop_gradient(sources)
    dtype = rows[0].dtype
    out = tuple(
        sum(jnp.where(src == i, jnp.asarray(dx, dtype), 0.0) for i, dx in enumerate(drows))
        for src in sources
    )
    return values, out


def sum_ranks(S: Ranked, lo: int, hi: int) -> Array:
    """``Σ_{lo <= r < hi} x_(r)`` per coordinate."""
    if isinstance(S, dict):
        total = S[lo]
        for r in range(lo + 1, hi):
            total = total + S[r]
        return total
    return row_weighted_sum(jnp.ones((hi - lo,), S.dtype), S[lo:hi])


def median_rows(S: Ranked, n: int, lower: bool) -> Array:
    """The median from the order statistics ``S`` of ``n`` values.

    ``lower=True``: ``x_(⌊(n-1)/2⌋)`` (``torch.median``, the paper's code); else the mean of the
    two middle values when ``n`` is even.
    """
    lo = S[(n - 1) // 2]
    if lower or n % 2 == 1:
        return lo
    return 0.5 * lo + 0.5 * S[n // 2]


def median_ranks(n: int, lower: bool) -> tuple[int, ...]:
    """The ranks :func:`median_rows` reads."""
    return ((n - 1) // 2,) if lower or n % 2 == 1 else ((n - 1) // 2, n // 2)


def window_bounds(n: int, m: int, centre_ranks: Sequence[int]) -> tuple[int, int]:
    """``[kmin, kmax]``: where the sorted window of the ``m`` values closest to a centre lying
    between the order statistics ``centre_ranks`` can start (it holds one of them)."""
    lo, hi = min(centre_ranks), max(centre_ranks)
    return max(0, lo - m + 1), min(n - m, hi)


def window_mean(S: Ranked, c: Array, m: int, kmin: int, kmax: int) -> Array:
    """:func:`closest_mean` from order statistics when the window start ``k`` is known to lie in
    a short range ``[kmin, kmax]`` (``S`` holds ranks ``kmin .. kmax + m - 1``).

    ``x_(j)`` for ``kmin <= j < kmax`` is replaced by ``x_(j+m)`` exactly when
    ``c - x_(j) > x_(j+m) - c`` (monotone in ``j``: a prefix of the ``j`` slides the window).
    Cheap for a few ``j`` (Bulyan's ``β`` values around the median); for many, XLA splits the
    fused network and :func:`closest_mean` is faster.
    """
    total = sum_ranks(S, kmax, kmin + m) if kmax < kmin + m else jnp.zeros_like(c)
    for j in range(kmin, kmax):
        total = total + jnp.where((c - S[j]) > (S[j + m] - c), S[j + m], S[j])
    return total / m


def materialize(x: Array) -> Array:
    """``x`` itself, computed once into a buffer before its consumers run.

    XLA fuses a cheap producer (a whole sorting network) into every consumer that broadcasts it,
    recomputing it per row (51x slower). A reduction is never duplicated into its consumers, so
    ``max(x, -inf)`` over a tiny stacked axis forces the materialisation; ``optimization_barrier``
    does not (the CPU pipeline strips it before fusion).
    """
    return jnp.max(jnp.stack([x, jnp.full_like(x, -jnp.inf)]), axis=0)


_MAGNITUDE = 0x7FFFFFFE
_FLOAT_MAX = float(jnp.finfo(jnp.float32).max)


def distance_key(z: Array) -> Array:
    """A float32 key ordering ``z`` by ``(|z|, z)``: the bits of ``|z|`` with the last one
    replaced by ``[z >= 0]``, so that of two values at equal distance the negative sorts first.

    ``|z|`` is capped at the largest float (an infinite key would read back as NaN) and loses its
    last bit (1 ulp, below the rules' tolerance).
    """
    magnitude = lax.bitcast_convert_type(jnp.minimum(jnp.abs(z), _FLOAT_MAX), jnp.int32)
    non_negative = jnp.int32(1) + (lax.bitcast_convert_type(z, jnp.int32) >> 31)
    return lax.bitcast_convert_type((magnitude & _MAGNITUDE) | non_negative, jnp.float32)


def from_distance_key(key: Array) -> Array:
    """The signed value ``z`` (up to its last bit) back from :func:`distance_key`."""
    bits = lax.bitcast_convert_type(key, jnp.int32)
    negative = (jnp.int32(1) - (bits & 1)) << 31
    return lax.bitcast_convert_type((bits & _MAGNITUDE) | negative, jnp.float32)


def closest_mean(X: Array, c: Array, m: int) -> Array:
    """Per coordinate, the mean of the ``m`` values of ``X`` ``[n, d]`` closest to ``c`` ``[d]``.

    Ties go to the smaller value. With ``z = x - c`` (``fl`` is monotone, so the order of ``z``
    is that of ``x``), the ``m`` closest are the ``m`` smallest :func:`distance_key` of ``z``;
    the result is ``c + mean(z)`` over them. ``X`` must have NaN replaced by +Inf.
    """
    c = materialize(c)
    keys = distance_key(X - c)
    S = order_statistics(keys, range(m))
    if isinstance(S, dict):
        total = from_distance_key(S[0])
        for r in range(1, m):
            total = total + from_distance_key(S[r])
    else:
        total = row_weighted_sum(jnp.ones((m,), X.dtype), from_distance_key(S[:m]))
    return c + total / m
