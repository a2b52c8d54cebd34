"""Pairwise Euclidean distances between the rows of ``G`` ``[n, d]`` from one Gram product.

``‖a - b‖² = ‖a‖² + ‖b‖² - 2⟨a, b⟩``, clamped at 0, with the Gram matrix computed at
``Precision.HIGHEST`` (GPU matmuls otherwise round to TF32, which flips Krum's choices), by blocks
of rows when ``n`` is large, so that nothing of size ``[n, n, d]`` ever exists and the ``[n, n]``
temporaries stay bounded. The norms are the Gram diagonal, so a row holding NaN or ±Inf (or so
large that its squared norm overflows) has a non-finite diagonal: its distances, and its own
diagonal entry, are ``+Inf``.

Precision: the formula loses about ``eps · ‖a‖² / ‖a - b‖²`` in relative terms, which is small
for gradients (``‖a‖`` within a few hundred times ``‖a - b‖``); exact ties between identical
rows are preserved since their Gram entries are computed identically.

On the CPU backend the Gram matrix can instead come from the host's BLAS (``CPU_GRAM = "blas"``,
read when a program is traced; :func:`jaxbyz.aggregators.host.gram`, an XLA FFI call reading XLA's
buffer in place): NumPy computes ``X @ X.T`` as a symmetric rank-k update, half the multiply-adds
of the general product XLA runs. On an idle 2-core VM that halves Krum's time at ``n = 51`` and
``256`` (Gram 6.3 vs 11.2 ms and 75 vs 143 ms), and no formulation in XLA matched it (the
transposed operand compiles to the same program; products by column chunks were no faster). It
is not the default: OpenBLAS's threads spin, and when other work shares the cores its time
explodes (Krum at ``n = 51`` took 520 ms per call with the BLAS Gram against 10.8 ms with XLA's
dot while another job loaded the VM), and its results differ from XLA's in the last bits (another
order of additions), so near-ties between Krum scores can resolve differently. The default,
``"xla"``, keeps XLA's dot everywhere (figures in ``benchmarks/README.md``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxbyz.aggregators import host
from jaxbyz.rows import HIGHEST

Array = jax.Array
BLOCK_ROWS = 1024
CPU_GRAM = "xla"  # on the CPU backend: "xla" (XLA's dot) or "blas" (NumPy's, host.gram)


def gram(X: Array, block_rows: int = BLOCK_ROWS) -> Array:
    """``X Xᵀ`` ``[n, n]``: XLA's dot, by blocks of ``block_rows`` rows when ``n`` exceeds it
    (or on CPU with ``CPU_GRAM = "blas"`` the host's BLAS: see the module doc)."""
    if CPU_GRAM == "blas" and host.gram_supported(X):
        return lax.platform_dependent(X, cpu=host.gram, default=lambda X: xla_gram(X, block_rows))
    return xla_gram(X, block_rows)


def xla_gram(X: Array, block_rows: int = BLOCK_ROWS) -> Array:
    """``X Xᵀ`` by XLA's dot at ``Precision.HIGHEST``, by blocks of ``block_rows`` rows when
    ``n`` exceeds it."""
    n = X.shape[0]
    if n <= block_rows:
        return jnp.dot(X, X.T, precision=HIGHEST)
    starts = jnp.asarray([*range(0, n - block_rows, block_rows), n - block_rows], jnp.int32)

    def body(i: Array, out: Array) -> Array:
        rows = lax.dynamic_slice_in_dim(X, starts[i], block_rows, axis=0)
        block = jnp.dot(rows, X.T, precision=HIGHEST)
        return lax.dynamic_update_slice_in_dim(out, block, starts[i], axis=0)

    return lax.fori_loop(0, starts.shape[0], body, jnp.zeros((n, n), X.dtype))


def pairwise_sq_distances(G: Array, block_rows: int = BLOCK_ROWS) -> Array:
    """Squared distances ``[n, n]``: symmetric; diagonal 0 for finite rows, +Inf otherwise."""
    K = gram(G, block_rows)
    sq = jnp.diagonal(K)
    finite = jnp.isfinite(sq)
    D = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * K, 0.0)
    D = 0.5 * (D + D.T)
    D = jnp.where(finite[:, None] & finite[None, :] & ~jnp.isnan(D), D, jnp.inf)
    eye = jnp.eye(G.shape[0], dtype=bool)
    return jnp.where(eye, jnp.where(finite, 0.0, jnp.inf), D)


def pairwise_distances(G: Array, squared: bool = False, block_rows: int = BLOCK_ROWS) -> Array:
    """Euclidean (or squared, with ``squared=True``) distances between the rows of ``G``."""
    D = pairwise_sq_distances(G, block_rows)
    return D if squared else jnp.sqrt(D)


def rows_finite(D: Array) -> Array:
    """``[n]`` bool from a distance matrix: whether each row of ``G`` is finite (and not huge).

    Not :func:`jaxbyz.rows.row_finite` of ``G``: it reads the Gram diagonal ``‖g_i‖²``, so a
    finite row whose squared norm overflows (entries near 1e20 in float32) counts as non-finite,
    as its distances are ``+Inf``.
    """
    return jnp.isfinite(jnp.diagonal(D))
