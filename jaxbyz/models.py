"""The paper's models, in Flax (linen), with PyTorch's default initialisation, in a registry.

- ``simples-full``: 784-100-10 ReLU MLP, log-softmax (paper's ``experiments/models/simples.py``);
- ``simples-conv``: conv 5x5/20, max-pool, conv 5x5/50, max-pool, dense 500, dense 10;
- ``empire-cnn``: the CNN of "Fall of Empires" (Xie et al. 2019): conv 64, conv 64, pool,
  dropout 0.25, conv 128, conv 128, pool, dropout 0.25, dense 128 (256 for 100 classes), dropout
  0.25, dense 10 or 100; each conv followed by ReLU then BatchNorm. Model argument (the paper's
  ``--model-args``): ``cifar100`` (bool): True builds the CIFAR-100 variant (hidden 256, 100
  outputs), False the CIFAR-10 one (hidden 128, 10 outputs); absent, ``num_classes`` decides
  (hidden 256 when ``num_classes > 10``, ``num_classes`` outputs).

Weights and biases are drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), which is what PyTorch's
default ``Linear``/``Conv2d`` initialisation amounts to, so that runs start from the same
distribution as the paper's. BatchNorm uses the batch statistics of each worker's own batch in
training (each worker is a separate ``vmap`` lane) and running statistics in evaluation.

Registry: ``get(name, num_classes, **model_args)`` builds a module, ``names()`` lists them.
A model is any Flax module whose ``__call__(x, train: bool = False)`` maps a batch of inputs
``[b, *input_shape]`` to log-probabilities ``[b, num_classes]`` (end with ``nn.log_softmax``: the
losses take log-probabilities), draws dropout from the ``"dropout"`` rng and keeps BatchNorm
statistics in the ``"batch_stats"`` collection. Add your own by name, either on the module class
(its fields other than ``num_classes`` become its model arguments)::

    import flax.linen as nn
    from jaxbyz import models

    @models.register("my-net", "mynet")
    class MyNet(nn.Module):
        num_classes: int = 10
        width: int = 64

        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.relu(nn.Dense(self.width)(x.reshape((x.shape[0], -1))))
            return nn.log_softmax(nn.Dense(self.num_classes)(x))

    net = models.get("my-net", 10, width=32)  # --model my-net --model-args width:32

or on a factory ``(num_classes: int, **model_args) -> nn.Module`` (its keyword parameters are
the model arguments). Unknown model arguments raise a ValueError naming the accepted ones.

Initialisation overrides (the paper's ``--init-multi`` / ``--init-mono``, ``torch.nn.init``'s
names): :mod:`jaxbyz.initializers`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxbyz._registry import Registry

__all__ = [
    "EmpireCNN",
    "SimplesConv",
    "SimplesFull",
    "aliases",
    "canonical",
    "get",
    "names",
    "parameters",
    "register",
]


def _torch_uniform(fan_in: int) -> Callable:
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _dense(features: int, fan_in: int) -> nn.Dense:
    init = _torch_uniform(fan_in)
    return nn.Dense(features, kernel_init=init, bias_init=init)


def _conv(features: int, in_channels: int, kernel: int, padding) -> nn.Conv:
    init = _torch_uniform(in_channels * kernel * kernel)
    return nn.Conv(features, (kernel, kernel), padding=padding, kernel_init=init, bias_init=init)


class SimplesFull(nn.Module):
    """784-100-10 ReLU MLP with log-softmax output."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(_dense(100, x.shape[-1])(x))
        return nn.log_softmax(_dense(self.num_classes, 100)(x))


class SimplesConv(nn.Module):
    """LeNet-like CNN: two 5x5 convolutions (20, 50 channels) with max-pooling, dense 500, 10."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        channels = x.shape[-1]
        x = nn.relu(_conv(20, channels, 5, "VALID")(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(_conv(50, 20, 5, "VALID")(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(_dense(500, x.shape[-1])(x))
        return nn.log_softmax(_dense(self.num_classes, 500)(x))


class EmpireCNN(nn.Module):
    """CNN of Xie et al. (2019) for CIFAR-10/100 (ReLU then BatchNorm after each conv)."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        def block(x, features, in_channels):
            x = nn.relu(_conv(features, in_channels, 3, 1)(x))
            return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)

        x = block(x, 64, x.shape[-1])
        x = block(x, 64, 64)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.Dropout(0.25, deterministic=not train)(x)
        x = block(x, 128, 64)
        x = block(x, 128, 128)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.Dropout(0.25, deterministic=not train)(x)
        x = x.reshape((x.shape[0], -1))
        hidden = 256 if self.num_classes > 10 else 128
        x = nn.relu(_dense(hidden, x.shape[-1])(x))
        x = nn.Dropout(0.25, deterministic=not train)(x)
        return nn.log_softmax(_dense(self.num_classes, hidden)(x))


# ---------------------------------------------------------------------------------------------- #
# Registry

