"""Losses and criteria against NumPy references written from torch's definitions."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbyz import losses

SHAPES = [(1, 2), (6, 3), (9, 100)]


def _data(b: int, k: int, seed: int = 0):
    rng = np.random.default_rng(seed + 1000 * b + k)
    logits = rng.normal(size=(b, k)).astype(np.float32) * 3
    logp = logits - logits.max(axis=1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
    labels = rng.integers(0, k, size=b).astype(np.int32)
    return logp.astype(np.float32), labels, rng


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def ref_nll(x, y, weight=None, ignore_index=-100, reduction="mean"):
    """torch.nn.NLLLoss: l_i = -w[y_i] x[i, y_i]; mean divides by sum of w[y_i] (kept ones)."""
    w = np.ones(x.shape[1]) if weight is None else np.asarray(weight, np.float64)
    num = den = 0.0
    for i in range(x.shape[0]):
        if y[i] == ignore_index:
            continue
        num += -w[y[i]] * float(x[i, y[i]])
        den += w[y[i]]
    return num if reduction == "sum" else num / den


def ref_crossentropy(x, y, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """torch.nn.CrossEntropyLoss with label smoothing eps:
    l_i = (1 - eps) w[y_i] (-z[i, y_i]) + eps / K * sum_c w[c] (-z[i, c]), z = log_softmax(x);
    mean: sum_i l_i / sum_i w[y_i]."""
    z = _log_softmax(x)
    k = x.shape[1]
    w = np.ones(k) if weight is None else np.asarray(weight, np.float64)
    num = den = 0.0
    for i in range(x.shape[0]):
        if y[i] == ignore_index:
            continue
        smooth = sum(w[c] * -z[i, c] for c in range(k))
        num += (1 - label_smoothing) * w[y[i]] * -z[i, y[i]] + label_smoothing / k * smooth
        den += w[y[i]]
    return num if reduction == "sum" else num / den


def ref_multimargin(x, y, p=1, margin=1.0, weight=None, reduction="mean"):
    """torch.nn.MultiMarginLoss: l_i = sum_{j != y_i} w[y_i] max(0, margin - x_y + x_j)^p / K."""
    b, k = x.shape
    w = np.ones(k) if weight is None else np.asarray(weight, np.float64)
    per = []
    for i in range(b):
        total = 0.0
        for j in range(k):
            if j == y[i]:
                continue
            total += w[y[i]] * max(0.0, margin - float(x[i, y[i]]) + float(x[i, j])) ** p
        per.append(total / k)
    return sum(per) if reduction == "sum" else sum(per) / b


def _close(got, want):
    np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- #
# Losses


def test_nll_default_is_bit_identical_to_the_simulator():
    loss = losses.get("nll")

    def today(logp, y):  # the simulator's expression
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    for b, k in SHAPES:
        logp, y, _ = _data(b, k)
        logp, y = jnp.asarray(logp), jnp.asarray(y)
        assert float(loss(logp, y)) == float(today(logp, y))  # eager
        _close(loss(logp, y), ref_nll(np.asarray(logp), np.asarray(y)))
    # compiled, as in the simulator, on the last shape
    assert float(jax.jit(loss)(logp, y)) == float(jax.jit(today)(logp, y))


def _check_against(name, reference, cases):
    """``cases``: ``(x, y, args)``; every loss compiled in one program, checked against NumPy."""
    fns = [losses.get(name, **args) for _, _, args in cases]
    inputs = [(jnp.asarray(x), jnp.asarray(y)) for x, y, _ in cases]
    got = jax.jit(lambda xs: [f(x, y) for f, (x, y) in zip(fns, xs, strict=True)])(inputs)
    for value, (x, y, args) in zip(got, cases, strict=True):
        want = reference(x, y, **args)
        np.testing.assert_allclose(float(value), want, rtol=2e-5, atol=1e-6, err_msg=str(args))


def test_nll_arguments():
    cases = []
    for b, k in SHAPES:
        logp, y, rng = _data(b, k, seed=1)
        weight = list(rng.uniform(0.1, 2.0, size=k))
        configs = [
            {"weight": weight},
            {"reduction": "sum"},
            {"weight": weight, "reduction": "sum", "ignore_index": int(y[0])},
        ]
        if (y != y[0]).any():  # mean with an ignored class (some example left)
            configs.append({"ignore_index": int(y[0]), "weight": weight})
        cases += [(logp, y, args) for args in configs]
    _check_against("nll", ref_nll, cases)


def test_crossentropy():
    cases = []
    for b, k in SHAPES:
        logp, y, rng = _data(b, k, seed=2)
        raw = rng.normal(size=(b, k)).astype(np.float32) * 4  # torch applies log_softmax itself
        weight = list(rng.uniform(0.1, 2.0, size=k))
        cases += [(logp, y, {}), (logp, y, {"label_smoothing": 0.3})]
        # on log-probabilities (log_softmax is idempotent), crossentropy is nll
        np.testing.assert_allclose(ref_crossentropy(logp, y), ref_nll(logp, y), rtol=1e-5)
        configs = [
            {},
            {"label_smoothing": 0.1},
            {"label_smoothing": 1.0},
            {"label_smoothing": 0.3, "weight": weight},
            {"label_smoothing": 0.5, "weight": weight, "reduction": "sum", "ignore_index": 0},
        ]
        if (y != y[0]).any():
            configs.append({"label_smoothing": 0.2, "ignore_index": int(y[0])})
        cases += [(raw, y, args) for args in configs]
    _check_against("crossentropy", ref_crossentropy, cases)


def test_multimargin():
    cases = []
    for b, k in SHAPES:
        logp, y, rng = _data(b, k, seed=4)
        raw = rng.normal(size=(b, k)).astype(np.float32)
        weight = list(rng.uniform(0.1, 2.0, size=k))
        configs = [
            {},
            {"p": 2},
            {"p": 1, "margin": 0.3},
            {"p": 2, "margin": 2.5, "weight": weight},
            {"p": 1, "weight": weight, "reduction": "sum"},
        ]
        cases += [(x, y, args) for x in (logp, raw) for args in configs]
    _check_against("multimargin", ref_multimargin, cases)


def test_losses_differentiate_under_jit():
    logp, y, _ = _data(16, 10, seed=5)
    fns = [
        losses.get("nll", weight=[1.0] * 10),
        losses.get("ce", label_smoothing=0.1),
        losses.get("multimargin", p=2),
    ]
    x = jnp.asarray(logp)
    values, grads = jax.jit(lambda z: ([f(z, y) for f in fns], [jax.grad(f)(z, y) for f in fns]))(x)
    for value, grad in zip(values, grads, strict=True):
        assert value.shape == () and np.isfinite(float(value))
        assert grad.shape == logp.shape and np.isfinite(np.asarray(grad)).all()
    # nll's gradient is -onehot(y) / b
    want = -np.eye(10)[y] / 16
    grad = jax.grad(losses.get("nll"))(x, jnp.asarray(y))
    np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-6)


def test_names_aliases_and_torch_class_names():
    assert losses.names() == ["crossentropy", "multimargin", "nll"]
    assert losses.aliases()["ce"] == "crossentropy"
    assert losses.check_loss("CrossEntropyLoss") == "crossentropy"
    assert losses.check_loss("NLLLoss") == "nll"
    assert losses.check_loss(" MultiMargin ") == "multimargin"
    assert losses.parameters("multimargin") == {
        "p": 1,
        "margin": 1.0,
        "weight": None,
        "reduction": "mean",
    }


REFUSED = [
    "mse", "l1", "l2", "smoothl1", "huber", "bce", "bcewithlogits", "kldiv", "poissonnll",
    "gaussiannll", "hingeembedding", "cosineembedding", "marginranking", "tripletmargin",
    "tripletmarginwithdistance", "ctc", "multilabelmargin", "multilabelsoftmargin", "softmargin",
]  # fmt: skip


@pytest.mark.parametrize("name", REFUSED)
def test_refused_losses_say_why_in_one_line(name):
    with pytest.raises(ValueError) as info:
        losses.get(name)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"--loss {name}:")
    assert "unknown" not in message
    assert set(losses.refused()) == set(REFUSED)


def test_refused_loss_by_torch_class_name():
    with pytest.raises(ValueError, match=r"--loss MSELoss: torch's MSELoss needs"):
        losses.get("MSELoss")


def test_unknown_loss_lists_the_known_ones():
    with pytest.raises(ValueError) as info:
        losses.get("focal")
    message = str(info.value)
    assert "\n" not in message and "'focal'" in message
    for name in losses.names():
        assert name in message


@pytest.mark.parametrize(
    "name,args,match",
    [
        ("nll", {"foo": 1}, r"nll takes no argument foo; accepted: weight, ignore_index"),
        ("nll", {"reduction": "none"}, r"reduction='none' is invalid"),
        ("nll", {"reduction": "max"}, r"reduction='max' is invalid"),
        ("nll", {"weight": "abc"}, r"weight='abc' is invalid"),
        ("nll", {"ignore_index": 1.5}, r"ignore_index=1.5 is invalid"),
        ("ce", {"label_smoothing": 1.5}, r"label_smoothing=1.5 is invalid"),
        ("multimargin", {"p": 3}, r"p=3 is invalid; torch supports only p=1 and p=2"),
        ("multimargin", {"margin": float("nan")}, r"margin=nan is invalid"),
    ],
)
def test_bad_loss_arguments(name, args, match):
    with pytest.raises(ValueError, match=match):
        losses.get(name, **args)


def test_weight_length_is_checked():
    with pytest.raises(ValueError, match=r"one weight per class \(10\), got 3"):
        losses.check_loss("nll", num_classes=10, weight=[1, 2, 3])
    loss = losses.get("nll", weight=[1.0, 2.0, 3.0])
    logp, y, _ = _data(16, 10)
    with pytest.raises(ValueError, match=r"weight has 3 entries but the model has 10 outputs"):
        loss(jnp.asarray(logp), jnp.asarray(y))


# ---------------------------------------------------------------------------------------------- #
# Criteria


def test_top_k_against_argsort():
    cases = []
    for b, k in SHAPES:
        logp, y, _ = _data(b, k, seed=6)
        cases += [(logp, y, topk) for topk in (1, 2, 5) if topk <= k]
    fns = [losses.criterion("top-k", k=topk) for _, _, topk in cases]
    inputs = [(jnp.asarray(x), jnp.asarray(y)) for x, y, _ in cases]
    got = jax.jit(lambda xs: [f(x, y) for f, (x, y) in zip(fns, xs, strict=True)])(inputs)
    for correct, (x, y, topk) in zip(got, cases, strict=True):
        want = [y[i] in np.argsort(-x[i], kind="stable")[:topk] for i in range(len(y))]
        assert correct.dtype == jnp.bool_ and correct.shape == y.shape
        np.testing.assert_array_equal(np.asarray(correct), want)
    with pytest.raises(ValueError, match=r"top-k k=5 exceeds the model's 3 outputs"):
        losses.criterion("top-k", k=5)(jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32))


def test_top_1_is_the_simulators_argmax_and_default():
    logp, y, _ = _data(16, 10, seed=7)
    logp[3] = 0.0  # ties: the first maximum wins, as jnp.argmax
    got = losses.criterion("top-k")(jnp.asarray(logp), jnp.asarray(y))
    np.testing.assert_array_equal(np.asarray(got), np.argmax(logp, axis=1) == y)
    assert losses.criterion_names() == ["top-k"]
    assert losses.check_criterion("topk", num_classes=10, k=10) == "top-k"


@pytest.mark.parametrize(
    "name,args,match",
    [
        ("sigmoid", {}, r"^--criterion sigmoid: needs a one-output model"),
        ("top-k", {"k": 0}, r"k=0 is invalid; pass a positive integer"),
        ("top-k", {"k": True}, r"k=True is invalid"),
        ("top-k", {"n": 1}, r"top-k takes no argument n; accepted: k"),
        ("accuracy", {}, r"unknown criterion 'accuracy'; known criterions: top-k"),
    ],
)
def test_bad_criteria(name, args, match):
    with pytest.raises(ValueError, match=match) as info:
        losses.check_criterion(name, **args)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=match):
        losses.criterion(name, **args)


def test_check_criterion_knows_the_class_count():
    with pytest.raises(ValueError, match=r"k=11 is invalid; it exceeds the 10 classes"):
        losses.check_criterion("top-k", num_classes=10, k=11)


def test_reference_sanity():
    # the references themselves on a hand-computed case
    x = np.log(np.array([[0.5, 0.25, 0.25]], np.float32))
    y = np.array([0])
    assert math.isclose(ref_nll(x, y), math.log(2), rel_tol=1e-6)
    assert math.isclose(ref_multimargin(x, y, margin=1.0), 2 * (1 - math.log(2)) / 3, rel_tol=1e-6)
