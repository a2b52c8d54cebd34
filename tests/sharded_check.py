"""Sharded against one-device results, printed as JSON; run by ``tests/test_sharding.py`` in a
subprocess started with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the device count
is fixed when JAX starts, so it cannot be changed inside the test process).

For every rule: ``rule(G, f)`` with ``G`` split by coordinates over the devices (the simulator's
``columns`` layout) and again with ``G`` split by workers, against ``G`` on one device. For a few
simulator configurations, step by step: the parameters, study metrics and accuracy with the
worker axis sharded (:mod:`jaxbyz.sharding`) against one device, and whether the sharded step
program holds collectives (so that the arrays really were split).
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxbyz import aggregators
from jaxbyz.config import Config
from jaxbyz.data import make_synthetic
from jaxbyz.sharding import WORKERS, to_host, worker_mesh
from jaxbyz.simulator import make_simulation

RULE_F = {"bulyan": 2, "brute": 2, "smea": 2}
# one rule per implementation family (order statistics, distances, subsets, iterations, spectra,
# clustering, trust): what CI checks; ``--all-rules`` checks every registered rule
FAMILIES = ("median", "trmean", "krum", "bulyan", "smea", "geomed", "cclip", "dnc", "clustering",
            "caf", "fltrust")  # fmt: skip
RUNS = {"median-little-worker": dict(gar="median", attack="little", momentum_at="worker")}
# with ``--all-runs`` (a slow test): Krum's distances and Bulyan's subsets on split rows, as
# whole steps
MORE_RUNS = {
    "krum-little-worker": dict(gar="krum", attack="little", momentum_at="worker"),
    "bulyan-empire-update": dict(
        gar="bulyan", attack="empire", momentum_at="update", nb_decl_byz=3
    ),
}


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def rule_errors(mesh, names: tuple[str, ...]) -> dict[str, float]:
    """Relative error of the rules ``names`` on sharded inputs (coordinates split for one rule,
    rows split for the next, in turn)."""
    G = np.asarray(
        jax.random.normal(jax.random.key(0), (24, 1000)), np.float32
    )  # device_put needs 8 | n, d
    errors = {}
    layouts = (P(None, WORKERS), P(WORKERS))  # coordinates split, rows split: in turn
    for index, name in enumerate(names):
        rule = aggregators.get(name)
        f = RULE_F.get(name, 4)

        def agg(x, rule=rule, f=f):
            ones = jnp.ones(x.shape[1])  # the server's gradient, for the rules that read it
            return rule(x, f, key=jax.random.key(1), prev=jnp.zeros(x.shape[1]), reference=ones)

        expected = np.asarray(jax.jit(agg)(G))
        sharded = jax.device_put(G, NamedSharding(mesh, layouts[index % 2]))
        errors[name] = relative_error(np.asarray(jax.jit(agg)(sharded)), expected)
    return errors


def run_errors(mesh, runs: dict, steps: int = 8) -> dict[str, dict[str, float]]:
    """Sharded against one-device simulator steps (n = 19: 15 or 16 honest rows on 8 devices).

    Teacher-forced: at every step both programs start from the one-device state, so that each
    comparison measures one step's discrepancy. Reported per run: the worst fraction of
    parameters that differ by more than 1e-5 (relative to the largest), the worst error of the
    study metrics (``|a - b| / (|b| + 1e-5)``), the largest accuracy difference, and the number
    of collectives in the sharded step program.
    """
    dataset = make_synthetic(n_train=2_000, n_test=500)
    results = {}
    for label, overrides in runs.items():
        config = Config(
            dataset="synthetic",
            nb_workers=19,
            nb_decl_byz=4,
            attack_args={"factor": 1.5},
            batch_size=16,
        ).replace(**overrides)
        one, sharded = make_simulation(config, dataset), make_simulation(config, dataset, mesh)
        step_one, step_sharded = jax.jit(one.step), jax.jit(sharded.step)
        eval_one, eval_sharded = jax.jit(one.evaluate), jax.jit(sharded.evaluate)
        hp_one, hp_sharded = one.default_hparams(), sharded.layout.place(one.default_hparams())
        state = jax.jit(one.init)(jax.random.key(3))
        worst = {"theta_differing": 0.0, "study": 0.0, "accuracy": 0.0}
        for _ in range(steps):
            next_one, study_one = step_one(state, hp_one, one.arrays)
            placed = sharded.layout.place(state)
            next_sharded, study_sharded = step_sharded(placed, hp_sharded, sharded.arrays)
            a, b = np.asarray(next_one.theta), to_host(next_sharded.theta)
            differing = float(np.mean(np.abs(a - b) > 1e-5 * np.max(np.abs(a))))
            study = max(
                abs(float(to_host(study_sharded[k])) - float(study_one[k]))
                # some metrics are rounding noise near 0: the deviation of f identical attack
                # rows is ~1e-8 (the mean of k equal rows is not exactly the row)
                / (abs(float(study_one[k])) + 1e-5)
                for k in study_one
                if np.isfinite(study_one[k])
            )
            accuracy = abs(
                float(eval_one(next_one, one.arrays))
                - float(to_host(eval_sharded(sharded.layout.place(next_one), sharded.arrays)))
            )
            for name, value in (("theta_differing", differing), ("study", study)):
                worst[name] = max(worst[name], value)
            worst["accuracy"] = max(worst["accuracy"], accuracy)
            state = next_one
        hlo = step_sharded.lower(placed, hp_sharded, sharded.arrays).compile().as_text()
        worst["collectives"] = sum(
            hlo.count(op) for op in ("all-to-all", "all-gather", "all-reduce")
        )
        results[label] = worst
    return results


def state_layout(mesh) -> dict[str, list[list]]:
    """The partition spec of the worker momenta between the programs of ``python -m
    jaxbyz.train`` (after the start program, after one segment), for 16 honest workers (splits
    evenly over 8 devices) and 15 (does not)."""
    from jaxbyz.driver import Driver

    dataset = make_synthetic(n_train=2_000, n_test=500)
    specs = {}
    for n in (20, 19):
        config = Config(
            dataset="synthetic",
            nb_workers=n,
            nb_decl_byz=4,
            gar="median",
            attack="little",
            attack_args={"factor": 1.5},
            momentum_at="worker",
            batch_size=16,
            nb_steps=4,
            evaluation_delta=2,
        )
        sim = make_simulation(config, dataset, mesh)
        key, hp = sim.layout.place(jax.random.key(0)), sim.layout.place(sim.default_hparams())
        programs = Driver(sim).compile(key, hp, sim.arrays)
        state, _ = programs.start(key, sim.arrays)
        seen = [momenta(state).sharding.spec]
        state, _ = next(iter(programs.steps.values()))(state, hp, sim.arrays)
        seen.append(momenta(state).sharding.spec)
        specs[f"h={sim.honest}"] = [list(spec) for spec in seen]
    return specs


def momenta(state):
    """The workers' momentum buffers ``[h, d]`` in the simulator's state."""
    from jaxbyz import transforms

    return transforms.velocity(state.worker_state)


def main() -> None:
    mesh = worker_mesh()
    every = "--all-rules" in sys.argv[1:]
    names = tuple(aggregators.names()) if every else FAMILIES
    if "--rules-only" in sys.argv[1:]:
        json.dump({"devices": len(jax.devices()), "rules": rule_errors(mesh, names)}, sys.stdout)
        return
    report = {
        "devices": len(jax.devices()),
        "rules": rule_errors(mesh, names),
        "runs": run_errors(mesh, {**RUNS, **MORE_RUNS} if "--all-runs" in sys.argv[1:] else RUNS),
        "state_layout": state_layout(mesh),
    }
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
