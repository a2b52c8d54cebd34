"""The paper's models, in Flax (linen), with PyTorch's default initialisation.

- ``simples-full``: 784-100-10 ReLU MLP, log-softmax (paper's ``experiments/models/simples.py``);
- ``simples-conv``: conv 5x5/20, max-pool, conv 5x5/50, max-pool, dense 500, dense 10;
- ``empire-cnn``: the CNN of "Fall of Empires" (Xie et al. 2019): conv 64, conv 64, pool,
  dropout 0.25, conv 128, conv 128, pool, dropout 0.25, dense 128 (256 for 100 classes), dropout
  0.25, dense 10 or 100; each conv followed by ReLU then BatchNorm.

Weights and biases are drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), which is what PyTorch's
default ``Linear``/``Conv2d`` initialisation amounts to, so that runs start from the same
distribution as the paper's. BatchNorm uses the batch statistics of each worker's own batch in
training (each worker is a separate ``vmap`` lane) and running statistics in evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

MODELS = ("simples-full", "simples-conv", "empire-cnn")


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


def get_model(name: str, num_classes: int) -> nn.Module:
    """The Flax module called ``name`` (one of ``MODELS``) with ``num_classes`` outputs."""
    modules = {"simples-full": SimplesFull, "simples-conv": SimplesConv, "empire-cnn": EmpireCNN}
    if name not in modules:
        raise ValueError(f"--model {name!r} is unknown; choose one of {', '.join(MODELS)}")
    return modules[name](num_classes=num_classes)
