"""Time per attack call: adaptive ``little`` against Krum beside the fixed-factor attack.

The paper's MNIST setting: n = 51 workers, h = 39 honest, f = 12 Byzantine (declared = real),
d = 79,510 (the 784-100-10 MLP), the paper's Krum (Euclidean distances, m = n - f - 2). The
adaptive attack spends 16 rule evaluations (the paper's budget) in 1, 2, 4, 8 or 16 stages of
``vmap``-ed candidates. Each call is jitted; compile time is measured apart; the figure is the
median of several calls. The objective reached is printed beside (higher is a stronger attack).

    python benchmarks/attacks.py [--repeats 7] [--stages 1 2 4 16] [--json out.json]

``--optimized RULE ...`` times instead the ``optimized`` attack (``--optimized-steps`` ascent
steps from each of its four starts) against each rule, at ``--honest``/``--byzantine``/``--dim``;
``--minmax-autodiff`` differentiates the order statistics below 128 rows through the sorting
network's ``min``/``max`` (the derivative before 2026-12-02) for a side-by-side figure::

    python benchmarks/attacks.py --optimized median trmean --honest 15 --byzantine 4

``time_attack`` and ``make_inputs`` are importable (for the full simulator-step timing).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp

from jaxbyz import aggregators, attacks
from jaxbyz.rows import HIGHEST, row_mean


def make_inputs(h: int = 39, d: int = 79_510, seed: int = 0) -> jax.Array:
    """A random ``[h, d]`` float32 honest matrix (a common mean plus per-worker noise)."""
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k1, (h, d)) + jax.random.normal(k2, (d,))


def time_attack(
    attack: attacks.Attack,
    H: jax.Array,
    f: int,
    rule: Any,
    *,
    f_decl: int | None = None,
    repeats: int = 7,
) -> dict[str, float]:
    """Compile seconds, median/min call milliseconds, and the objective ``||rule - mu||²``."""
    f_decl = f if f_decl is None else f_decl
    call = jax.jit(lambda H, key: attack(H, f, key=key, rule=rule, f_decl=f_decl))
    key = jax.random.key(0)
    started = time.perf_counter()
    byz = call(H, key).block_until_ready()
    compile_s = time.perf_counter() - started
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call(H, key).block_until_ready()
        times.append(time.perf_counter() - started)
    dev = rule(jnp.concatenate([H, byz]), f_decl) - row_mean(H)
    return {
        "compile_s": compile_s,
        "median_ms": 1e3 * statistics.median(times),
        "min_ms": 1e3 * min(times),
        "objective": float(jnp.dot(dev, dev, precision=HIGHEST)),
    }


def run(
    h: int = 39, f: int = 12, d: int = 79_510, stages: tuple[int, ...] = (1, 2, 4, 16),
    repeats: int = 7,
) -> list[dict[str, Any]]:  # fmt: skip
    """Rows ``{attack, evals, stages, compile_s, median_ms, min_ms, objective}``."""
    H = make_inputs(h, d)
    rule = aggregators.get("krum")
    cases = [("little factor=1.5 negative", attacks.get("little", factor=1.5, negative=True), 0, 0)]
    cases += [
        (f"little adaptive, {s} stage(s)", attacks.get("little", factor=-16, stages=s), 16, s)
        for s in stages
    ]
    rows = []
    for label, atk, evals, st in cases:
        row = {"attack": label, "evals": evals, "stages": st}
        row.update(time_attack(atk, H, f, rule, repeats=repeats))
        rows.append(row)
    return rows


def time_step(attack_args: dict[str, Any], repeats: int = 5) -> dict[str, float]:
    """Compile seconds and median milliseconds of one simulator step of the paper's run
    (n=51, f=12, krum, momentum at the workers, batch 83, the 784-100-10 MLP) with ``little``
    under ``attack_args``, on synthetic data of Fashion-MNIST's shape."""
    from jaxbyz.config import PAPER_RUN
    from jaxbyz.data import make_synthetic
    from jaxbyz.simulator import make_simulation

    sim = make_simulation(
        PAPER_RUN.replace(dataset="synthetic", attack_args=attack_args),
        make_synthetic(n_train=10_000, n_test=1_000),
    )
    hp = sim.default_hparams()
    state = jax.jit(sim.init)(jax.random.key(0))
    started = time.perf_counter()
    step = jax.jit(sim.step).lower(state, hp, sim.arrays).compile()
    compile_s = time.perf_counter() - started
    jax.block_until_ready(step(state, hp, sim.arrays))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(step(state, hp, sim.arrays))
        times.append(time.perf_counter() - started)
    return {"compile_s": compile_s, "median_ms": 1e3 * statistics.median(times)}


