"""Simple attacks: ``signflip``, ``gaussian`` and ``mimic``.

- ``signflip`` (sign flipping; e.g. Allen-Zhu et al. 2021, Karimireddy et al. 2021): every
  Byzantine worker sends ``-scale * mu``.
- ``gaussian`` (Gaussian noise; e.g. Xie et al. 2018 "Generalized Byzantine-tolerant SGD"):
  Byzantine worker ``i`` sends ``mu + scale * z_i``, ``z_i ~ N(0, I_d)`` independent per worker.
- ``mimic`` (Karimireddy, He & Jaggi, ICLR 2022): every Byzantine worker copies the honest
  submission ``H[index]``, or that of one honest worker drawn uniformly with the key when
  ``index="random"``.

``mu`` is the coordinate-wise mean of the honest submissions.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxbyz.attacks.base import Attack
from jaxbyz.attacks.registry import register
from jaxbyz.rows import broadcast_row, row_mean
from jaxbyz.validation import integer, invalid, is_array, number

Array = jax.Array


def _signflip_fn(H: Array, f: int, *, key: Any, rule: Any, f_decl: int, scale: Any) -> Array:
    return broadcast_row(-jnp.asarray(scale, H.dtype) * row_mean(H), f)


@register("signflip", "signflipping", "sf")
def signflip(scale: Any = 1.0) -> Attack:
    """``-scale * mu`` (``scale >= 0``)."""
    scale = number("attack signflip", "scale", scale, minimum=0, allow_array=True)
    return Attack(name="signflip", fn=_signflip_fn, params={"scale": scale})


def _gaussian_fn(H: Array, f: int, *, key: Array, rule: Any, f_decl: int, scale: Any) -> Array:
    noise = jax.random.normal(key, (f, H.shape[1]), H.dtype)
    return row_mean(H) + jnp.asarray(scale, H.dtype) * noise


@register("gaussian", "noise")
def gaussian(scale: Any = 1.0) -> Attack:
    """``mu + N(0, scale² I)``, independent noise per Byzantine worker (``scale >= 0``)."""
    scale = number("attack gaussian", "scale", scale, minimum=0, allow_array=True)
    return Attack(
        name="gaussian", fn=_gaussian_fn, params={"scale": scale},
        needs_key=True,
    )  # fmt: skip


def _mimic_fn(H: Array, f: int, *, key: Array | None, rule: Any, f_decl: int, index: Any) -> Array:
    h = H.shape[0]
    if isinstance(index, str):
        if key is None:
            raise ValueError("attack mimic: index='random' draws the copied worker: pass key=...")
        index = jax.random.randint(key, (), 0, h)
    elif not is_array(index) and not 0 <= index < h:
        raise ValueError(
            f"attack mimic: index={index} is out of range for {h} honest workers; "
            f"fix: pass an index in [0, {h}) or index='random'"
        )
    return broadcast_row(jax.lax.dynamic_index_in_dim(H, index, keepdims=False), f)


@register("mimic")
def mimic(index: Any = 0) -> Attack:
    """Copy honest worker ``index`` (``>= 0``), or a random one (``index="random"``)."""
    if isinstance(index, str):
        if index.strip().lower() != "random":
            raise invalid("attack mimic", "index", index, "pass an integer >= 0 or 'random'")
        index = "random"
    else:
        index = integer("attack mimic", "index", index, minimum=0)
    return Attack(
        name="mimic", fn=_mimic_fn, params={"index": index},
        needs_key=index == "random",
    )  # fmt: skip
