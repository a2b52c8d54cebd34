"""The paper's models, in Flax (linen), with PyTorch's default initialisation, in a registry.

- ``simples-full``: 784-100-10 ReLU MLP, log-softmax (paper's ``experiments/models/simples.py``);
- ``simples-conv``: conv 5x5/20, max-pool, conv 5x5/50, max-pool, dense 500, dense 10;
- ``empire-cnn``: the CNN of "Fall of Empires" (Xie et al. 2019): conv 64, conv 64, pool,
  dropout 0.25, conv 128, conv 128, pool, dropout 0.25, dense 128 (256 for 100 classes), dropout
  0.25, dense 10 or 100; each conv followed by ReLU then BatchNorm. Model argument (the paper's
  ``--model-args``): ``cifar100`` (bool): True builds the CIFAR-100 variant (hidden 256, 100
  outputs), False the CIFAR-10 one (hidden 128, 10 outputs); absent, ``num_classes`` decides
  (hidden 256 when ``num_classes > 10``, ``num_classes`` outputs);
- ``cnn-mnist``: the network of PyTorch's MNIST example (``pytorch/examples``, ``mnist/main.py``):
  conv 3x3/32 (valid, ReLU), conv 3x3/64 (valid, ReLU), max-pool 2x2, dropout 0.25, dense 128
  (ReLU), dropout 0.5, dense ``num_classes``: 1,199,882 parameters on 28x28x1 inputs;
- ``logreg``: multinomial logistic regression, the flattened input and one dense layer (7,850
  parameters on 28x28x1 inputs, 10 classes);
- ``resnet20``: the CIFAR ResNet-20 of He et al., "Deep Residual Learning for Image
  Recognition", CVPR 2016, section 4.2: conv 3x3/16, three stages of three basic blocks (conv
  3x3 - norm - ReLU - conv 3x3 - norm, + shortcut, ReLU) of 16, 32 and 64 channels at 32x32,
  16x16 and 8x8 (the first block of stages 2 and 3 has stride 2), global average pooling, dense
  ``num_classes``: 269,722 parameters for 10 classes with the paper's shortcuts. Model arguments:
  ``shortcut`` ``A`` (default, the paper's choice on CIFAR: identity shortcuts, and where the
  shape changes, a stride-2 subsampling with zero channels padded, half before and half after,
  as the widely used ``akamaster/pytorch_resnet_cifar10``; no parameters) or ``B`` (a 1x1
  projection convolution and norm where the shape changes: 272,474 parameters); ``norm``
  ``group`` (default: GroupNorm with ``groups`` groups, default 2, a divisor of 16, so that no
  statistics are carried across steps) or ``batch`` (BatchNorm, as the paper). Convolutions have
  no bias and He et al.'s N(0, 2 / fan_in) initialisation (ICCV 2015, as the paper); the norms
  start at scale 1 and bias 0; the dense layer has PyTorch's default initialisation.

Weights and biases are drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), which is what PyTorch's
default ``Linear``/``Conv2d`` initialisation amounts to, so that runs start from the same
distribution as the paper's (but ``resnet20``'s convolutions, see above). BatchNorm uses the
batch statistics of each worker's own batch in training (each worker is a separate ``vmap``
lane) and running statistics in evaluation: the simulator carries them in its model state, one
copy updated with the honest workers' average (``empire-cnn``, ``resnet20`` with ``norm:batch``).

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

import functools
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
    "CNNMnist",
    "EmpireCNN",
    "LogReg",
    "ResNet20",
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


class CNNMnist(nn.Module):
    """The network of PyTorch's MNIST example: conv 3x3/32 (valid, ReLU), conv 3x3/64 (valid,
    ReLU), max-pool 2x2, dropout 0.25, dense 128 (ReLU), dropout 0.5, dense ``num_classes``."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.relu(_conv(32, x.shape[-1], 3, "VALID")(x))
        x = nn.relu(_conv(64, 32, 3, "VALID")(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.Dropout(0.25, deterministic=not train)(x)
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(_dense(128, x.shape[-1])(x))
        x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.log_softmax(_dense(self.num_classes, 128)(x))


class LogReg(nn.Module):
    """Multinomial logistic regression: the flattened input, one dense layer, log-softmax."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = x.reshape((x.shape[0], -1))
        return nn.log_softmax(_dense(self.num_classes, x.shape[-1])(x))


RESNET_NORMS = ("group", "batch")
RESNET_SHORTCUTS = ("A", "B")
# He et al.'s initialisation ("Delving Deep into Rectifiers", ICCV 2015): N(0, 2 / fan_in)
_he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def _resnet_norm(norm: str, groups: int, train: bool) -> nn.Module:
    """ResNet-20's normalisation: BatchNorm (batch statistics in training, running ones in
    evaluation) or GroupNorm; PyTorch's epsilon and momentum."""
    if norm == "batch":
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)
    return nn.GroupNorm(num_groups=groups, epsilon=1e-5)


