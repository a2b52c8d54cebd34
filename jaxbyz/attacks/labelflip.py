"""``labelflip``: data poisoning by label flipping (e.g. Allen-Zhu et al. 2021; Karimireddy,
He & Jaggi 2022).

The Byzantine workers compute real gradients on their own batches with the labels flipped
``y -> K - 1 - y`` (``K`` classes): the attack is a ``poison`` hook of the simulator's gradient
stage (:class:`jaxbyz.attacks.Attack`), not a function of the honest submissions. ``momentum``:
whether the Byzantine workers run the honest workers' stage (worker momentum, ...) on their
gradients (``True``) or send their raw clipped flipped gradients.
"""

from __future__ import annotations

from typing import Any

import jax

from jaxbyz.attacks.base import Attack
from jaxbyz.attacks.registry import register
from jaxbyz.validation import boolean

Array = jax.Array


def flip_labels(x: Array, y: Array, *, num_classes: int, **params: Any) -> tuple[Array, Array]:
    """The batches with their labels flipped ``y -> K - 1 - y``; the inputs unchanged."""
    return x, num_classes - 1 - y


def _labelflip_fn(H: Array, f: int, **params: Any) -> Array:
    raise ValueError(
        "attack labelflip is data poisoning: its Byzantine vectors are gradients on flipped "
        "labels y -> K-1-y, computed by the simulator's gradient stage (Attack.poison); it "
        "cannot be called on honest submissions"
    )


@register("labelflip", "label-flip", "lf")
def labelflip(momentum: bool = True) -> Attack:
    """Label flipping; ``momentum``: whether the Byzantine workers use the workers' stage."""
    momentum = boolean("attack labelflip", "momentum", momentum)
    return Attack(
        name="labelflip", fn=_labelflip_fn, params={"momentum": momentum}, poison=flip_labels
    )
