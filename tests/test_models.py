"""The model registry and the paper's model arguments (initialisers: test_initializers.py)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbyz import models
from jaxbyz.models import EmpireCNN, SimplesConv, SimplesFull

MNIST = (28, 28, 1)
CIFAR = (32, 32, 3)


@pytest.fixture
def clean_registry():
    """Undo the registrations a test makes (the registry is global)."""
    registry = models._REGISTRY
    saved = (dict(registry._factories), dict(registry._aliases), dict(models._PARAMS))
    yield
    registry._factories.clear()
    registry._factories.update(saved[0])
    registry._aliases.clear()
    registry._aliases.update(saved[1])
    models._PARAMS.clear()
    models._PARAMS.update(saved[2])


def _shapes(module: nn.Module, input_shape, batch: int = 2):
    """(parameter shapes, output shape) without computing anything."""
    x = jnp.zeros((batch, *input_shape), jnp.float32)
    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), x, train=False))
    out = jax.eval_shape(lambda v: module.apply(v, x, train=False), variables)
    return jax.tree.map(lambda s: s.shape, variables["params"]), out.shape


# ---------------------------------------------------------------------------------------------- #
# Registry


def test_names():
    assert models.names() == [
        "cnn-mnist",
        "empire-cnn",
        "logreg",
        "resnet20",
        "simples-conv",
        "simples-full",
    ]
    assert models.canonical(" Simples-Full ") == "simples-full"
    assert models.parameters("empire-cnn") == ("cifar100",)
    assert models.parameters("simples-full") == ()
    assert models.parameters("cnn-mnist") == models.parameters("logreg") == ()
    assert models.parameters("resnet20") == ("norm", "groups", "shortcut")


@pytest.mark.parametrize(
    "name,num_classes,args,input_shape,outputs,hidden",
    [
        ("simples-full", 10, {}, MNIST, 10, 100),
        ("simples-conv", 10, {}, MNIST, 10, 500),
        ("empire-cnn", 10, {}, CIFAR, 10, 128),
        ("empire-cnn", 100, {}, CIFAR, 100, 256),
        ("empire-cnn", 10, {"cifar100": False}, CIFAR, 10, 128),
        ("empire-cnn", 100, {"cifar100": True}, CIFAR, 100, 256),
        ("empire-cnn", 10, {"cifar100": True}, CIFAR, 100, 256),  # as the paper's code would
        ("empire-cnn", 2, {"cifar100": False}, CIFAR, 10, 128),
    ],
)
def test_models_build_with_the_right_shapes(name, num_classes, args, input_shape, outputs, hidden):
    module = models.get(name, num_classes, **args)
    params, out = _shapes(module, input_shape)
    assert out == (2, outputs)
    assert params["Dense_0"]["kernel"][-1] == hidden
    assert params["Dense_1"]["kernel"] == (hidden, outputs)


def test_get_builds_the_same_modules_as_before():
    # runs are compared bit for bit: the registry must build exactly the former modules
    assert models.get("simples-full", 10) == SimplesFull(num_classes=10)
    assert models.get("simples-conv", 10) == SimplesConv(num_classes=10)
    assert models.get("empire-cnn", 10) == EmpireCNN(num_classes=10)
    assert models.get("empire-cnn", 100) == EmpireCNN(num_classes=100)
    assert models.get("empire-cnn", 10, cifar100=True) == EmpireCNN(num_classes=100)
    # (equal Flax modules trace the same program, so they draw the same initial parameters)
    assert type(models.get("simples-full", 10)) is SimplesFull


@pytest.mark.parametrize(
    "name,num_classes,args,match",
    [
        ("empire-cnn", 100, {"cifar100": False}, r"cifar100:False builds the CIFAR-10 variant "
         r"\(10 outputs\), which cannot classify a dataset of 100 classes"),
        ("empire-cnn", 200, {"cifar100": True}, r"\(100 outputs\), which cannot classify"),
        ("empire-cnn", 10, {"cifar100": "yes"}, r"cifar100='yes' is invalid; pass True or False"),
        ("empire-cnn", 10, {"width": 3}, r"model empire-cnn takes no argument width; "
         r"accepted: cifar100"),
        ("simples-full", 10, {"cifar100": True}, r"model simples-full takes no argument "
         r"cifar100; accepted: none"),
        ("resnet", 10, {}, r"unknown model 'resnet'; known models: cnn-mnist, empire-cnn, "
         r"logreg, resnet20, simples-conv, simples-full"),
        ("resnet20", 10, {"norm": "layer"}, r"^--model-args: model resnet20: norm='layer' is "
         r"invalid; pass one of group, batch$"),
        ("resnet20", 10, {"groups": 3}, r"groups=3 is invalid; pass a divisor of 16"),
        ("resnet20", 10, {"groups": 0}, r"groups=0 is invalid; pass a divisor of 16"),
        ("resnet20", 10, {"groups": True}, r"groups=True is invalid; pass a divisor of 16"),
        ("resnet20", 10, {"shortcut": "C"}, r"shortcut='C' is invalid; pass one of A, B"),
        ("resnet20", 10, {"depth": 32}, r"model resnet20 takes no argument depth; accepted: "
         r"norm, groups, shortcut"),
        ("logreg", 10, {"hidden": 3}, r"model logreg takes no argument hidden; accepted: none"),
        ("simples-full", 0, {}, r"num_classes=0 must be a positive integer"),
        ("simples-full", True, {}, r"num_classes=True must be a positive integer"),
    ],
)  # fmt: skip
def test_model_errors(name, num_classes, args, match):
    with pytest.raises(ValueError, match=match) as info:
        models.get(name, num_classes, **args)
    assert "\n" not in str(info.value)


def _count(params) -> int:
    return sum(int(np.prod(shape)) for shape in jax.tree.leaves(params, is_leaf=_is_shape))


def _is_shape(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(n, int) for n in x)


@pytest.mark.parametrize(
    "name,num_classes,args,input_shape,count",
    [
        ("cnn-mnist", 10, {}, MNIST, 1_199_882),  # PyTorch's MNIST example: 1,199,882
        ("cnn-mnist", 100, {}, MNIST, 1_199_882 + 90 * 129),
        ("logreg", 10, {}, MNIST, 784 * 10 + 10),
        ("logreg", 100, {}, CIFAR, 3072 * 100 + 100),
        # He et al.'s ResNet-20 ("0.27M"): 269,722 with option A shortcuts, whatever the norm
        ("resnet20", 10, {}, CIFAR, 269_722),
        ("resnet20", 10, {"norm": "batch"}, CIFAR, 269_722),
        ("resnet20", 10, {"groups": 16}, CIFAR, 269_722),
        # option B: two 1x1 projections (16x32, 32x64) and their norms (2 x 32, 2 x 64)
        ("resnet20", 10, {"shortcut": "B"}, CIFAR, 269_722 + 512 + 2048 + 64 + 128),
        ("resnet20", 100, {}, CIFAR, 269_722 + 90 * 65),
        ("resnet20", 10, {}, MNIST, 269_722 - 2 * 16 * 9),  # one input channel
    ],
)
def test_new_models_shapes_and_parameter_counts(name, num_classes, args, input_shape, count):
    params, out = _shapes(models.get(name, num_classes, **args), input_shape, batch=3)
    assert out == (3, num_classes)
    assert _count(params) == count


def test_cnn_mnist_layers_and_dropout():
    net = models.get("cnn-mnist", 10)
    params, _ = _shapes(net, MNIST)
    assert params["Conv_0"]["kernel"] == (3, 3, 1, 32)
    assert params["Conv_1"]["kernel"] == (3, 3, 32, 64)
    assert params["Dense_0"]["kernel"] == (12 * 12 * 64, 128)  # 28 -> 26 -> 24 -> pool 12
    assert params["Dense_1"]["kernel"] == (128, 10)
    x = jax.random.normal(jax.random.key(1), (4, 10, 10, 1))  # small input: cheap to run

    @jax.jit  # one compilation (eager Flax compiles each operation; rbg keys compile faster)
    def forward():
        variables = net.init(jax.random.key(0, impl="rbg"), x)
        a, b = (
            net.apply(variables, x, train=True, rngs={"dropout": jax.random.key(k, impl="rbg")})
            for k in (2, 3)
        )
        return a, b, net.apply(variables, x, train=False), net.apply(variables, x)

    a, b, evaluation, again = forward()
    assert not np.allclose(a, b)  # dropout is on in training, from the "dropout" rng
    np.testing.assert_array_equal(evaluation, again)  # and off in evaluation
    np.testing.assert_allclose(np.exp(np.asarray(evaluation)).sum(axis=1), 1.0, rtol=1e-5)


def test_logreg_is_one_affine_map():
    net = models.get("logreg", 3)
    x = jax.random.normal(jax.random.key(1), (5, 2, 2, 1))
    variables = jax.jit(net.init)(jax.random.key(0), x)
    w = np.asarray(variables["params"]["Dense_0"]["kernel"], np.float64)
    b = np.asarray(variables["params"]["Dense_0"]["bias"], np.float64)
    logits = np.asarray(x, np.float64).reshape(5, 4) @ w + b
    expected = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    out = jax.jit(net.apply)(variables, x)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_resnet20_blocks_norms_and_shortcuts():
    params, _ = _shapes(models.get("resnet20", 10), CIFAR)
    assert params["Conv_0"]["kernel"] == (3, 3, 3, 16) and "bias" not in params["Conv_0"]
    assert len([k for k in params if k.startswith("_ResNetBlock")]) == 9
    assert params["_ResNetBlock_3"]["Conv_0"]["kernel"] == (3, 3, 16, 32)  # stage 2's first
    assert params["_ResNetBlock_6"]["Conv_0"]["kernel"] == (3, 3, 32, 64)  # stage 3's first
    assert set(params["_ResNetBlock_3"]) == {"Conv_0", "Conv_1", "GroupNorm_0", "GroupNorm_1"}
    assert params["Dense_0"]["kernel"] == (64, 10)
    projection, _ = _shapes(models.get("resnet20", 10, shortcut="B"), CIFAR)
    assert projection["_ResNetBlock_3"]["Conv_2"]["kernel"] == (1, 1, 16, 32)
    assert "Conv_2" not in projection["_ResNetBlock_4"]  # identity where the shape stays


def test_resnet20_runs_with_group_and_batch_norm():
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))  # small input: cheap to run
    group = models.get("resnet20", 10, shortcut="a")
    batch = models.get("resnet20", 10, norm="batch")

    @jax.jit  # one compilation (eager Flax compiles each operation; rbg keys compile faster)
    def forward():
        g_vars = group.init(jax.random.key(0, impl="rbg"), x)
        b_vars = batch.init(jax.random.key(0, impl="rbg"), x)
        g_out = group.apply(g_vars, x, train=True)
        b_out, updates = batch.apply(b_vars, x, train=True, mutable=["batch_stats"])
        return g_vars, g_out, b_vars, b_out, updates

    g_vars, g_out, b_vars, b_out, updates = forward()
    assert set(g_vars) == {"params"}  # GroupNorm carries no statistics
    assert set(b_vars) == {"params", "batch_stats"}
    for out in (g_out, b_out):
        assert out.shape == (4, 10)
        np.testing.assert_allclose(np.exp(np.asarray(out)).sum(axis=1), 1.0, rtol=1e-5)
    before = jax.tree.leaves(b_vars["batch_stats"])
    after = jax.tree.leaves(updates["batch_stats"])
    assert any(not np.allclose(u, v) for u, v in zip(before, after, strict=True))


def test_user_registration_of_a_module_class(clean_registry):
    @models.register("test-tiny", "tiny")
    class Tiny(nn.Module):
        num_classes: int = 10
        width: int = 8

        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.relu(nn.Dense(self.width)(x.reshape((x.shape[0], -1))))
            return nn.log_softmax(nn.Dense(self.num_classes)(x))

    assert isinstance(Tiny, type)  # the decorator returns the class unchanged
    assert "test-tiny" in models.names()
    assert models.parameters("tiny") == ("width",)
    net = models.get("tiny", 3, width=5)
    assert isinstance(net, Tiny) and net.num_classes == 3 and net.width == 5
    params, _ = _shapes(net, MNIST)
    assert params["Dense_0"]["kernel"] == (784, 5)
    x = jnp.ones((4, *MNIST))
    logp = jax.jit(lambda x: net.apply(net.init(jax.random.key(0, impl="rbg"), x), x))(x)
    assert logp.shape == (4, 3)
    np.testing.assert_allclose(np.exp(np.asarray(logp)).sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match=r"model test-tiny takes no argument depth; accepted: "):
        models.get("test-tiny", 3, depth=2)
    with pytest.raises(ValueError, match=r"registered twice"):
        models.register("test-tiny")(Tiny)


def test_user_registration_of_a_factory(clean_registry):
    @models.register("test-factory")
    def factory(num_classes: int, big: bool = False) -> nn.Module:
        return SimplesFull(num_classes=num_classes * (2 if big else 1))

    assert models.parameters("test-factory") == ("big",)
    assert models.get("test-factory", 5, big=True).num_classes == 10
    with pytest.raises(ValueError, match=r"must take a num_classes argument"):
        models.register("test-bad")(lambda classes: SimplesFull())
    with pytest.raises(ValueError, match=r"lower-case"):
        models.register("Test-Upper")(factory)
