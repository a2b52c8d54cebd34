"""The paper's ``--gars`` random mixture of rules: parsing, frequencies, exactness, checks, jit."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxbyz import aggregators
from jaxbyz.aggregators.mixture import from_gars, mixture, parse_gars

jax.config.update("jax_enable_x64", False)

N, F, D = 7, 1, 4


def matrix(seed: int = 0, n: int = N, d: int = D) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32))


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("krum;median", [("krum", 1.0, {}), ("median", 1.0, {})]),
        ('krum,2,{"m": 1};median,1', [("krum", 2.0, {"m": 1}), ("median", 1.0, {})]),
        ("median,-", [("median", 1.0, {})]),
        (" krum , 0.5 ; median,0 ", [("krum", 0.5, {}), ("median", 0.0, {})]),
        ('krum,-,{"m": 2, "squared": true}', [("krum", 1.0, {"m": 2, "squared": True})]),
        (
            'krum,1,{"pre": [["bucketing", {"s": 2}]]}',
            [("krum", 1.0, {"pre": [["bucketing", {"s": 2}]]})],
        ),
    ],
)
def test_parse_paper_examples(text: str, want: list) -> None:
    assert parse_gars(text) == want


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", r"^--gars is empty; give one or more rules"),
        ("   ", r"^--gars is empty"),
        ("krum;;median", r"^--gars: part 2 of 'krum;;median' is empty; remove the extra ';'"),
        ("krum;", r"^--gars: part 2 .* is empty"),
        (",2", r"^--gars: part 1 ',2' has no rule name; write NAME\[,FREQ"),
        ("krum,abc", r"^--gars: part 1 'krum,abc' has frequency 'abc', which is not a number"),
        ("krum,,{}", r"^--gars: part 1 .* has an empty frequency; give a float >= 0, or '-'"),
        ("median;krum,-1", r"^--gars: part 2 'krum,-1' has frequency '-1'; .* finite float >= 0"),
        ("krum,inf", r"has frequency 'inf'; the frequency must be a finite float >= 0"),
        ("krum,nan", r"has frequency 'nan'; the frequency must be a finite float >= 0"),
        ("krum,0;median,0", r"^--gars: every frequency in .* is zero; give at least one rule"),
        ("krum,1,{m: 1}", r"^--gars: part 1 .* arguments that are not valid JSON \(expecting"),
        ("krum,1,[1]", r"^--gars: part 1 .* arguments of JSON type list; .* a JSON object"),
        ("krum,1,3", r"arguments of JSON type int; they must be a JSON object"),
        ("median;krumm", r"^--gars: part 2 'krumm': unknown aggregation rule 'krumm'; known"),
        ('krum,1,{"mm": 1}', r"^--gars: part 1 .*mm"),
        ('krum,1,{"m": 0}', r"^--gars: part 1 .*\bm\b"),
    ],
)
def test_parse_rejects(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        parse_gars(text)
    assert "\n" not in str(info.value)


def test_parse_rejects_non_string() -> None:
    with pytest.raises(ValueError, match="--gars must be a string"):
        parse_gars(None)  # type: ignore[arg-type]


def test_from_gars_and_repr() -> None:
    rule = from_gars('krum,2,{"m": 1};median;average,0')
    assert rule.name == "mixture"
    assert rule.needs_key and rule.selects and not rule.needs_prev
    assert rule.upper_bound(25, 5, 100) is None
    names = [(name, freq) for name, freq, _ in rule.params["components"]]
    assert names == [("krum", 2.0), ("median", 1.0), ("average", 0.0)]
    assert rule.params["components"][0][2]["m"] == 1
    text = repr(rule)
    assert text.startswith("Rule(mixture, components=(('krum', 2.0, {'m': 1")
    assert "'median', 1.0" in text and "'average', 0.0" in text


def test_mixture_validates_components() -> None:
    median = aggregators.get("median")
    with pytest.raises(ValueError, match="mixture: no components"):
        mixture([])
    with pytest.raises(ValueError, match=r"component 1 .* not a Rule"):
        mixture([("median", 1.0)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"component 2 \(median\) has frequency -1"):
        mixture([(median, 1.0), (median, -1)])
    with pytest.raises(ValueError, match=r"has frequency nan"):
        mixture([(median, float("nan"))])
    with pytest.raises(ValueError, match="every frequency is zero"):
        mixture([(median, 0)])
    with pytest.raises(ValueError, match="use from_gars"):
        mixture("median")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- frequencies


_STAT_RULES = [
    aggregators.get("average"),
    aggregators.get("median"),
    aggregators.get("trmean"),
    aggregators.get("phocas"),
]
_STAT_G = matrix(1)


@functools.cache
def _stat_outputs() -> np.ndarray:
    """``[4, d]``: each component's aggregate of ``_STAT_G`` (one compiled program)."""
    outputs = np.asarray(jax.jit(lambda G: jnp.stack([r(G, F) for r in _STAT_RULES]))(_STAT_G))
    for i in range(len(outputs)):  # the components must be distinguishable
        for j in range(i):
            assert not np.allclose(outputs[i], outputs[j], atol=1e-3)
    return outputs


