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
    assert models.names() == ["empire-cnn", "simples-conv", "simples-full"]
    assert models.canonical(" Simples-Full ") == "simples-full"
    assert models.parameters("empire-cnn") == ("cifar100",)
    assert models.parameters("simples-full") == ()


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
        ("resnet", 10, {}, r"unknown model 'resnet'; known models: empire-cnn, simples-conv, "
         r"simples-full"),
        ("simples-full", 0, {}, r"num_classes=0 must be a positive integer"),
        ("simples-full", True, {}, r"num_classes=True must be a positive integer"),
    ],
)  # fmt: skip
def test_model_errors(name, num_classes, args, match):
    with pytest.raises(ValueError, match=match) as info:
        models.get(name, num_classes, **args)
    assert "\n" not in str(info.value)


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
