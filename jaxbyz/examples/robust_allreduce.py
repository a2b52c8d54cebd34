"""Beyond simulation: a robust all-reduce over real devices.

Data-parallel training of a small Flax MLP with ``jax.shard_map`` over a 1-D mesh ``"workers"``,
one worker per device, where the gradients are combined by a robust rule instead of a mean
(``psum / n``). The first ``--byzantine`` devices are Byzantine: they replace their gradient
by an attack vector.
Every device runs, inside one jitted ``lax.scan`` over the steps::

    its own shard of the training set
      -> a batch -> its gradient -> (Byzantine devices: the attack vector)
      -> all_gather of the rows over "workers"       [1, d] per device -> [n, d] everywhere
      -> the rule F(G, f)                             the same aggregate on every device
      -> optax.sgd -> the new (replicated) parameters

The all-gather, the rule and the optimiser are one optax transformation::

    tx = optax.chain(robust_aggregate(rule, f, axis_name="workers"), optax.sgd(lr))

The simulator (``jaxbyz.simulator``) keeps all ``n`` workers on a vmapped leading axis of one
program and writes the Byzantine rows itself; here the workers are devices, each holds only its
own row, the rows travel through a collective, and a Byzantine device corrupts its own row
before sending it. The script trains with the chosen rule and with plain averaging
(``rule="average"``) from the same start and batches, and prints their test loss and accuracy
side by side, then one JSON line (non-finite losses as ``null``).

Run it on 8 CPU devices (JAX fixes its device count when it starts; run as a script this module
sets ``XLA_FLAGS=--xla_force_host_platform_device_count=8``, or ``--devices``, itself when the
variable does not already give a count)::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
        python -m jaxbyz.examples.robust_allreduce --rule median --byzantine 1 --attack signflip

Attacks (``--attack``), applied to the Byzantine device's flattened gradient ``g``:

- ``signflip``: ``-100 g``, a long step uphill;
- ``nan``: every coordinate NaN (a crashed or corrupted worker);
- ``noise``: ``N(0, 100²)`` per coordinate, independent of ``g``: the averaged model's loss
  explodes, but zero-mean noise partly cancels over the steps, so its accuracy suffers less.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxbyz.data import Dataset, make_synthetic
from jaxbyz.transforms import robust_aggregate

Array = jax.Array
AXIS = "workers"
DEVICE_FLAG = "--xla_force_host_platform_device_count"

ATTACKS: dict[str, Callable[[Array, Array], Array]] = {
    "signflip": lambda g, key: -100.0 * g,
    "nan": lambda g, key: jnp.full_like(g, jnp.nan),
    "noise": lambda g, key: 100.0 * jax.random.normal(key, g.shape, g.dtype),
}


class Options(NamedTuple):
    rule: str = "median"
    byzantine: int = 1
    attack: str = "signflip"
    steps: int = 200
    batch: int = 32  # examples per device and step
    lr: float = 0.3
    reports: int = 5  # rows of the table
    seed: int = 0


class Point(NamedTuple):
    step: int
    loss: float  # test loss
    accuracy: float  # test accuracy


class MLP(nn.Module):
    hidden: int = 64
    classes: int = 10

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.classes)(x)


def cross_entropy(logits: Array, labels: Array) -> Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@partial(jax.jit, static_argnums=0)
def init(model: nn.Module, key: Array, x: Array) -> Any:
    return model.init(key, x)


@partial(jax.jit, static_argnums=0)
def evaluate(model: nn.Module, params: Any, x: Array, y: Array) -> tuple[Array, Array]:
    """Loss and accuracy of ``model`` on ``(x, y)``."""
    logits = model.apply(params, x)
    return cross_entropy(logits, y), jnp.mean(logits.argmax(-1) == y)


def corrupt(grads: Any, attack: str, key: Array, byzantine: Array) -> Any:
    """The attack vector in place of ``grads`` where ``byzantine`` is true, else ``grads``."""
    flat, unravel = ravel_pytree(grads)
    return unravel(jnp.where(byzantine, ATTACKS[attack](flat, key), flat))


def make_chunk(
    model: nn.Module, tx: optax.GradientTransformationExtraArgs, mesh: Mesh, cfg: Options
):
    """``chunk(params, opt_state, x, y, keys)``: ``len(keys)`` steps, jitted and sharded.

    ``x``, ``y`` are split over the devices (each samples its batches from its own part);
    parameters, optimiser state and step keys are replicated.
    """

    def on_device(params, opt_state, x, y, keys):
        me = jax.lax.axis_index(AXIS)

        def step(carry, key):
            params, opt_state = carry
            batch_key, attack_key = jax.random.split(jax.random.fold_in(key, me))
            idx = jax.random.randint(batch_key, (cfg.batch,), 0, x.shape[0])
            grads = jax.grad(lambda p: cross_entropy(model.apply(p, x[idx]), y[idx]))(params)
            grads = corrupt(grads, cfg.attack, attack_key, me < cfg.byzantine)
            rows = jax.tree.map(lambda g: g[None], grads)  # this device's row: [1, ...]
            # all_gather -> rule -> sgd; the same key on every device (randomised rules)
            updates, opt_state = tx.update(rows, opt_state, params, key=key)
            return (optax.apply_updates(params, updates), opt_state), None

        return jax.lax.scan(step, (params, opt_state), keys)[0]

    # check_vma=False: all_gather's result is typed "varying" over the axis although every
    # device computes the same aggregate, so the replicated out_specs P() would be refused; and
    # with the check on, jax.grad of the replicated parameters returns the psum of the devices'
    # gradients (the transpose of their implicit broadcast), where each device must keep its own
    sharded = jax.shard_map(
        on_device,
        mesh=mesh,
        in_specs=(P(), P(), P(AXIS), P(AXIS), P()),
        out_specs=(P(), P()),
        check_vma=False,
    )
    return jax.jit(sharded)


def train(rule: str, cfg: Options, mesh: Mesh, data: Dataset) -> list[Point]:
    """Train with ``rule`` on ``mesh``; the test loss and accuracy ``cfg.reports`` times."""
    model = MLP(classes=data.num_classes)
    aggregate = robust_aggregate(rule, cfg.byzantine, num_workers=mesh.size, axis_name=AXIS)
    tx = optax.chain(aggregate, optax.sgd(cfg.lr))
    params = init(model, jax.random.key(cfg.seed), data.test_x[:1])  # the same for every rule
    # replicated on the mesh from the start, as chunk returns them (else a second compilation)
    params, opt_state = jax.device_put((params, tx.init(params)), NamedSharding(mesh, P()))
    x, y = jax.device_put((data.train_x, data.train_y), NamedSharding(mesh, P(AXIS)))
    chunk = make_chunk(model, tx, mesh, cfg)
    key, history, done = jax.random.key(cfg.seed + 1), [], 0
    for stop in np.linspace(0, cfg.steps, cfg.reports + 1, dtype=int)[1:]:
        if stop == done:
            continue
        keys = jax.random.split(jax.random.fold_in(key, done), stop - done)
        params, opt_state = chunk(params, opt_state, x, y, keys)
        metrics = evaluate(model, params, data.test_x, data.test_y)
        history.append(Point(int(stop), *map(float, metrics)))
        done = stop
    return history


def table(runs: dict[str, list[Point]]) -> str:
    """The runs' test loss and accuracy side by side, one row per report."""
    lines = [" " * 6 + "".join(f"{name:>20}" for name in runs)]
    lines.append(f"{'step':>6}" + f"{'loss':>11}{'acc':>9}" * len(runs))
    for points in zip(*runs.values(), strict=True):
        lines.append(
            f"{points[0].step:>6}" + "".join(f"{p.loss:>11.4g}{p.accuracy:>9.3f}" for p in points)
        )
    return "\n".join(lines)


