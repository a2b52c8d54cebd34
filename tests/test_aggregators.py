"""Exactness of every rule against its NumPy reference, checks, bounds, registry, vmap, scale."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_aggregators as ref

from jaxbyz import aggregators

jax.config.update("jax_enable_x64", False)

RTOL = 1e-5


def data(kind: str, n: int, d: int, seed: int = 0) -> np.ndarray:
    """Test matrices: Gaussian, small integers (exact ties) or duplicated rows."""
    rng = np.random.default_rng(seed)
    if kind == "gauss":
        return rng.normal(size=(n, d)).astype(np.float32)
    if kind == "ints":
        return rng.integers(-3, 4, size=(n, d)).astype(np.float32)
    if kind == "dups":
        base = rng.normal(size=(max(2, n // 3), d)).astype(np.float32)
        return base[rng.integers(0, base.shape[0], size=n)]
    raise ValueError(kind)


def assert_close(got, want, G) -> None:
    scale = max(1.0, float(np.max(np.abs(G[np.isfinite(G)]), initial=0.0)))
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=RTOL, atol=RTOL * scale)


_JITTED: dict = {}


def run(rule, G, f, jit: bool):
    """``rule.aggregate(G, f)``, jitted once per rule and ``f`` (shapes then hit the cache)."""
    if not jit:
        return rule.aggregate(jnp.asarray(G), f)
    key = (id(rule), f)
    if key not in _JITTED:
        _JITTED[key] = (rule, jax.jit(lambda G: rule.aggregate(G, f)))
    return _JITTED[key][1](jnp.asarray(G))


def mask(indices, n: int) -> np.ndarray:
    out = np.zeros(n)
    out[list(indices)] = 1
    return out


# (n, f) cases per rule: small odd/even n, the paper's n = 25 and 51 for a few.
CASES = {
    "average": [(7, 2), (12, 3)],
    "median": [(7, 2), (12, 3), (25, 11), (51, 24)],
    "trmean": [(7, 2), (12, 3), (25, 11)],
    "phocas": [(7, 2), (12, 3), (25, 11)],
    "meamed": [(7, 2), (12, 3), (25, 11)],
    "krum": [(7, 2), (12, 3), (25, 11), (51, 24)],
    "bulyan": [(7, 1), (12, 2), (25, 5), (51, 12)],
    "brute": [(7, 2), (10, 3), (12, 2)],
    "aksel": [(7, 2), (12, 3), (25, 11)],
    "cge": [(7, 2), (12, 3), (25, 11)],
    "monna": [(7, 2), (12, 3), (25, 11)],
    "geomed": [(7, 2), (12, 3), (25, 11)],
}
KINDS = ("gauss", "ints", "dups")


def reference(name: str, G: np.ndarray, f: int, **params):
    """(aggregate, accepted indices or None) from the NumPy references."""
    out = {
        "average": lambda: ref.average(G),
        "median": lambda: ref.median(G, lower=params.get("lower", True)),
        "trmean": lambda: ref.trmean(G, f),
        "phocas": lambda: ref.phocas(G, f),
        "meamed": lambda: ref.meamed(G, f, lower=params.get("lower", True)),
        "krum": lambda: ref.krum(G, f, params.get("m"), params.get("squared", False)),
        "bulyan": lambda: ref.bulyan(G, f, params.get("m"), params.get("lower", True)),
        "brute": lambda: ref.brute(G, f),
        "aksel": lambda: ref.aksel(G, f, params.get("mode", "mid"), params.get("lower", True)),
        "cge": lambda: ref.cge(G, f),
        "monna": lambda: ref.monna(G, f, params.get("pivot", "median")),
        "geomed": lambda: ref.geomed(G, f, **params),
    }[name]()
    return out if isinstance(out, tuple) else (out, None)


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "nojit"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_reference(name: str, jit: bool) -> None:
    rule = aggregators.get(name)
    cases = CASES[name] if jit else CASES[name][:2]
    for index, (n, f) in enumerate(cases):
        rule.check(n, f)
        for d in (1, 17) if index == 0 else (17,):
            for seed, kind in enumerate(KINDS):
                G = data(kind, n, d, seed)
                got, accepted = run(rule, G, f, jit)
                want, chosen = reference(name, G, f)
                assert got.shape == (d,) and got.dtype == jnp.float32
                assert_close(got, want, G)
                assert (accepted is not None) == rule.selects
                if chosen is not None and kind == "gauss":
                    np.testing.assert_array_equal(np.asarray(accepted), mask(chosen, n))


@pytest.mark.parametrize(
    ("name", "params", "n", "f"),
    [
        ("median", {"lower": False}, 12, 3),
        ("meamed", {"lower": False}, 12, 3),
        ("meamed", {"lower": False}, 14, 2),
        ("krum", {"m": 1, "squared": True}, 11, 3),
        ("krum", {"m": 3}, 12, 3),
        ("bulyan", {"m": 4}, 15, 3),
        ("bulyan", {"lower": False}, 16, 3),
        ("aksel", {"mode": "n-f"}, 12, 3),
        ("aksel", {"lower": False}, 12, 3),
        ("monna", {"pivot": 0}, 12, 3),
        ("geomed", {"max_iter": 4, "tol": 0.0}, 12, 3),
        ("geomed", {"nu": 0.5, "max_iter": 3, "tol": 0.0}, 9, 2),
    ],
)
def test_parameters_match_reference(name: str, params: dict, n: int, f: int) -> None:
    rule = aggregators.get(name, **params)
    for seed, kind in enumerate(KINDS):
        G = data(kind, n, 9, seed)
        got, _ = run(rule, G, f, jit=True)
        assert_close(got, reference(name, G, f, **params)[0], G)


def test_geomed_converges_to_fixed_point() -> None:
    G = data("gauss", 15, 6)
    z = np.asarray(aggregators.get("geomed", tol=1e-7, max_iter=500)(jnp.asarray(G), 3), float)
    w = 1 / np.linalg.norm(G - z, axis=1)
    np.testing.assert_allclose(w @ G / w.sum(), z, atol=1e-5)


@pytest.mark.parametrize("L", [1, 3])
def test_cclip_matches_reference(L: int) -> None:
    rule = aggregators.get("cclip", tau=1.5, L=L)
    G = data("gauss", 11, 8, 3)
    prev = np.linspace(-1, 1, 8).astype(np.float32)
    got, accepted = jax.jit(lambda G, p: rule.aggregate(G, 2, prev=p))(G, prev)
    assert accepted is None
    assert_close(got, ref.cclip(G, 2, prev, tau=1.5, L=L), G)
    # without prev, the centre is 0
    assert_close(rule(jnp.asarray(G), 2), ref.cclip(G, 2, np.zeros(8), tau=1.5, L=L), G)


# ---------------------------------------------------------------------------- pre-aggregators


def test_nnm_and_composition() -> None:
    composed = aggregators.get("krum", pre=["nnm"])
    for seed, kind in enumerate(KINDS):
        G = data(kind, 12, 7, seed)
        got, accepted = jax.jit(lambda G: composed.aggregate(G, 3))(G)
        want, chosen = ref.krum(ref.nnm(G, 3), 3)
        assert_close(got, want, G)
        if kind == "gauss":
            np.testing.assert_array_equal(np.asarray(accepted), mask(chosen, 12))
        got = aggregators.get("median", pre=["nnm"])(jnp.asarray(G), 3)
        assert_close(got, ref.median(ref.nnm(G, 3)), G)


def test_bucketing_matches_reference_and_maps_acceptance() -> None:
    G = data("gauss", 13, 5)
    key = jax.random.key(7)
    rule = aggregators.get("krum", pre=[("bucketing", {"s": 2})])
    assert rule.needs_key and rule.selects
    rule.check(13, 1)
    with pytest.raises(ValueError, match=r"after bucketing: n=7, f=3"):
        rule.check(13, 3)
    got, accepted = jax.jit(lambda G, k: rule.aggregate(G, 1, key=k))(G, key)
    stage_key, _ = jax.random.split(key)
    perm = np.asarray(jax.random.permutation(stage_key, 13))
    buckets = ref.bucketing(G, perm, 2)
    want, chosen = ref.krum(buckets, 1)
    assert_close(got, want, G)
    members = [perm[2 * b : 2 * b + 2] for b in chosen]
    np.testing.assert_array_equal(np.asarray(accepted), mask(np.concatenate(members), 13))
    with pytest.raises(ValueError, match="pass key"):
        rule(jnp.asarray(G), 1)


def test_clip_and_arc() -> None:
    G = data("gauss", 11, 6) * np.linspace(0.1, 3, 11, dtype=np.float32)[:, None]
    got = aggregators.get("average", pre=[("clip", {"c": 1.2})])(jnp.asarray(G), 2)
    assert_close(got, ref.clip(G, 1.2).mean(0), G)
    for f in (0, 1, 3, 5):
        got = aggregators.get("average", pre=["arc"])(jnp.asarray(G), f)
        assert_close(got, ref.arc(G, f).mean(0), G)
    got = aggregators.get("trmean", pre=["nnm", "arc"])(jnp.asarray(G), 3)
    assert_close(got, ref.trmean(ref.arc(ref.nnm(G, 3), 3), 3), G)


def test_pre_specs_are_validated() -> None:
    assert aggregators.pre_names() == ["arc", "bucketing", "clip", "nnm"]
    assert aggregators.get("krum", pre="nnm").name == "nnm>krum"
    with pytest.raises(ValueError, match="unknown pre-aggregator 'foo'"):
        aggregators.get("krum", pre=["foo"])
    message = "bucketing: parameter s=0 is invalid; pass an integer >= 1"
    with pytest.raises(ValueError, match=re.escape(message)):
        aggregators.get("krum", pre=[("bucketing", {"s": 0})])
    message = "clip: parameter c=-1 is invalid; pass a finite number > 0"
    with pytest.raises(ValueError, match=re.escape(message)):
        aggregators.get("krum", pre=[("clip", {"c": -1})])


# ---------------------------------------------------------------------------- checks, bounds


@pytest.mark.parametrize(
    ("name", "n", "f", "message"),
    [
        ("bulyan", 10, 2, "bulyan needs n >= 4f+3, got n=10, f=2"),
        ("krum", 6, 2, "krum needs n >= 2f+3, got n=6, f=2"),
        ("trmean", 4, 2, "trmean needs n >= 2f+1, got n=4, f=2"),
        ("phocas", 4, 2, "phocas needs n >= 2f+1, got n=4, f=2"),
        ("meamed", 4, 2, "meamed needs n >= 2f+1, got n=4, f=2"),
        ("brute", 4, 2, "brute needs n >= 2f+1, got n=4, f=2"),
        ("brute", 60, 20, "brute needs C(n, f) <= max_subsets=1000000"),
        ("aksel", 4, 2, "aksel needs n >= 2f+1, got n=4, f=2"),
        ("cge", 3, 3, "cge needs n >= f+1, got n=3, f=3"),
        ("geomed", 4, 2, "geomed needs n >= 2f+1, got n=4, f=2"),
        ("monna", 4, 2, "monna needs n >= 2f+1, got n=4, f=2"),
    ],
)
def test_check_states_constraint_and_values(name: str, n: int, f: int, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        aggregators.get(name).check(n, f)


def test_check_accepts_admissible_and_parameter_constraints() -> None:
    aggregators.get("bulyan").check(11, 2)
    aggregators.get("krum").check(7, 2)
    aggregators.get("median").check(1, 0)
    with pytest.raises(ValueError, match=r"krum needs m <= n-f-2 \(m=6\), got n=9, f=2"):
        aggregators.get("krum", m=6).check(9, 2)
    with pytest.raises(ValueError, match=r"monna needs pivot < n"):
        aggregators.get("monna", pivot=9).check(9, 2)


def test_brute_refuses_too_many_subsets_when_called() -> None:
    rule = aggregators.get("brute", max_subsets=10)
    with pytest.raises(ValueError, match=r"C\(n, f\)=21"):
        rule(jnp.zeros((7, 2)), 2)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("krum", {"m": 0}, "krum: parameter m=0 is invalid; pass an integer >= 1 or omit it"),
        ("krum", {"m": 2.0}, "krum: parameter m=2.0 is invalid; pass an integer >= 1"),
        ("krum", {"squared": 1}, "krum: parameter squared=1 is invalid; pass True or False"),
        (
            "krum",
            {"k": 2},
            "krum: parameter k=2 is invalid; krum has no parameter 'k'; "
            "accepted parameters: m, squared",
        ),
        ("median", {"lower": "yes"}, "median: parameter lower='yes' is invalid; pass True or"),
        ("aksel", {"mode": "max"}, "aksel: parameter mode='max' is invalid; choose one of mid"),
        ("geomed", {"nu": 0}, "geomed: parameter nu=0 is invalid; pass a finite number > 0"),
        ("geomed", {"tol": -1e-3}, "geomed: parameter tol=-0.001 is invalid; pass a finite"),
        ("geomed", {"max_iter": 0}, "geomed: parameter max_iter=0 is invalid; pass an integer"),
        ("cclip", {"tau": -1.0}, "cclip: parameter tau=-1.0 is invalid; pass a finite number"),
        ("cclip", {"tau": float("nan")}, "cclip: parameter tau=nan is invalid; pass a finite"),
        ("cclip", {"L": 0}, "cclip: parameter L=0 is invalid; pass an integer >= 1"),
        ("monna", {"pivot": "mean"}, "monna: parameter pivot='mean' is invalid; pass 'median'"),
        ("monna", {"pivot": -1}, "monna: parameter pivot=-1 is invalid; pass 'median'"),
        ("brute", {"max_subsets": 0}, "brute: parameter max_subsets=0 is invalid; pass an"),
        (
            "average",
            {"f": 1},
            "average: parameter f=1 is invalid; average has no parameter 'f'; it takes no",
        ),
    ],
)
def test_bad_parameters_raise(name: str, params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        aggregators.get(name, **params)


def test_registry_names_and_aliases() -> None:
    expected = {"aksel", "average", "brute", "bulyan", "cclip", "cge", "geomed", "krum"}
    expected |= {"meamed", "median", "monna", "phocas", "trmean"}
    expected |= {"caf", "clippedclustering", "clustering", "dnc", "fltrust", "signguard", "smea"}
    assert set(aggregators.names()) == expected
    for alias, target in [("multikrum", "krum"), ("mda", "brute"), ("cm", "median")]:
        assert aggregators.get(alias).name == target
    for alias, target in [("tm", "trmean"), ("gm", "geomed"), ("rfa", "geomed")]:
        assert aggregators.get(alias).name == target
    with pytest.raises(ValueError, match="known aggregation rules: aksel, average"):
        aggregators.get("nope")


def test_upper_bounds() -> None:
    n, f, d = 51, 12, 100
    assert aggregators.get("median").upper_bound(n, f, d) == pytest.approx(1 / math.sqrt(39))
    krum = 1 / math.sqrt(2 * (n - f + f * (n + f * (n - f - 2) - 2) / (n - 2 * f - 2)))
    assert aggregators.get("krum").upper_bound(n, f, d) == pytest.approx(krum)
    assert aggregators.get("bulyan").upper_bound(n, f, d) == pytest.approx(krum)
    assert aggregators.get("brute").upper_bound(n, f, d) == pytest.approx(39 / (8**0.5 * 12))
    assert aggregators.get("brute").upper_bound(n, 0, d) == math.inf
    assert aggregators.get("trmean").upper_bound(n, f, d) is None


# ---------------------------------------------------------------------------- vmap, flags


VMAP_RULES = [
    ("average", {}, 11, 3),
    ("median", {}, 11, 3),
    ("trmean", {}, 11, 3),
    ("phocas", {}, 11, 3),
    ("meamed", {}, 11, 3),
    ("krum", {}, 11, 3),
    ("bulyan", {}, 11, 2),
    ("brute", {}, 9, 2),
    ("aksel", {}, 11, 3),
    ("cge", {}, 11, 3),
    ("geomed", {}, 11, 3),
    ("monna", {}, 11, 3),
    ("cclip", {"tau": 0.5}, 11, 3),
]


@pytest.mark.parametrize(("name", "params", "n", "f"), VMAP_RULES)
def test_vmap_over_batch(name: str, params: dict, n: int, f: int) -> None:
    rule = aggregators.get(name, **params)
    Gs = jnp.asarray(np.stack([data("gauss", n, 6, s) for s in range(3)]))
    batched = jax.jit(jax.vmap(lambda G: rule.aggregate(G, f)))(Gs)
    for b in range(3):
        single = rule.aggregate(Gs[b], f)
        np.testing.assert_allclose(batched[0][b], single[0], rtol=1e-5, atol=1e-6)
        if rule.selects:
            np.testing.assert_array_equal(batched[1][b], single[1])


def test_vmap_composed_with_key() -> None:
    rule = aggregators.get("median", pre=[("bucketing", {"s": 2}), "nnm"])
    Gs = jnp.asarray(np.stack([data("gauss", 12, 4, s) for s in range(2)]))
    keys = jax.random.split(jax.random.key(0), 2)
    single = jax.jit(lambda G, k: rule(G, 1, key=k))
    out = jax.jit(jax.vmap(single))(Gs, keys)
    for b in range(2):
        np.testing.assert_allclose(out[b], single(Gs[b], keys[b]), rtol=1e-5, atol=1e-6)


def test_flags() -> None:
    selecting = {"krum", "bulyan", "brute", "aksel", "cge", "monna", "caf", "smea", "fltrust"}
    selecting |= {"clustering", "clippedclustering", "dnc", "signguard"}
    for name in aggregators.names():
        assert aggregators.get(name).selects == (name in selecting), name
    assert aggregators.get("cclip").needs_prev
    assert aggregators.get("monna", pivot="prev").needs_prev
    assert not aggregators.get("krum").needs_key


def test_large_n_layered_sort_matches_reference() -> None:
    # n above the fused-network limit: layered sort, by overlapping blocks of 256 columns
    n, f = 140, 30
    for seed, kind in enumerate(KINDS):
        G = data(kind, n, 300 if seed == 0 else 5, seed)
        for name in ("median", "trmean", "phocas", "meamed"):
            got, _ = run(aggregators.get(name), G, f, jit=True)
            assert_close(got, reference(name, G, f)[0], G)


def test_large_n_accelerator_path_matches_reference(monkeypatch) -> None:
    # off CPU the rules above the fused-network limit sort the whole matrix with jnp.sort; run
    # that branch here by making platform_dependent always take its default
    from jaxbyz.aggregators import order

    monkeypatch.setattr(order, "platform_dependent", lambda *args, cpu, default: default(*args))
    n, f = 150, 35
    for seed, kind in enumerate(KINDS):
        G = data(kind, n, 300 if seed == 0 else 5, seed)
        for name in ("median", "trmean", "phocas", "meamed", "bulyan"):
            rule = aggregators.get(name)
            g = 5 if name == "bulyan" else f  # Bulyan: its theta = n - 2f rows above 128
            got, _ = jax.jit(lambda G, rule=rule, g=g: rule.aggregate(G, g))(jnp.asarray(G))
            assert_close(got, reference(name, G, g)[0], G)


@pytest.mark.parametrize("name", ["median", "meamed", "bulyan"])
def test_large_n_sort_is_chosen_per_platform(name: str) -> None:
    # lowered for CPU: the blocked sorting network; for CUDA: XLA's sort of the columns (Bulyan
    # also sorts its distance scores on both)
    rule = aggregators.get(name)
    f = 5 if name == "bulyan" else 30  # Bulyan: its theta = n - 2f rows above 128
    fn = jax.jit(lambda G: rule.aggregate(G, f))
    traced = fn.trace(jax.ShapeDtypeStruct((150, 1000), jnp.float32))
    cpu = traced.lower(lowering_platforms=("cpu",)).as_text()
    cuda = traced.lower(lowering_platforms=("cuda",)).as_text()
    sorts = {name: text.count('"stablehlo.sort"') for name, text in (("cpu", cpu), ("cuda", cuda))}
    assert sorts["cuda"] > sorts["cpu"] and (sorts["cpu"] == 0 or name == "bulyan"), sorts


# ---------------------------------------------------------------------------- scale


@pytest.mark.slow
@pytest.mark.parametrize(("name", "f"), [("krum", 2000), ("bulyan", 1000)])
def test_scale_4096_workers(name: str, f: int) -> None:
    n, d = 4096, 100_000
    rule = aggregators.get(name)
    rule.check(n, f)
    G = jax.random.normal(jax.random.key(0), (n, d)) + jnp.arange(n)[:, None] * 1e-3
    out, accepted = jax.jit(lambda G: rule.aggregate(G, f))(G)
    assert out.shape == (d,) and bool(jnp.all(jnp.isfinite(out)))
    assert accepted.shape == (n,)