_REGISTRY: Registry[nn.Module] = Registry("model")

# canonical name -> the model arguments its factory accepts (None: it takes **kwargs, any name)
_PARAMS: dict[str, tuple[str, ...] | None] = {}

# Flax's own constructor arguments of every module: never model arguments
_FLAX_FIELDS = ("parent", "name")


def _model_arguments(name: str, factory: Callable[..., nn.Module]) -> tuple[str, ...] | None:
    """The keyword arguments (besides ``num_classes``) that ``factory`` accepts."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError) as error:
        raise ValueError(f"model {name!r}: cannot read the parameters of {factory!r}") from error
    params = signature.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    if "num_classes" not in params:
        what = getattr(factory, "__name__", repr(factory))
        raise ValueError(f"model {name!r}: {what} must take a num_classes argument")
    is_module = isinstance(factory, type) and issubclass(factory, nn.Module)
    skip = {"num_classes", *(_FLAX_FIELDS if is_module else ())}
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return tuple(p for p, v in params.items() if p not in skip and v.kind in kinds)


def register(name: str, *aliases: str) -> Callable[[Callable[..., nn.Module]], Any]:
    """Decorator registering a model under ``name`` (and ``aliases``) for :func:`get`.

    Decorate either a factory ``(num_classes: int, **model_args) -> nn.Module`` or a Flax module
    class with a ``num_classes`` field (its other fields are the model arguments); the decorated
    object is returned unchanged. Names are lower-case; a name registered twice raises ValueError.
    """
    for key in (name, *aliases):
        if not isinstance(key, str) or not key or key != key.strip().lower():
            raise ValueError(f"model name {key!r} must be a non-empty lower-case string")
    decorate = _REGISTRY.register(name, *aliases)

    def wrapper(factory: Callable[..., nn.Module]) -> Any:
        accepted = _model_arguments(name, factory)
        decorate(factory)
        _PARAMS[name] = accepted
        return factory

    return wrapper


def get(name: str, num_classes: int, **model_args: Any) -> nn.Module:
    """The Flax module ``name`` (or an alias) for ``num_classes`` classes, with ``model_args``.

    Unknown names raise ValueError listing the known ones; unknown or invalid model arguments
    raise ValueError naming the model, the argument and the accepted ones.
    """
    model = _REGISTRY.canonical(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"model {model}: num_classes={num_classes!r} must be a positive integer")
    if num_classes < 1:
        raise ValueError(f"model {model}: num_classes={num_classes!r} must be a positive integer")
    accepted = _PARAMS[model]
    if accepted is not None:
        unknown = [key for key in model_args if key not in accepted]
        if unknown:
            raise ValueError(
                f"--model-args: model {model} takes no argument {', '.join(unknown)}; "
                f"accepted: {', '.join(accepted) or 'none'}"
            )
    module = _REGISTRY.get(model, num_classes=int(num_classes), **model_args)
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"model {model}: its factory returned {type(module).__name__}, not a Flax module"
        )
    return module


def names() -> list[str]:
    """The canonical model names, sorted."""
    return _REGISTRY.names()


def aliases() -> dict[str, str]:
    """Alias -> canonical model name."""
    return _REGISTRY.aliases()


def canonical(name: str) -> str:
    """The canonical name of model ``name`` (ValueError listing the known ones if unknown)."""
    return _REGISTRY.canonical(name)


def parameters(name: str) -> tuple[str, ...] | None:
    """The model arguments that model ``name`` accepts (None: its factory takes any keyword)."""
    return _PARAMS[_REGISTRY.canonical(name)]


register("simples-full")(SimplesFull)
register("simples-conv")(SimplesConv)


@register("empire-cnn")
def empire_cnn(num_classes: int, cifar100: bool | None = None) -> EmpireCNN:
    """The "Fall of Empires" CNN; ``cifar100`` picks the paper's variant (absent: ``num_classes``).

    ``cifar100=True``: hidden layer 256, 100 outputs (also on a 10-class dataset, as the paper's
    code does: the labels are then below 10); ``cifar100=False``: hidden 128, 10 outputs, refused
    for a dataset of more than 10 classes.
    """
    if cifar100 is None:
        return EmpireCNN(num_classes=num_classes)
    if not isinstance(cifar100, bool):
        raise ValueError(
            f"--model-args: model empire-cnn: cifar100={cifar100!r} is invalid; pass True or False"
        )
    outputs = 100 if cifar100 else 10
    if num_classes > outputs:
        variant = "CIFAR-100" if cifar100 else "CIFAR-10"
        raise ValueError(
            f"--model-args: model empire-cnn: cifar100:{cifar100} builds the {variant} variant "
            f"({outputs} outputs), which cannot classify a dataset of {num_classes} classes; "
            + ("omit cifar100" if cifar100 else "pass cifar100:True or omit it")
        )
    return EmpireCNN(num_classes=outputs)
