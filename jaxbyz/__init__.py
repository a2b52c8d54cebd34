"""jaxbyz: a JAX simulator for Byzantine-resilient distributed learning.

Reproduces and extends El-Mhamdi, Guerraoui & Rouault, "Distributed Momentum for
Byzantine-resilient Stochastic Gradient Descent" (ICLR 2021). Workers are a leading array axis;
rules and attacks are pure jittable functions over ``[n, d]`` matrices, composed with optax
transformations into one step.

The public API:

- :class:`Config` (one run) and :func:`make_train` (``train(key, hparams=None)``, a pure
  function of a PRNG key: ``jax.vmap`` it over seeds);
- :mod:`jaxbyz.aggregators` (``get(name)``: ``rule(G, f)``) and :mod:`jaxbyz.attacks`
  (``get(name)``: ``attack(H, f, key=, rule=)``);
- :mod:`jaxbyz.transforms`: the optax building blocks (``robust_aggregate``, ``per_worker``,
  ``momentum``, ...) for one's own training loop;
- federated rounds and graphs through the same :class:`Config` (``nb_local_steps``,
  ``clients_per_round``, ``topology``, ``mixing``); :mod:`jaxbyz.topology` and
  :mod:`jaxbyz.gossip` (gossip, ClippedGossip, a rule per neighbourhood) for one's own loop.
"""

from jaxbyz import aggregators, attacks, transforms
from jaxbyz.config import Config, HyperParams
from jaxbyz.simulator import make_train

__version__ = "0.1.0"
__all__ = ["Config", "HyperParams", "aggregators", "attacks", "make_train", "transforms"]