def _resnet_conv(features: int, kernel: int, stride: int = 1) -> nn.Conv:
    """A bias-free convolution with PyTorch's symmetric padding ``(kernel - 1) / 2`` (XLA's
    ``"SAME"`` would pad a stride-2 convolution at the end only) and He's initialisation."""
    pad = (kernel - 1) // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        (stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=_he_normal,
    )


class _ResNetBlock(nn.Module):
    """A basic block: conv 3x3 - norm - ReLU - conv 3x3 - norm, plus the shortcut, then ReLU."""

    features: int
    stride: int
    norm: str
    groups: int
    shortcut: str

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        norm = functools.partial(_resnet_norm, self.norm, self.groups, train)
        y = nn.relu(norm()(_resnet_conv(self.features, 3, self.stride)(x)))
        y = norm()(_resnet_conv(self.features, 3)(y))
        if self.stride != 1 or x.shape[-1] != self.features:
            if self.shortcut == "B":  # projection: conv 1x1 with the block's stride, then norm
                x = norm()(_resnet_conv(self.features, 1, self.stride)(x))
            else:  # option A: subsample, then zero channels, half before and half after
                x = x[:, :: self.stride, :: self.stride, :]
                extra = self.features - x.shape[-1]
                x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
        return nn.relu(y + x)


class ResNet20(nn.Module):
    """He et al.'s CIFAR ResNet-20 (CVPR 2016, section 4.2): conv 3x3/16, three stages of three
    basic blocks (16, 32, 64 channels; the first block of stages 2 and 3 has stride 2), global
    average pooling, dense ``num_classes``; ``norm`` is ``"group"`` (GroupNorm of ``groups``
    groups) or ``"batch"`` (BatchNorm), ``shortcut`` is ``"A"`` or ``"B"``."""

    num_classes: int = 10
    norm: str = "group"
    groups: int = 2
    shortcut: str = "A"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.relu(_resnet_norm(self.norm, self.groups, train)(_resnet_conv(16, 3)(x)))
        for stage, features in enumerate((16, 32, 64)):
            for index in range(3):
                stride = 2 if stage > 0 and index == 0 else 1
                x = _ResNetBlock(features, stride, self.norm, self.groups, self.shortcut)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.log_softmax(_dense(self.num_classes, x.shape[-1])(x))


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


register("cnn-mnist")(CNNMnist)
register("logreg")(LogReg)


@register("resnet20")
def resnet20(
    num_classes: int, norm: str = "group", groups: int = 2, shortcut: str = "A"
) -> ResNet20:
    """He et al.'s CIFAR ResNet-20; ``norm``: ``group`` (GroupNorm, ``groups`` groups, a divisor
    of 16) or ``batch``; ``shortcut``: ``A`` (zero-padding identity) or ``B`` (projection)."""

    def bad(name: str, value: Any, fix: str) -> ValueError:
        return ValueError(f"--model-args: model resnet20: {name}={value!r} is invalid; {fix}")

    if norm not in RESNET_NORMS:
        raise bad("norm", norm, f"pass one of {', '.join(RESNET_NORMS)}")
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise bad("groups", groups, "pass a divisor of 16 (1, 2, 4, 8 or 16)")
    if 16 % groups:
        raise bad("groups", groups, "pass a divisor of 16 (1, 2, 4, 8 or 16)")
    if not isinstance(shortcut, str) or shortcut.upper() not in RESNET_SHORTCUTS:
        raise bad("shortcut", shortcut, f"pass one of {', '.join(RESNET_SHORTCUTS)}")
    return ResNet20(
        num_classes=num_classes, norm=norm, groups=int(groups), shortcut=shortcut.upper()
    )
