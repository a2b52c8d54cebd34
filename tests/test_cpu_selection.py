"""The CPU order statistics above 128 rows (NumPy selection behind an XLA FFI call) and the Gram
matrix of the distance rules.

- :func:`jaxbyz.aggregators.host.select` returns the sorted window of ranks that ``np.sort``
  gives, exactly, for every window shape (one rank, the lowest ranks, the highest, all), with
  ties, ±Inf and signed zeros; a NaN left in a coordinate makes all of its ranks NaN.
- The coordinate-wise rules (and the rules built on them) equal NumPy references written from
  their definitions (median exactly; means to float32 rounding), and equal the previous path,
  the sorting network run layer by layer on column blocks (``CPU_SELECTION = "network"``), bit
  for bit: the order statistics are the same input values, and the sums over ranks are the same
  XLA products over the same rows.
- The same holds under ``jit``, ``vmap`` (leading batch axes reach the FFI call) and
  ``lax.scan``; gradients through the rules (the optimised attack differentiates them) equal the
  network's on data without ties.
- ``gram(X)`` (XLA's dot, or with ``CPU_GRAM = "blas"`` the host's BLAS) equals ``X Xᵀ`` in
  float64 to float32 rounding, under ``vmap`` and with XLA's gradient.
- Rows or columns sharded over 8 forced CPU devices, and ``shard_map``, give the same results.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxbyz import aggregators
from jaxbyz.aggregators import distance, host, order

RULES = ("median", "trmean", "phocas", "meamed")
BUILT_ON = ("aksel", "monna", "geomed", "bulyan")


@contextlib.contextmanager
def selection(mode: str):
    """Trace with ``order.CPU_SELECTION = mode`` (read when a program is traced)."""
    before = order.CPU_SELECTION
    order.CPU_SELECTION = mode
    try:
        yield
    finally:
        order.CPU_SELECTION = before


def hostile(n: int, d: int, seed: int) -> np.ndarray:
    """Normal rows with NaN, ±Inf, repeated rows, ties and signed zeros."""
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((n, d)).astype(np.float32)
    G[1, : d // 4] = np.nan
    G[2, d // 4 : d // 2] = np.inf
    G[3, d // 3 :] = -np.inf
    G[4] = G[5]  # a repeated row
    G[:, 0] = np.round(G[:, 0])  # many ties
    G[: n // 2, 1] = 0.0
    G[n // 2 :, 1] = -0.0
    return G


def f_of(rule: str, n: int) -> int:
    return (n - 3) // 4 if rule == "bulyan" else (n - 3) // 2 - 2


def aggregate(rule: str, G: np.ndarray, f: int, mode: str, **params) -> np.ndarray:
    r = aggregators.get(rule, **params)
    with selection(mode):
        return np.asarray(jax.jit(lambda G: r.aggregate(G, f)[0])(G))


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal bit for bit, except the sign of a zero (tied ``±0`` may be selected either way)."""
    a, b = np.asarray(a), np.asarray(b)
    zero = (a == 0) & (b == 0)
    return a.shape == b.shape and bool(np.all(zero | (a.view(np.int32) == b.view(np.int32))))


# --------------------------------------------------------------------------- the host selection


