"""Runnable examples of jaxbyz outside the simulator (``python -m jaxbyz.examples.NAME``).

- ``robust_allreduce``: data-parallel training over real devices with ``jax.shard_map``, the
  gradients aggregated by a robust rule (``robust_aggregate(..., axis_name=...)``) while some
  devices are Byzantine.
"""