def run_optimized(
    rules: list[str], h: int, f: int, d: int, steps: int, repeats: int
) -> list[dict[str, Any]]:
    """Rows ``{attack, rule, compile_s, median_ms, min_ms, objective}`` of the optimized attack
    (``steps`` ascent steps per start) against each rule (declared ``f``)."""
    H = make_inputs(h, d)
    atk = attacks.get("optimized", steps=steps)
    rows = []
    for name in rules:
        row = {"attack": f"optimized, {steps} steps", "rule": name}
        row.update(time_attack(atk, H, f, aggregators.get(name), repeats=repeats))
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--honest", type=int, default=39)
    parser.add_argument("--byzantine", type=int, default=12)
    parser.add_argument("--dim", type=int, default=79_510)
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2, 4, 16])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument(
        "--optimized", nargs="+", metavar="RULE", default=None,
        help="time the optimized attack against these rules instead",
    )  # fmt: skip
    parser.add_argument("--optimized-steps", type=int, default=3, help="its ascent steps")
    parser.add_argument(
        "--minmax-autodiff", action="store_true",
        help="differentiate the sorting network through its min/max (the former derivative)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.minmax_autodiff:
        from jaxbyz.aggregators import order

        order.network_ranks = order._network
    if args.optimized is not None:
        rows = run_optimized(
            args.optimized, args.honest, args.byzantine, args.dim, args.optimized_steps,
            args.repeats,
        )  # fmt: skip
        how = "min/max autodiff" if args.minmax_autodiff else "selected-entry derivative"
        print(f"h={args.honest}, f={args.byzantine}, d={args.dim}; {how}")
        for r in rows:
            print(
                f"{r['attack']} vs {r['rule']:<10} compile {r['compile_s']:>6.2f} s   "
                f"call {r['median_ms']:>9.1f} ms (min {r['min_ms']:.1f})"
            )
        if args.json:
            with open(args.json, "w") as fd:
                json.dump({"rows": rows, "minmax_autodiff": args.minmax_autodiff}, fd, indent=2)
        return
    rows = run(args.honest, args.byzantine, args.dim, tuple(args.stages), args.repeats)
    machine = (
        f"{platform.processor() or platform.machine()}, {jax.device_count()} x "
        f"{jax.devices()[0].device_kind}, jax {jax.__version__}"
    )
    n = args.honest + args.byzantine
    print(f"krum, n={n} (h={args.honest}, f={args.byzantine}), d={args.dim}; {machine}")
    print(f"{'attack':<32} {'compile s':>9} {'median ms':>10} {'min ms':>8} {'objective':>11}")
    for r in rows:
        print(
            f"{r['attack']:<32} {r['compile_s']:>9.2f} {r['median_ms']:>10.2f} "
            f"{r['min_ms']:>8.2f} {r['objective']:>11.4g}"
        )
    steps = {
        "little factor=1.5 negative": time_step({"factor": 1.5, "negative": True}),
        "little adaptive (16 evals, 4 stages)": time_step({"factor": -16}),
    }
    print("\none simulator step (paper's run: gradients, clip, worker momentum, attack, krum)")
    for label, t in steps.items():
        print(f"{label:<38} compile {t['compile_s']:>6.2f} s   step {t['median_ms']:>8.2f} ms")
    if args.json:
        with open(args.json, "w") as fd:
            payload = {"machine": machine, "n": n, "d": args.dim, "rows": rows, "steps": steps}
            json.dump(payload, fd, indent=2)


if __name__ == "__main__":
    main()
