"""The torch.nn.init overrides (``--init-multi`` / ``--init-mono``) against torch's definitions."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbyz import initializers, models

MNIST = (28, 28, 1)

# ---------------------------------------------------------------------------------------------- #
# Initialisation overrides

DENSE = (1000, 800)  # Flax [in, out]: torch's [800, 1000], fan_in 1000, fan_out 800
CONV = (3, 3, 64, 128)  # Flax [kh, kw, in, out]: torch's [128, 64, 3, 3], fan_in 576, fan_out 1152


def _params():
    return {
        "Conv_0": {"kernel": jnp.zeros(CONV), "bias": jnp.zeros(128)},
        "BatchNorm_0": {"scale": jnp.ones(128), "bias": jnp.zeros(128)},
        "Dense_0": {"kernel": jnp.zeros(DENSE), "bias": jnp.zeros(800)},
    }


def _draw(*configs, params=None):
    """``reinitialize`` for each ``(multi, mono)`` or ``(multi, mono, params)`` of ``configs``
    (default ``params``: :func:`_params`), in one compiled program.

    (The "rbg" generator compiles several times faster than the default threefry; the
    initialisers do not depend on the generator.)
    """
    params = _params() if params is None else params
    trees = [c[2] if len(c) > 2 else params for c in configs]
    draws = jax.jit(
        lambda ps, k: [
            initializers.reinitialize(p, k, *c[:2]) for p, c in zip(ps, configs, strict=True)
        ]
    )(trees, jax.random.key(0, impl="rbg"))
    return [jax.tree.map(np.asarray, d) for d in draws]


def _assert_std(values, want, rtol):
    assert abs(values.mean()) < 5 * want / math.sqrt(values.size)
    np.testing.assert_allclose(values.std(), want, rtol=rtol)


def test_variance_scaling_initialisers_fans_and_gains():
    dense = {"Dense_0": {"kernel": jnp.zeros(DENSE), "bias": jnp.zeros(800)}}
    conv = {"Conv_0": {"kernel": jnp.zeros(CONV)}}
    kn, kn_out, ku, xu, xn, both = _draw(
        (("kaiming_normal", {}), None, {**dense, **conv}),
        (("kaiming_normal", {"mode": "fan_out", "nonlinearity": "tanh"}), None, conv),
        # torch's default Linear/Conv init is kaiming_uniform(a=sqrt(5)): bound 1 / sqrt(fan_in)
        (("kaiming_uniform", {"a": math.sqrt(5)}), None, dense),
        (("xavier_uniform", {}), None, {**dense, **conv}),
        (("xavier_normal", {"gain": 2.0}), None, dense),
        (("kaiming_normal", {}), ("normal", {}), {**dense, **conv}),
    )
    # kaiming_normal defaults a=0, leaky_relu: gain sqrt(2 / (1 + 0)), std gain / sqrt(fan_in)
    _assert_std(kn["Dense_0"]["kernel"], math.sqrt(2) / math.sqrt(1000), 0.01)
    _assert_std(kn["Conv_0"]["kernel"], math.sqrt(2) / math.sqrt(576), 0.02)
    _assert_std(kn_out["Conv_0"]["kernel"], 5 / 3 / math.sqrt(1152), 0.02)
    bound = 1 / math.sqrt(1000)
    assert bound * 0.99 < np.abs(ku["Dense_0"]["kernel"]).max() <= bound * (1 + 1e-6)
    _assert_std(ku["Dense_0"]["kernel"], bound / math.sqrt(3), 0.01)
    for kernel, fans in ((xu["Dense_0"]["kernel"], 1800), (xu["Conv_0"]["kernel"], 9 * 192)):
        bound = math.sqrt(6 / fans)  # gain * sqrt(6 / (fan_in + fan_out))
        assert bound * 0.99 < np.abs(kernel).max() <= bound * (1 + 1e-6)
    _assert_std(xn["Dense_0"]["kernel"], 2 * math.sqrt(2 / 1800), 0.01)
    for out in (kn, ku, xu, xn):  # no mono initialiser: the 1-dim leaves are kept
        assert (out["Dense_0"]["bias"] == 0).all()
    # one key per leaf: the kernels do not depend on whether the biases are redrawn
    np.testing.assert_array_equal(kn["Dense_0"]["kernel"], both["Dense_0"]["kernel"])
    np.testing.assert_array_equal(kn["Conv_0"]["kernel"], both["Conv_0"]["kernel"])
    assert both["Dense_0"]["bias"].std() > 0.5


def _truncnorm_moments(mean, std, a, b):
    """Mean and standard deviation of N(mean, std^2) restricted to [a, b] (closed form)."""
    alpha, beta = (a - mean) / std, (b - mean) / std
    pdf = lambda t: math.exp(-t * t / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda t: (1 + math.erf(t / math.sqrt(2))) / 2  # noqa: E731
    z = cdf(beta) - cdf(alpha)
    shift = (pdf(alpha) - pdf(beta)) / z
    var = 1 + (alpha * pdf(alpha) - beta * pdf(beta)) / z - shift**2
    return mean + std * shift, std * math.sqrt(var)


def test_elementwise_initialisers():
    mean, std, a, b = 1.0, 2.0, 0.0, 3.0
    small = {
        "Dense_0": {"kernel": jnp.zeros((1000, 800)), "bias": jnp.zeros(800)},
        "BatchNorm_0": {"scale": jnp.zeros(128)},
    }
    const, unif, norm, defaults, trunc, trunc_default = _draw(
        (("constant", {"val": 0.3}), ("constant", {"val": -2})),
        (("uniform", {"a": -0.5, "b": 2.0}), "ones"),
        (("normal", {"mean": 1.0, "std": 0.5}), ("zeros", None)),
        (("uniform", {}), ("normal", {})),  # torch's defaults U(0, 1) and N(0, 1)
        (("trunc_normal", {"mean": mean, "std": std, "a": a, "b": b}), None),
        (("trunc_normal", {}), None),  # N(0, 1) on [-2, 2]
        params=small,
    )
    assert (const["Dense_0"]["kernel"] == np.float32(0.3)).all()
    assert (const["Dense_0"]["bias"] == -2).all() and (const["BatchNorm_0"]["scale"] == -2).all()
    kernel = unif["Dense_0"]["kernel"]
    assert kernel.min() >= -0.5 and kernel.max() < 2.0
    np.testing.assert_allclose(kernel.mean(), 0.75, atol=0.01)
    assert (unif["Dense_0"]["bias"] == 1).all()
    np.testing.assert_allclose(norm["Dense_0"]["kernel"].mean(), 1.0, atol=0.005)
    np.testing.assert_allclose(norm["Dense_0"]["kernel"].std(), 0.5, rtol=0.01)
    assert (norm["BatchNorm_0"]["scale"] == 0).all()
    kernel = defaults["Dense_0"]["kernel"]
    assert kernel.min() >= 0 and kernel.max() < 1
    np.testing.assert_allclose(kernel.mean(), 0.5, atol=0.01)
    assert 0.8 < defaults["Dense_0"]["bias"].std() < 1.2
    kernel = trunc["Dense_0"]["kernel"]
    assert kernel.min() >= a and kernel.max() <= b
    want_mean, want_std = _truncnorm_moments(mean, std, a, b)
    np.testing.assert_allclose(kernel.mean(), want_mean, rtol=0.01)
    np.testing.assert_allclose(kernel.std(), want_std, rtol=0.01)
    kernel = trunc_default["Dense_0"]["kernel"]
    assert kernel.min() >= -2 and kernel.max() <= 2
    np.testing.assert_allclose(kernel.std(), _truncnorm_moments(0, 1, -2, 2)[1], rtol=0.01)


def test_shape_dependent_initialisers():
    params = {
        "wide": jnp.zeros((200, 300)),  # Flax [in, out]: torch [300, 200], orthonormal columns
        "conv": jnp.zeros((3, 3, 16, 32)),  # torch [32, 144]: orthonormal rows (Flax: columns)
    }
    orth, eye, dirac, grouped, sparse = _draw(
        (("orthogonal", {"gain": 2.0}), None, params),
        (("eye", {}), None, {"dense": jnp.zeros((3, 5))}),
        (("dirac", {}), None, {"conv": jnp.zeros((3, 3, 6, 6))}),
        (("dirac", {"groups": 2}), None, {"conv": jnp.ones((3, 3, 4, 6))}),
        (("sparse", {"sparsity": 0.25}), None, {"dense": jnp.zeros((100, 50))}),
    )
    wide = orth["wide"].astype(np.float64)
    conv = orth["conv"].astype(np.float64).reshape(144, 32)
    np.testing.assert_allclose(wide @ wide.T, 4 * np.eye(200), atol=1e-4)
    np.testing.assert_allclose(conv.T @ conv, 4 * np.eye(32), atol=1e-4)
    np.testing.assert_array_equal(eye["dense"], np.eye(3, 5))
    # dirac is the identity convolution (torch's definition), here in Flax's layout
    x = np.random.default_rng(0).normal(size=(5, 5, 6))
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    conv = sum(
        np.einsum("ijc,co->ijo", padded[di : di + 5, dj : dj + 5], dirac["conv"][di, dj])
        for di in range(3)
        for dj in range(3)
    )
    np.testing.assert_allclose(conv, x, atol=1e-12)
    want = np.zeros((3, 3, 4, 6))
    for g in range(2):
        for d in range(3):  # min(6 // 2, 4)
            want[1, 1, d, 3 * g + d] = 1
    np.testing.assert_array_equal(grouped["conv"], want)
    # sparse: torch zeroes ceil(sparsity * out) weights of each input (of each row, in Flax)
    kernel = sparse["dense"]
    np.testing.assert_array_equal((kernel == 0).sum(axis=1), math.ceil(0.25 * 50))
    np.testing.assert_allclose(kernel[kernel != 0].std(), 0.01, rtol=0.05)


def test_mono_touches_only_one_dimensional_leaves():
    params = _params()
    # (a legacy raw uint32 key works too)
    out = initializers.reinitialize(params, jax.random.PRNGKey(0), None, ("constant", {"val": 0.5}))
    for module in out:
        for name, leaf in out[module].items():
            if leaf.ndim >= 2:
                assert leaf is params[module][name]
            else:
                assert (np.asarray(leaf) == 0.5).all()
    assert initializers.reinitialize(params, jax.random.key(0), None, None) is params


def test_reinitialize_a_real_model():
    module = models.get("simples-full", 10)
    dummy = jnp.zeros((2, *MNIST))
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), dummy, train=False))["params"]
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    x = jnp.ones((2, *MNIST))

    def run(p, key):
        new = initializers.reinitialize(p, key, ("xavier_uniform", {}), ("constant", {"val": 0.1}))
        return new, module.apply({"params": new}, x)

    new, logp = jax.jit(run)(params, jax.random.key(1, impl="rbg"))
    assert jax.tree.map(jnp.shape, new) == jax.tree.map(jnp.shape, params)
    assert (np.asarray(new["Dense_1"]["bias"]) == np.float32(0.1)).all()
    bound = math.sqrt(6 / (784 + 100))
    assert np.abs(np.asarray(new["Dense_0"]["kernel"])).max() <= bound * (1 + 1e-6)
    assert np.isfinite(np.asarray(logp)).all()


def test_calculate_gain():
    assert initializers.calculate_gain("conv2d") == 1
    assert initializers.calculate_gain("sigmoid") == 1
    assert initializers.calculate_gain("relu") == math.sqrt(2)
    assert initializers.calculate_gain("tanh") == 5 / 3
    assert initializers.calculate_gain("selu") == 0.75
    assert initializers.calculate_gain("leaky_relu") == math.sqrt(2 / (1 + 0.01**2))
    assert initializers.calculate_gain("leaky_relu", 0.2) == math.sqrt(2 / 1.04)


@pytest.mark.parametrize(
    "name", ["xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal"]
)
def test_mono_refuses_initialisers_torch_defines_for_2_or_more_dimensions(name):
    match = rf"^--init-mono {name}: torch defines it only for tensors of 2 or more dimensions"
    with pytest.raises(ValueError, match=match) as info:
        initializers.check_initializer("--init-mono", name, {}, mono=True)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=match):
        initializers.reinitialize(_params(), jax.random.key(0), None, (name, {}))
    # the same initialiser is fine for the kernels
    assert initializers.check_initializer("--init-multi", name, {}, mono=False)[0] == name


@pytest.mark.parametrize(
    "flag,name,args,mono,match",
    [
        ("--init-mono", "eye", {}, True, r"^--init-mono eye: torch defines it only for 2-dim"),
        ("--init-mono", "dirac", {}, True, r"only for tensors of 3, 4 or 5 dimensions"),
        ("--init-mono", "sparse", {"sparsity": 0.1}, True, r"only for 2-dimensional tensors"),
        ("--init-multi", "he_normal", {}, False, r"^--init-multi 'he_normal' is unknown; known "
         r"initialisers \(torch.nn.init names\): constant, dirac, eye, kaiming_normal"),
        ("--init-multi", "kaiming_normal", {"b": 1}, False, r"^--init-multi-args: "
         r"kaiming_normal takes no argument b; accepted: a, mode, nonlinearity"),
        ("--init-multi", "kaiming_normal", {"mode": "fan_avg"}, False, r"mode='fan_avg' is "
         r"invalid; choose fan_in or fan_out"),
        ("--init-multi", "kaiming_uniform", {"nonlinearity": "gelu"}, False,
         r"nonlinearity='gelu' is invalid"),
        ("--init-mono", "constant", {}, True, r"^--init-mono constant needs val:VALUE"),
        ("--init-mono", "uniform", {"a": 2, "b": 1}, True, r"b=1 is invalid; torch's uniform "
         r"needs a <= b"),
        ("--init-mono", "normal", {"std": -1}, True, r"std=-1 is invalid; pass a finite number "
         r">= 0"),
        ("--init-multi", "xavier_uniform", {"gain": "x"}, False, r"gain='x' is invalid"),
        ("--init-multi", "sparse", {"sparsity": 1.5}, False, r"sparsity=1.5 is invalid; pass a "
         r"finite number in \[0, 1\]"),
        ("--init-multi", "dirac", {"groups": 0}, False, r"groups=0 is invalid"),
        ("--init-multi", "eye", {}, False, None),
        ("--init-multi", "xavier_uniform_", {"gain": 2}, False, None),
        ("--init-mono", "Trunc-Normal", {"a": -1}, True, None),
    ],
)  # fmt: skip
def test_check_initializer(flag, name, args, mono, match):
    if match is None:
        key, full = initializers.check_initializer(flag, name, args, mono=mono)
        assert key in initializers.initializer_names() and set(args) <= set(full)
        return
    with pytest.raises(ValueError, match=match) as info:
        initializers.check_initializer(flag, name, args, mono=mono)
    assert "\n" not in str(info.value)


def test_shape_restricted_initialisers_name_the_parameter():
    with pytest.raises(ValueError, match=r"^--init-multi eye: torch defines it only for "
                       r"2-dimensional tensors \(matrices\); parameter Conv_0/kernel has shape "
                       r"\(3, 3, 64, 128\)$"):  # fmt: skip
        initializers.reinitialize(_params(), jax.random.key(0), ("eye", {}), None)
    with pytest.raises(ValueError, match=r"dirac: torch defines it only for tensors of 3, 4 or 5 "):
        initializers.reinitialize(_params(), jax.random.key(0), ("dirac", {}), None)
    with pytest.raises(ValueError, match=r"not divisible by groups=3"):
        initializers.check_initializer(
            "--init-multi", "dirac", {"groups": 3}, shapes=[(3, 3, 4, 8)]
        )
    assert initializers.check_initializer("--init-multi", "eye", None, shapes=[(4, 5)])[0] == "eye"
    assert initializers.initializer_names() == sorted(
        "uniform normal trunc_normal constant ones zeros eye dirac xavier_uniform xavier_normal "
        "kaiming_uniform kaiming_normal orthogonal sparse".split()
    )
