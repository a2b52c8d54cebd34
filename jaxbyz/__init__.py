"""jaxbyz: a JAX simulator for Byzantine-resilient distributed learning.

Reproduces and extends El-Mhamdi, Guerraoui & Rouault, "Distributed Momentum for
Byzantine-resilient Stochastic Gradient Descent" (ICLR 2021). Workers are a leading array axis;
rules and attacks are pure jittable functions over ``[n, d]`` matrices.
"""

from jaxbyz import aggregators, attacks

__version__ = "0.1.0"
__all__ = ["aggregators", "attacks"]
