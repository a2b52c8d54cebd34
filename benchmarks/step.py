"""Simulator throughput: the whole Byzantine SGD step at n workers, beside the rule alone.

The MNIST MLP (784-100-10, d = 79,510 parameters) on MNIST-shaped synthetic data, batch 83 per
worker, momentum 0.9 at the workers, gradient clipping at 2, "a little is enough" with the fixed
factor 1.5 (negative), ``f = (n - 3) // 4`` Byzantine workers for every rule (Bulyan's largest
``f``), one device or, with ``--shard-workers``, the worker axis split over every device.

For every rule and ``n``: the compile seconds of the segment program apart; the median seconds
per step over ``--steps`` steps run as one ``lax.scan``, the driver's segment program as
``python -m jaxbyz.train`` compiles it (after one warm-up call), steps per second and honest worker
gradients per second (``(n - f) x steps/s``: the per-example forward and backward passes the
simulator really computes); the memory XLA plans for the step program (arguments, outputs and
temporaries, from ``compiled.memory_analysis()``) and its temporaries alone, also as a count
of ``n x d`` float32 matrices (the data set is an input, not a temporary): these are per shape;
the device's peak bytes in use *so far in the process* where the backend reports it (GPU, TPU)
and the process's peak resident memory so far (both are high-water marks over every shape run
before, smallest ``n`` first); and the rule alone (``rule(G, f)``, jitted) on a random ``n x d``
matrix with its share of the step. Larger ``n`` are skipped for a rule once one of its steps took
more than ``--budget`` seconds, and shapes whose planned memory exceeds ``--max-gb``; a shape that
fails (out of device memory, say) is recorded with the error and the others go on.
Writes ``<out>.json`` and ``<out>.md`` after every shape, so an interrupted run keeps its rows.

    python benchmarks/step.py                                  # n = 51, 256, 1024
    python benchmarks/step.py --n 4096 --rules krum bulyan --steps 2   # the 4096-worker run
    python benchmarks/step.py --n 51 256 1024 4096 16384 --budget 60   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from jaxbyz import aggregators
from jaxbyz.config import Config
from jaxbyz.data import make_synthetic
from jaxbyz.driver import Driver
from jaxbyz.sharding import worker_mesh
from jaxbyz.simulator import make_simulation

DEFAULT_N = (51, 256, 1024)
DEFAULT_RULES = ("average", "median", "krum", "bulyan")


def byzantine_count(n: int) -> int:
    """``f`` for ``n`` workers: the largest Bulyan tolerates (``n >= 4f + 3``)."""
    return max(0, (n - 3) // 4)


def machine() -> str:
    device = jax.devices()[0]
    return (
        f"{platform.processor() or platform.machine()}, {jax.device_count()} x "
        f"{device.device_kind} ({device.platform}), jax {jax.__version__}"
    )


def peak_rss_gb() -> float:
    """The process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def device_peak_gb() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


