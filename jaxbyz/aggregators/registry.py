"""The rule and pre-aggregator registries, apart from ``__init__`` so that families can register."""

from __future__ import annotations

from jaxbyz._registry import Registry
from jaxbyz.aggregators.base import Rule

_REGISTRY: Registry[Rule] = Registry("aggregation rule")
register = _REGISTRY.register