def summary(runs: dict[str, list[Point]], cfg: Options, devices: int) -> str:
    """One JSON line: the setup and each rule's final test loss (null if not finite) and
    accuracy."""
    final = {
        name: {
            "loss": points[-1].loss if math.isfinite(points[-1].loss) else None,
            "accuracy": points[-1].accuracy,
        }
        for name, points in runs.items()
    }
    setup = {
        k: v for k, v in cfg._asdict().items() if k in ("rule", "byzantine", "attack", "steps")
    }
    return json.dumps({"devices": devices, **setup, "final": final})


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jaxbyz.examples.robust_allreduce",
        description="Robust all-reduce with jax.shard_map: a robust rule vs plain averaging "
        "while Byzantine devices attack.",
    )
    default = Options()
    parser.add_argument("--rule", default=default.rule, help="jaxbyz.aggregators.names()")
    parser.add_argument(
        "--byzantine", type=int, default=default.byzantine, help="Byzantine devices"
    )
    parser.add_argument("--attack", choices=sorted(ATTACKS), default=default.attack)
    parser.add_argument("--steps", type=int, default=default.steps)
    parser.add_argument("--devices", type=int, default=None, help="devices used (default: all)")
    parser.add_argument("--seed", type=int, default=default.seed)
    parser.add_argument("--batch", type=int, default=default.batch, help="per device and step")
    parser.add_argument("--lr", type=float, default=default.lr)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or (args.devices is not None and args.devices < 1):
        parser.error("--steps, --batch and --devices must be >= 1")
    return args


def force_cpu_devices(count: int) -> None:
    """Ask XLA for ``count`` CPU devices unless ``XLA_FLAGS`` already sets a count. Effective
    only before JAX initialises its backends (its first device query or computation)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if DEVICE_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {DEVICE_FLAG}={count}".strip()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    force_cpu_devices(args.devices or 8)
    devices = jax.devices()
    if args.devices is not None and len(devices) < args.devices:
        raise SystemExit(
            f"--devices {args.devices}: JAX sees {len(devices)} {devices[0].platform} device(s); "
            f"for CPU devices set XLA_FLAGS={DEVICE_FLAG}={args.devices} JAX_PLATFORMS=cpu "
            "before Python starts"
        )
    devices = devices[: args.devices]
    if not 0 <= args.byzantine < len(devices):
        raise SystemExit(f"--byzantine {args.byzantine}: needs 0 <= K < {len(devices)} devices")
    cfg = Options(**{k: v for k, v in vars(args).items() if k in Options._fields})
    mesh = Mesh(np.asarray(devices), (AXIS,))
    data = make_synthetic(n_train=512 * len(devices), n_test=2000, shape=(32,), seed=cfg.seed)
    try:  # an unknown rule, or (n, f) outside the rule's constraint
        robust_aggregate(cfg.rule, cfg.byzantine, num_workers=len(devices))
    except ValueError as error:
        raise SystemExit(f"--rule {cfg.rule}: {error}") from None
    runs = {rule: train(rule, cfg, mesh, data) for rule in dict.fromkeys([cfg.rule, "average"])}
    print(
        f"{len(devices)} {devices[0].platform} devices, {cfg.byzantine} Byzantine "
        f"(attack {cfg.attack}), {cfg.steps} steps of {cfg.batch} examples per device; "
        "test loss and accuracy"
    )
    print(table(runs))
    print(summary(runs, cfg, len(devices)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