def planned_gb(compiled) -> tuple[float | None, float | None]:
    """GB XLA plans for a compiled program: in all (arguments, outputs, temporaries), and for
    its temporaries alone (what the step allocates beyond its inputs: the data set is an input)."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None, None
    total = (
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        + analysis.temp_size_in_bytes
        - analysis.alias_size_in_bytes
    )
    return total / 2**30, analysis.temp_size_in_bytes / 2**30


def median_seconds(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_step(rule: str, n: int, args: argparse.Namespace, dataset) -> dict:
    f = byzantine_count(n)
    config = Config(
        dataset="synthetic",
        nb_workers=n,
        nb_decl_byz=f,
        gar=rule,
        attack="little",
        attack_args={"factor": 1.5, "negative": True},
        momentum_at="worker",
    )
    mesh = worker_mesh() if args.shard_workers else None
    sim = make_simulation(config, dataset, mesh)
    hp = sim.layout.place(sim.default_hparams())
    key = sim.layout.place(jax.random.key(0))
    # the driver's own programs: --shard-workers keeps the momenta split between calls
    programs = Driver(sim).compile(key, hp, sim.arrays, lengths={args.steps})
    compile_s = programs.compile_times[f"steps[{args.steps}]"]
    scan = programs.steps[args.steps]
    state, _ = programs.start(key, sim.arrays)
    matrix_gb = n * sim.dim * 4 / 2**30
    planned, temporaries = planned_gb(scan)
    row = {
        "rule": rule,
        "n": n,
        "f": f,
        "d": sim.dim,
        "devices": sim.layout.devices,
        "compile_s": compile_s,
        "planned_gb": planned,
        "temp_gb": temporaries,
        "temp_matrices": None if temporaries is None else temporaries / matrix_gb,
    }
    if planned is not None and planned > args.max_gb:
        return {**row, "skipped": f"plans {planned:.1f} GB > --max-gb {args.max_gb}"}
    carry = [state]  # the program donates (updates in place) the state it is given

    def call():
        carry[0], study = scan(carry[0], hp, sim.arrays)
        return study

    run_s = median_seconds(call, args.repeats)
    step_s = run_s / args.steps
    row.update(
        step_ms=1e3 * step_s,
        steps_per_s=1 / step_s,
        gradients_per_s=(n - f) / step_s,
        device_peak_gb=device_peak_gb(),
        peak_rss_gb=peak_rss_gb(),
    )
    row.update(bench_rule(rule, n, f, sim.dim, args.repeats, step_s))
    return row


def bench_rule(rule: str, n: int, f: int, d: int, repeats: int, step_s: float) -> dict:
    """The rule alone on a random ``n x d`` matrix, jitted; compile apart."""
    aggregate = aggregators.get(rule)
    G = jax.random.normal(jax.random.key(1), (n, d), jnp.float32)
    fn = jax.jit(lambda G: aggregate(G, f))
    started = time.perf_counter()
    compiled = fn.lower(G).compile()
    compile_s = time.perf_counter() - started
    rule_s = median_seconds(lambda: compiled(G), repeats)
    return {
        "rule_compile_s": compile_s,
        "rule_ms": 1e3 * rule_s,
        "rule_share": rule_s / step_s,
    }


def fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def markdown(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| rule | n | f | devices | ms/step | steps/s | gradients/s | compile s | planned GB "
        "| temporaries GB | as n x d | device peak so far GB | RSS peak so far GB | rule ms "
        "| rule share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['rule']} | {r['n']} | {r['f']} | | skipped: {r['skipped']} |")
            continue
        lines.append(
            f"| {r['rule']} | {r['n']} | {r['f']} | {r['devices']} | {r['step_ms']:.1f} "
            f"| {r['steps_per_s']:.2f} | {r['gradients_per_s']:,.0f} | {r['compile_s']:.1f} "
            f"| {fmt(r['planned_gb'], '.2f')} | {fmt(r['temp_gb'], '.2f')} "
            f"| {fmt(r['temp_matrices'], '.1f')} "
            f"| {fmt(r['device_peak_gb'], '.2f')} | {r['peak_rss_gb']:.2f} "
            f"| {r['rule_ms']:.1f} | {100 * r['rule_share']:.0f}% |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, nargs="+", default=list(DEFAULT_N))
    parser.add_argument("--rules", nargs="+", default=list(DEFAULT_RULES))
    parser.add_argument("--steps", type=int, default=5, help="steps per timed call (a scan)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls (median)")
    parser.add_argument(
        "--budget",
        type=float,
        default=30.0,
        help="seconds per step before the larger n of a rule are skipped",
    )
    parser.add_argument("--max-gb", type=float, default=20.0, help="skip shapes planning more")
    parser.add_argument(
        "--shard-workers", action="store_true", help="split the worker axis over every device"
    )
    parser.add_argument("--out", default="benchmarks/results/step", help="output path stem")
    args = parser.parse_args(argv)
    for name, value in (("--steps", args.steps), ("--repeats", args.repeats)):
        if value < 1:
            parser.error(f"{name} must be >= 1, got {value}")
    unknown = sorted(set(args.rules) - set(aggregators.names()))
    if unknown:
        parser.error(f"--rules: unknown {unknown}; known: {', '.join(aggregators.names())}")

    dataset = make_synthetic(n_train=60_000, n_test=1_000)
    header = f"Machine: {machine()}; {args.steps} steps per call, median of {args.repeats}."
    print(header, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows, over_budget = [], set()
    for n in sorted(args.n):  # smallest first: the high-water marks grow with n
        for rule in args.rules:
            rows.append(measure(rule, n, args, dataset, over_budget))
            print(json.dumps(rows[-1]), flush=True)
            if rows[-1].get("step_ms", 0) > 1e3 * args.budget:
                over_budget.add(rule)
            write(out, rows, header)
    print(markdown(rows, header))


def measure(rule: str, n: int, args: argparse.Namespace, dataset, over_budget: set) -> dict:
    """One row: the step and the rule at ``n`` workers, or why the shape was skipped."""
    f = byzantine_count(n)
    if rule in over_budget:
        return {"rule": rule, "n": n, "f": f, "skipped": "over --budget"}
    try:
        aggregators.get(rule).check(n, f)
        return bench_step(rule, n, args, dataset)
    except ValueError as err:
        return {"rule": rule, "n": n, "f": f, "skipped": str(err)}
    except Exception as err:  # out of device memory, say: record it, go on with the others
        return {"rule": rule, "n": n, "f": f, "skipped": f"{type(err).__name__}: {err}"[:300]}


def write(out: Path, rows: list[dict], header: str) -> None:
    """``<out>.json`` and ``<out>.md`` with the rows so far."""
    payload = {"machine": machine(), "argv": sys.argv[1:], "rows": rows}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(rows, header))


if __name__ == "__main__":
    main()
