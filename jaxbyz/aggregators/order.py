"""Order statistics over the worker axis (axis 0) of an ``[n, d]`` matrix.

XLA's generic sort is very slow on CPU (``jnp.sort`` over 51 rows of 79,510 floats: ~350 ms, 10x
PyTorch). For ``n <= NETWORK_MAX_ROWS`` the sorted rows come instead from
Batcher's odd-even merge sorting network, a fixed sequence of compare-exchanges
``(x_a, x_b) <- (min, max)`` applied to whole rows: XLA fuses the whole network and the rule that
consumes it into one elementwise loop (the median of 51 rows: ~4 ms). Only the comparators on which
the requested order statistics depend are emitted. Above ``NETWORK_MAX_ROWS`` (where compiling one
fused network takes minutes), the same network runs layer by layer on blocks of columns small
enough to stay in cache (:func:`columnwise`); ``jnp.sort`` is not used on CPU.

On GPU and TPU the blocks are the wrong choice: each of the ~300 blocks x ~55 layers of
``n = 1024`` is a kernel launch (the median of 1024 x 79,510 took 208 ms on an H200), while XLA's
sort of the whole matrix is one kernel. Above ``NETWORK_MAX_ROWS`` the choice is therefore made per
platform when the program is lowered (``lax.platform_dependent``): the blocked network on CPU,
``jnp.sort`` over the whole matrix elsewhere. Up to ``NETWORK_MAX_ROWS`` the fused network is used
everywhere (on an H200 the median of 51 x 79,510 takes 0.24 ms).

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

from jaxbyz.rows import row_weighted_sum

Array = jax.Array

NETWORK_MAX_ROWS = 128
CHUNK_COLUMNS = 256


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

    For ``n <= NETWORK_MAX_ROWS`` it runs once on the whole matrix (a fused network). Above, on
    CPU it runs on blocks of ``chunk`` columns in a loop, so that the layered sort of each block
    stays in cache (the last block overlaps the previous one rather than padding ``X``); on other
    platforms once on the whole matrix, which it then sorts with XLA's sort.
    """
    n, d = X.shape
    if n <= NETWORK_MAX_ROWS or d <= chunk:
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


Ranked = dict[int, Array] | Array


def order_statistics(X: Array | Sequence[Array], ranks: Sequence[int]) -> Ranked:
    """The order statistics ``x_(r)`` (0-based ``r``-th smallest per coordinate) of ``X``.

    ``X`` is an ``[n, d]`` matrix or a list of ``n`` rows ``[d]`` (lazy expressions that XLA fuses
    into the network). Returns ``S`` with ``S[r]`` the ``[d]`` row of rank ``r``: a dict of the
    requested ranks (network) or the whole sorted matrix (layered sort for large ``n``). Ties
    and ±Inf are exact; NaN must have been replaced.
    """
    n = len(X) if isinstance(X, (list, tuple)) else X.shape[0]
    wanted = tuple(sorted(set(ranks)))
    if any(r < 0 or r >= n for r in wanted):
        raise ValueError(f"order statistics {wanted} out of range for {n} rows")
    if n > NETWORK_MAX_ROWS:
        return sorted_rows(jnp.stack(X) if isinstance(X, (list, tuple)) else X)
    rows = list(X) if isinstance(X, (list, tuple)) else [X[i] for i in range(n)]
    for a, b in pruned_network(n, wanted):
        rows[a], rows[b] = jnp.minimum(rows[a], rows[b]), jnp.maximum(rows[a], rows[b])
    return {r: rows[r] for r in wanted}


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
