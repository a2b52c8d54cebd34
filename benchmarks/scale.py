"""Federated and decentralized scale: thousands of clients or nodes in one program.

Two settings, the MNIST MLP (784-100-10, d = 79,510) on MNIST-shaped synthetic data, batch 83,
momentum 0.9 at the workers, clipping at 2:

- ``torus``: 1,024 nodes on a 32x32 torus (``--topology torus:32x32``), 16 of them Byzantine
  sending "a little is enough" computed on each recipient's honest neighbours, each honest node
  combining its neighbourhood of 5 by ClippedGossip (adaptive radius) or by its median; one
  model per node, ``[1008, d]``;
- ``federated``: 4,096 clients, 10% of them (410) sampled per round (``--clients-per-round``),
  ``K`` local steps, 5% Byzantine, the median told 41 Byzantine per round; one worker momentum
  per client, ``[4096, d]``, gathered and scattered for the sampled.

For each: the compile seconds apart, the median seconds per step (round) over ``--steps`` steps
run as the driver's segment program, steps per second, per-example gradients per second, the
memory XLA plans for the program (``compiled.memory_analysis()``) and the process's peak
resident memory so far. Writes ``<out>.json`` and ``<out>.md`` after every row.

    python benchmarks/scale.py                       # both settings, 3 steps each
    python benchmarks/scale.py --only torus --steps 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).parent))
from step import machine, median_seconds, peak_rss_gb, planned_gb

from jaxbyz.config import Config
from jaxbyz.data import make_synthetic
from jaxbyz.driver import Driver
from jaxbyz.simulator import make_simulation

COMMON = dict(
    dataset="synthetic",
    model="simples-full",
    batch_size=83,
    momentum=0.9,
    momentum_at="worker",
    attack="little",
    attack_args={"factor": 1.5, "negative": True},
    gradient_clip=2.0,
    learning_rate=0.1,
    nb_for_study=0,
)


def settings(local_steps: list[int]) -> list[tuple[str, Config]]:
    torus = dict(nb_workers=1024, nb_decl_byz=1, nb_real_byz=16, topology="torus:32x32")
    rows = [
        ("torus 32x32, clipped-gossip", Config(**COMMON, **torus, mixing="clipped-gossip")),
        ("torus 32x32, median", Config(**COMMON, **torus, mixing="rule", gar="median")),
    ]
    clients = dict(
        nb_workers=4096, nb_decl_byz=204, clients_per_round=410, round_decl_byz=41, gar="median"
    )
    for k in local_steps:
        rows.append(
            (f"4096 clients, 410/round, K={k}", Config(**COMMON, **clients, nb_local_steps=k))
        )
    return rows


def bench(name: str, config: Config, steps: int, repeats: int, dataset) -> dict:
    sim = make_simulation(config, dataset)
    hp, key = sim.default_hparams(), jax.random.key(0)
    programs = Driver(sim).compile(key, hp, sim.arrays, lengths={steps})
    scan = programs.steps[steps]
    planned, temporaries = planned_gb(scan)
    state, _ = programs.start(key, sim.arrays)
    carry = [state]

    def call():
        carry[0], study = scan(carry[0], hp, sim.arrays)
        return study

    step_s = median_seconds(call, repeats) / steps
    rows_per_step = config.participants if config.federated else sim.honest
    examples = rows_per_step * config.batch_size * config.nb_local_steps
    return {
        "setting": name,
        "n": config.nb_workers,
        "rows": rows_per_step,
        "local_steps": config.nb_local_steps,
        "d": sim.dim,
        "compile_s": programs.compile_times[f"steps[{steps}]"],
        "step_s": step_s,
        "steps_per_s": 1 / step_s,
        "examples_per_s": examples / step_s,
        "planned_gb": planned,
        "temp_gb": temporaries,
        "peak_rss_gb": peak_rss_gb(),
    }


def markdown(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| setting | n | rows per step | s/step | steps/s | example gradients/s | compile s "
        "| planned GB | temporaries GB | RSS peak so far GB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['n']:,} | {r['rows']:,} | {r['step_s']:.2f} "
            f"| {r['steps_per_s']:.2f} | {r['examples_per_s']:,.0f} | {r['compile_s']:.1f} "
            f"| {r['planned_gb']:.2f} | {r['temp_gb']:.2f} | {r['peak_rss_gb']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="steps per timed call (default 3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls (median; default 3)")
    parser.add_argument("--local-steps", type=int, nargs="+", default=[1, 5], metavar="K")
    parser.add_argument("--only", choices=["torus", "federated"], help="one setting only")
    parser.add_argument("--out", default="benchmarks/cpu-results/scale", help="output stem")
    args = parser.parse_args(argv)
    dataset = make_synthetic(n_train=20_000, n_test=1_000, seed=0)
    header = f"Scale ({machine()}, {time.strftime('%Y-%m-%d')}); `{' '.join(sys.argv)}`"
    rows = []
    for name, config in settings(args.local_steps):
        if args.only and (args.only == "torus") != ("torus" in name):
            continue
        rows.append(bench(name, config, args.steps, args.repeats, dataset))
        print(markdown(rows[-1:], "").splitlines()[-1], flush=True)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
        out.with_suffix(".md").write_text(markdown(rows, header))


if __name__ == "__main__":
    main()