@pytest.mark.parametrize("n", [129, 256, 300])
def test_select_is_the_sorted_window(n):
    rng = np.random.default_rng(n)
    X = rng.standard_normal((n, 70)).astype(np.float32)
    X[:, :5] = np.round(X[:, :5])
    X[7, 10:20] = np.inf
    X[8, 15:25] = -np.inf
    X[:, 30] = 0.0
    S = np.sort(X, axis=0)
    fn = jax.jit(host.select, static_argnums=(1, 2))
    for lo, hi in [(0, 0), (n - 1, n - 1), ((n - 1) // 2, (n - 1) // 2), (0, n // 2), (3, n - 4)]:
        assert same_bits(fn(X, lo, hi), S[lo : hi + 1]), (lo, hi)
    assert same_bits(fn(X, 0, n - 1), S)
    assert same_bits(fn(X, n // 2 - 1, n - 1), S[n // 2 - 1 :])


def test_select_spreads_a_remaining_nan_over_its_coordinate():
    X = np.random.default_rng(0).standard_normal((200, 9)).astype(np.float32)
    X[5, 3] = np.nan
    out = np.asarray(jax.jit(lambda X: host.select(X, 0, 99))(X))
    assert np.isnan(out[:, 3]).all()
    assert not np.isnan(np.delete(out, 3, axis=1)).any()


@pytest.mark.parametrize("n", [40, 200])
def test_nan_as_inf_equals_replacing_nan_first(n):
    """``nan_as_inf``: the ranks of ``nan_to_inf(X)``, on the host (n > 128) and the network."""
    X = hostile(n, 40, seed=n)
    X[6:30, 5] = np.nan  # many NaN in one coordinate: they fill the top ranks
    replaced = np.where(np.isnan(X), np.inf, X)
    ranks = (0, n // 2 - 1, n // 2, n - 1)

    def rows(X, mode, nan_as_inf):
        def fn(X):
            S = order.order_statistics(X, ranks, nan_as_inf)
            return jnp.stack([S[r] for r in ranks])

        with selection(mode):
            return np.asarray(jax.jit(fn)(X))

    want = np.sort(replaced, axis=0)[list(ranks)]
    for mode in ("host", "network"):
        assert same_bits(rows(X, mode, True), want), mode
        assert same_bits(rows(replaced, mode, False), want), mode


def test_select_on_many_blocks_and_batches():
    """Blocks of columns run on the thread pool; leading batch axes (vmap) are looped over."""
    n, d = 300, 1000  # 873 columns per block: two blocks
    X = np.random.default_rng(1).standard_normal((3, n, d)).astype(np.float32)
    out = jax.jit(jax.vmap(lambda X: host.select(X, 140, 150)))(X)
    assert same_bits(out, np.sort(X, axis=1)[:, 140:151])
    twice = jax.jit(jax.vmap(jax.vmap(lambda X: host.select(X, 0, 2))))(X[None])
    assert same_bits(twice[0], np.sort(X, axis=1)[:, :3])


# --------------------------------------------------------------------- rules against NumPy


def np_closest_mean(G: np.ndarray, c: np.ndarray, m: int) -> np.ndarray:
    """Per column, the mean of the ``m`` values closest to ``c`` (ties: the smaller value)."""
    out = np.empty(G.shape[1])
    for j in range(G.shape[1]):
        x = G[:, j].astype(np.float64)
        order_ = np.lexsort((x, np.abs(x - c[j])))  # by distance, then by value
        out[j] = x[order_[:m]].mean()
    return out


@pytest.mark.parametrize("n", [129, 256, 300])
def test_rules_equal_numpy_references(n):
    G = np.random.default_rng(n).standard_normal((n, 40)).astype(np.float32)
    f = f_of("median", n)
    S = np.sort(G, axis=0)
    lower = S[(n - 1) // 2]
    assert same_bits(
        aggregate("median", G, f, "host"), np.partition(G, (n - 1) // 2, axis=0)[(n - 1) // 2]
    )
    both = 0.5 * S[(n - 1) // 2] + 0.5 * S[n // 2]
    np.testing.assert_allclose(aggregate("median", G, f, "host", lower=False), both, rtol=1e-6)
    trmean = S[f : n - f].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(aggregate("trmean", G, f, "host"), trmean, rtol=1e-5, atol=1e-6)
    phocas = np_closest_mean(G, trmean, n - f)
    np.testing.assert_allclose(aggregate("phocas", G, f, "host"), phocas, rtol=1e-5, atol=1e-6)
    meamed = np_closest_mean(G, lower.astype(np.float64), n - f)
    np.testing.assert_allclose(aggregate("meamed", G, f, "host"), meamed, rtol=1e-5, atol=1e-6)


def test_nan_counts_as_inf():
    n = 200
    G = np.random.default_rng(3).standard_normal((n, 30)).astype(np.float32)
    G[:40, :10] = np.nan
    want = np.partition(np.where(np.isnan(G), np.inf, G), (n - 1) // 2, axis=0)[(n - 1) // 2]
    assert same_bits(aggregate("median", G, 40, "host"), want)


# ------------------------------------------------------------- the host path = the old network


CASES = [(rule, n) for rule in RULES for n in (129, 256, 300)]
CASES += [(rule, n) for rule in BUILT_ON for n in (129, 300) if (rule, n) != ("bulyan", 129)]


@pytest.mark.parametrize("rule, n", CASES)
def test_host_equals_network_bit_for_bit(rule, n):
    G = hostile(n, 64 if n == 256 else 33, seed=n)
    f = f_of(rule, n)
    params = {"lower": False} if rule in ("median", "meamed") and n % 2 == 0 else {}
    host_out = aggregate(rule, G, f, "host", **params)
    network_out = aggregate(rule, G, f, "network", **params)
    assert same_bits(host_out, network_out), (rule, n)


@pytest.mark.parametrize("n, host_call", [(128, False), (129, True)])
def test_host_selection_above_128_rows_only(n, host_call):
    """Up to 128 rows the fused network (unchanged); above, the FFI call on CPU."""
    rule = aggregators.get("median")
    G = jnp.zeros((n, 8))
    text = jax.jit(lambda G: rule.aggregate(G, 10)[0]).lower(G).as_text()
    assert ("jaxbyz_select_window" in text) == host_call


@pytest.mark.parametrize("rule", RULES)
def test_host_equals_network_wide(rule):
    """d = 1,000: several column blocks for the network (256) and the host (873)."""
    G = hostile(300, 1000, seed=7)
    f = f_of(rule, 300)
    assert same_bits(aggregate(rule, G, f, "host"), aggregate(rule, G, f, "network"))


def transformed(mode: str, rule: str, Gs: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    r = aggregators.get(rule)
    fn = lambda G: r.aggregate(G, f)[0]  # noqa: E731

    def body(total, G):
        out = fn(G)
        return total + out, out

    with selection(mode):
        batched = jax.jit(jax.vmap(fn))(Gs)
        _, scanned = jax.jit(lambda Gs: lax.scan(body, jnp.zeros(Gs.shape[2]), Gs))(Gs)
    return np.asarray(batched), np.asarray(scanned)


@pytest.mark.parametrize("rule", ["median", "phocas"])
def test_vmap_and_scan(rule):
    n = 257
    Gs = np.stack([hostile(n, 24, seed=s) for s in range(3)])
    f = f_of(rule, n)
    host_vmap, host_scan = transformed("host", rule, Gs, f)
    net_vmap, net_scan = transformed("network", rule, Gs, f)
    one = np.stack([aggregate(rule, G, f, "host") for G in Gs])
    assert same_bits(host_vmap, one)
    assert same_bits(host_scan, one)
    assert same_bits(host_vmap, net_vmap)
    assert same_bits(host_scan, net_scan)


@pytest.mark.parametrize("rule", RULES)
def test_gradient_equals_the_network(rule):
    """The tangent of a selected value is the tangent of its entry (no ties here)."""
    n = 200
    G = np.random.default_rng(5).standard_normal((n, 16)).astype(np.float32)
    r = aggregators.get(rule)
    weights = np.random.default_rng(6).standard_normal(16).astype(np.float32)

    def loss(B):
        return jnp.dot(r.aggregate(jnp.concatenate([G[:-3], B]), 90)[0], weights)

    grads = {}
    for mode in ("host", "network"):
        with selection(mode):
            grads[mode] = np.asarray(jax.jit(jax.grad(loss))(G[-3:]))
    np.testing.assert_allclose(grads["host"], grads["network"], rtol=1e-6, atol=1e-7)


def _network_gradient(name: str, X: np.ndarray, w: np.ndarray, f: int) -> np.ndarray:
    rule = aggregators.get(name)
    return np.asarray(jax.jit(jax.grad(lambda X: jnp.dot(rule(X, f), w)))(X))


@pytest.mark.parametrize("n, f", [(19, 2), pytest.param(51, 12, marks=pytest.mark.slow)])
def test_network_gradient_is_the_tangent_of_the_selected_entry(n, f):
    """Below the host threshold the fused network's derivative comes from the entries it
    selects: against NumPy ranks for the median and the trimmed mean."""
    rng = np.random.default_rng(n)
    X = rng.standard_normal((n, 300)).astype(np.float32)
    w = rng.standard_normal(300).astype(np.float32)
    ranks = np.argsort(np.argsort(X, axis=0, kind="stable"), axis=0)
    expected = {
        "median": np.where(ranks == (n - 1) // 2, w, 0.0),
        "trmean": np.where((ranks >= f) & (ranks < n - f), w / (n - 2 * f), 0.0),
    }
    for name, want in expected.items():
        got = _network_gradient(name, X, w, f)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_network_gradient_equals_autodiff_through_min_max():
    """For the rules built on the network, bit for bit the gradient of reverse-mode autodiff
    through its ``min``/``max`` (the former derivative, 10x slower; compiles for minutes)."""
    rng = np.random.default_rng(19)
    X = rng.standard_normal((19, 300)).astype(np.float32)
    w = rng.standard_normal(300).astype(np.float32)
    for name in ("phocas", "meamed", "bulyan"):
        got = _network_gradient(name, X, w, 3)
        saved = order.network_ranks
        order.network_ranks = order._network  # plain autodiff through min/max
        try:
            through_min_max = _network_gradient(name, X, w, 3)
        finally:
            order.network_ranks = saved
        np.testing.assert_array_equal(got, through_min_max)


# ------------------------------------------------------------------------------------ Gram


@contextlib.contextmanager
def gram_mode(mode: str):
    before = distance.CPU_GRAM
    distance.CPU_GRAM = mode
    try:
        yield
    finally:
        distance.CPU_GRAM = before


@pytest.mark.parametrize("mode", ["blas", "xla"])
@pytest.mark.parametrize("n, d", [(7, 33), (51, 1000), (256, 640)])
def test_gram_equals_float64_product(n, d, mode):
    X = np.random.default_rng(n).standard_normal((n, d)).astype(np.float32)
    want = X.astype(np.float64) @ X.T.astype(np.float64)
    with gram_mode(mode):
        got = np.asarray(jax.jit(lambda X: distance.gram(X))(X))
    scale = np.sqrt(np.outer(np.diag(want), np.diag(want)))
    assert np.all(np.abs(got - want) <= 1e-5 * scale)
    assert np.array_equal(got, got.T) or mode == "xla"


def test_blas_gram_by_column_blocks(monkeypatch):
    """The BLAS Gram matrix summed over one column block per thread (each block single-threaded)
    equals the float64 product; non-finite rows spread as in one product; vmapped too."""
    monkeypatch.setattr(host, "GRAM_MIN_COLUMNS", 8)
    X = np.random.default_rng(3).standard_normal((2, 11, 100)).astype(np.float32)
    X[1, 4, 7] = np.nan
    X[1, 6, 50] = np.inf
    got = np.asarray(jax.jit(jax.vmap(host.gram))(X))
    want = np.einsum("bik,bjk->bij", X.astype(np.float64), X.astype(np.float64))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-4)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(np.isposinf(got), np.isposinf(want))
    if host.blas_single_threaded():  # the calling thread's BLAS count is restored
        setter = host._blas_local_threads()
        before = setter(3)
        assert setter(before) == 3


@pytest.mark.parametrize("mode", ["blas", "xla"])
def test_gram_on_cpu_is_the_blas_call_only_when_asked(mode):
    with gram_mode(mode):
        text = jax.jit(lambda X: distance.gram(X)).lower(jnp.zeros((5, 8))).as_text()
    assert ("jaxbyz_gram" in text) == (mode == "blas")


def test_gram_by_blocks_equals_one_product():
    X = np.random.default_rng(2).standard_normal((300, 50)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(jax.jit(lambda X: distance.xla_gram(X, block_rows=128))(X)),
        np.asarray(jax.jit(lambda X: distance.gram(X))(X)),
        rtol=1e-6,
        atol=1e-5,
    )


def test_gram_vmap_and_gradient():
    Xs = np.random.default_rng(3).standard_normal((3, 9, 20)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(jax.jit(jax.vmap(distance.gram))(Xs)),
        Xs @ Xs.transpose(0, 2, 1),
        rtol=1e-5,
        atol=1e-5,
    )

    def loss(X):
        return jnp.sum(distance.pairwise_distances(X) * jnp.arange(81.0).reshape(9, 9))

    grads = {}
    for mode in ("blas", "xla"):
        with gram_mode(mode):
            grads[mode] = np.asarray(jax.jit(jax.grad(loss))(Xs[0]))
    np.testing.assert_allclose(grads["blas"], grads["xla"], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------- sharded layouts

SHARDED = """
import json
import numpy as np, jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxbyz import aggregators
from jaxbyz.aggregators import host
mesh = Mesh(np.asarray(jax.devices()), ("w",))
G = np.random.default_rng(0).standard_normal((256, 200)).astype(np.float32)
out = {}
for name in ("median", "phocas"):
    rule = aggregators.get(name)
    fn = jax.jit(lambda G: rule.aggregate(G, 100)[0])
    want = np.asarray(fn(G))
    for spec in (P("w", None), P(None, "w")):
        got = np.asarray(fn(jax.device_put(G, NamedSharding(mesh, spec))))
        out[name + str(spec)] = bool(np.array_equal(got, want))
local = jax.shard_map(
    lambda X: host.select(X, 127, 128), mesh=mesh, in_specs=P(None, "w"), out_specs=P(None, "w")
)
out["shard_map"] = bool(np.array_equal(np.asarray(jax.jit(local)(G)), np.sort(G, 0)[127:129]))
print(json.dumps(out))
"""


def test_sharded_inputs_and_shard_map():
    """On 8 forced CPU devices: rows or columns sharded give the one-device result; inside
    ``shard_map`` each device selects over its own columns."""
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(result.values()) and len(result) == 5, result