@pytest.mark.parametrize(
    "freqs", [(1.0, 1.0, 0.0, 0.0), (3.0, 1.0, 0.5, 0.0)], ids=["1:1", "3:1:0.5:0"]
)
def test_draw_frequencies_chi_square(freqs: tuple) -> None:
    rule = mixture(list(zip(_STAT_RULES, freqs, strict=True)))
    draws = 4000
    keys = jax.random.split(jax.random.key(1234), draws)
    got, _ = jax.jit(jax.vmap(lambda k: rule.aggregate(_STAT_G, F, key=k)))(keys)
    outputs = _stat_outputs()
    close = np.all(np.isclose(np.asarray(got)[:, None, :], outputs[None], atol=1e-5), axis=2)
    assert np.all(close.sum(axis=1) == 1), "each draw matches exactly one component"
    counts = close.sum(axis=0)
    freqs = np.asarray(freqs)
    assert np.all(counts[freqs == 0] == 0), "a zero-frequency component was drawn"
    used = freqs > 0
    expected = draws * freqs[used] / freqs[used].sum()
    p_value = stats.chisquare(counts[used], expected).pvalue
    assert p_value > 1e-3, (counts, expected, p_value)


# --------------------------------------------------------------------------- exactness


def _drawn(key: jax.Array, components: list) -> int:
    """The documented draw: ``choice(split(key)[0], k, p)`` over positive frequencies."""
    active = [i for i, (_, q) in enumerate(components) if q > 0]
    p = np.asarray([components[i][1] for i in active], np.float32)
    draw = jax.random.split(key)[0]
    return active[int(jax.random.choice(draw, len(active), p=jnp.asarray(p / p.sum())))]


def test_aggregate_is_the_drawn_component_output_exactly() -> None:
    components = [
        (aggregators.get("krum", pre=[("bucketing", {"s": 2})]), 2.0),  # needs a key, selects
        (aggregators.get("cclip", tau=0.5), 1.0),  # needs prev
        (aggregators.get("average"), 0.0),
        (aggregators.get("median"), 1.0),
    ]
    rule = mixture(components)
    assert rule.selects and rule.needs_prev and rule.needs_key
    G, prev = matrix(2, n=9), matrix(3, n=1)[0]
    f = 1  # after bucketing (s=2): n = 5, f = 1, what krum needs (n >= 2f+3)
    # each component compiled once, as the mixture is (eager op-by-op runs may round differently)
    direct = [jax.jit(lambda G, k, p, c=c: c.aggregate(G, f, key=k, prev=p)) for c, _ in components]
    seen = set()
    for seed in range(16):
        key = jax.random.key(seed)
        index = _drawn(key, components)
        seen.add(index)
        component = components[index][0]
        # a randomised component gets split(key)[1], independent from the draw's split(key)[0]
        sub = jax.random.split(key)[1] if component.needs_key else None
        want_agg, want_acc = direct[index](G, sub, prev if component.needs_prev else None)
        agg, acc = rule.aggregate(G, f, key=key, prev=prev)
        np.testing.assert_array_equal(np.asarray(agg), np.asarray(want_agg))
        assert acc.shape == (G.shape[0],)
        if want_acc is None:
            assert np.all(np.isnan(np.asarray(acc)))
        else:
            np.testing.assert_array_equal(np.asarray(acc), np.asarray(want_acc))
    assert seen == {0, 1, 3}


def test_raw_prng_key_and_non_selecting_mixture() -> None:
    rule = from_gars("median;average")
    assert not rule.selects
    aggregate, accepted = rule.aggregate(matrix(5), F, key=jax.random.PRNGKey(0))
    assert accepted is None and aggregate.shape == (D,)


def test_needs_key() -> None:
    with pytest.raises(ValueError, match="pass key="):
        from_gars("median")(matrix(), F)


# --------------------------------------------------------------------------- check


def test_check_refuses_when_one_component_does() -> None:
    rule = from_gars("median;bulyan,0.5;krum")
    with pytest.raises(ValueError, match=r"^bulyan \(mixture component\): bulyan needs n >= 4f\+3"):
        rule.check(7, 2)
    rule.check(11, 2)
    # zero-frequency components are checked too (as in the paper's code)
    with pytest.raises(ValueError, match=r"^krum \(mixture component\): krum needs n >= 2f\+3"):
        from_gars("median;krum,0").check(6, 2)
    with pytest.raises(ValueError, match=r"after bucketing"):
        mixture([(aggregators.get("krum", pre=[("bucketing", {"s": 2})]), 1)]).check(7, 3)


# --------------------------------------------------------------------------- jit / vmap


def test_jit_vmap_over_keys_and_matrices() -> None:
    rule = from_gars('krum,1,{"pre": [["bucketing", {"s": 2}]]};cclip,1,{"tau": 0.1}')
    assert rule.needs_prev and rule.selects
    batch = 6
    rng = np.random.default_rng(7)
    Gs = rng.normal(size=(batch, 9, D)).astype(np.float32)
    prevs = rng.normal(size=(batch, D)).astype(np.float32)
    keys = jax.random.split(jax.random.key(7), batch)
    batched = jax.jit(jax.vmap(lambda G, k, p: rule.aggregate(G, 1, key=k, prev=p)))
    aggs, accs = batched(Gs, keys, prevs)
    assert aggs.shape == (batch, D) and accs.shape == (batch, 9)
    drawn_nan = 0
    for i in range(batch):
        agg, acc = rule.aggregate(Gs[i], 1, key=keys[i], prev=prevs[i])
        np.testing.assert_allclose(np.asarray(aggs[i]), np.asarray(agg), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(accs[i]), np.asarray(acc))
        drawn_nan += bool(np.all(np.isnan(np.asarray(acc))))
    assert 0 < drawn_nan < batch, "both components are drawn in this batch"
