"""``labelflip``: data poisoning by label flipping (e.g. Allen-Zhu et al. 2021; Karimireddy,
He & Jaggi 2022).

The Byzantine workers compute real gradients on labels flipped ``y -> K - 1 - y`` (``K``
classes). Those gradients need the model and the data, so the simulator computes them itself
(``Attack.label_flip``) and never calls ``fn``. ``momentum``: whether the Byzantine workers apply
the same worker momentum as the honest ones (``True``) or send their raw flipped gradients.
"""

from __future__ import annotations

from typing import Any

import jax

from jaxbyz.attacks.base import Attack
from jaxbyz.attacks.params import boolean
from jaxbyz.attacks.registry import register

Array = jax.Array


def _labelflip_fn(H: Array, f: int, **params: Any) -> Array:
    raise ValueError(
        "attack labelflip is data poisoning: its Byzantine vectors are gradients on flipped "
        "labels y -> K-1-y, computed by the simulator (Attack.label_flip is True); it cannot be "
        "called on honest submissions"
    )


@register("labelflip", "label-flip", "lf")
def labelflip(momentum: bool = True) -> Attack:
    """Label flipping; ``momentum``: whether the Byzantine workers use worker momentum."""
    momentum = boolean("labelflip", "momentum", momentum)
    return Attack(
        name="labelflip", fn=_labelflip_fn, params={"momentum": momentum}, label_flip=True
    )
