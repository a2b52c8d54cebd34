"""``dissensus``: the attack on decentralized learning of He, Karimireddy & Jaggi (2022,
"Byzantine-robust decentralized learning via self-centered clipping", arXiv:2202.01545).

Defined on a graph only (``--topology``): each Byzantine node sends each honest neighbour ``i``

    v_i = x_i - epsilon * sum_{k honest} w_ik (x_k - x_i) / sum_{k Byzantine} w_ik

so that the Byzantine terms of ``i``'s gossip cancel ``epsilon`` times the pull of its honest
neighbours: ``epsilon = 1`` stops the consensus at the attacked nodes, ``epsilon > 1`` drives the
neighbourhoods apart. ``w`` are the recipient's gossip weights (uniform ``1/(deg_i + 1)`` against
a robust rule). The computation is :func:`jaxbyz.gossip.dissensus`; with a server there is no
neighbourhood to split, and :func:`jaxbyz.validation.check_config` refuses it. The default
``epsilon = 1.5`` is our choice of a value above the freezing point.
"""

from __future__ import annotations

from typing import Any

import jax

from jaxbyz.attacks.base import Attack
from jaxbyz.attacks.registry import register
from jaxbyz.validation import number

Array = jax.Array


def _server_fn(H: Array, f: int, *, key: Any, rule: Any, f_decl: int, epsilon: Any) -> Array:
    raise ValueError(
        "attack dissensus is defined on a graph (each Byzantine node sends each neighbour its "
        "own vector); fix: --topology GRAPH, or another attack"
    )


@register("dissensus")
def dissensus(epsilon: Any = 1.5) -> Attack:
    """Cancel ``epsilon`` times each attacked node's honest gossip pull (graphs only)."""
    epsilon = number("attack dissensus", "epsilon", epsilon, minimum=0, allow_array=True)
    return Attack(name="dissensus", fn=_server_fn, params={"epsilon": epsilon})
