"""End-to-end time of the paper's Fashion-MNIST run (issue 2's speed target).

Fashion-MNIST, n = 51, f = 12, krum, "a little is enough" (factor 1.5, negative), momentum 0.9 at
the workers, lr 0.5, batch 83, clip 2, lambda 1e-4, 300 steps, evaluation every 5 steps on the
full 10,000-image test set. Prints wall seconds end to end (data loading, compilation and run),
compile seconds apart, steps per second and the best top-1 accuracy. The paper's PyTorch code takes
about 400 s for this run on a 2-core CPU; the target is under 20 s on the same CPU.

    python benchmarks/paper_run.py [--momentum-at worker] [--clip-mode scale] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax

from jaxbyz import cache as compilation_cache
from jaxbyz.cache import CACHE_HELP
from jaxbyz.config import PAPER_RUN
from jaxbyz.train import run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--momentum-at", default="worker", choices=("update", "worker", "server"))
    parser.add_argument("--clip-mode", default="scale", choices=("scale", "paper"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help=f"{CACHE_HELP}; an empty folder measures a first run, the same folder again a "
        "warm one",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="after the run, time its parts apart (loading, gradients, rule, attack, "
        "evaluation), each jitted alone at the run's shapes, and print where the time goes",
    )
    args = parser.parse_args()
    folder = compilation_cache.enable(args.cache_dir)
    config = PAPER_RUN.replace(
        momentum_at=args.momentum_at, clip_mode=args.clip_mode, seed=args.seed
    )
    started = time.perf_counter()
    summary = run(config, progress=False)
    total = time.perf_counter() - started
    figures = {
        "machine": f"{platform.processor() or platform.machine()}, {jax.device_count()} x "
        f"{jax.devices()[0].device_kind}, jax {jax.__version__}",
        "end_to_end_seconds": round(total, 2),
        "compile_seconds": round(summary["compile_seconds"], 2),
        "compilation_cache": str(folder) if folder else "off",
        "run_seconds": round(summary["run_seconds"], 2),
        "steps_per_second": round(summary["steps_per_second"], 1),
        "best_accuracy": summary["best_accuracy"],
        "best_step": summary["best_step"],
        "momentum_at": args.momentum_at,
        "clip_mode": args.clip_mode,
        "seed": args.seed,
    }
    process = process_seconds()
    if process is not None:
        figures["process_seconds"] = round(process, 2)  # with Python's and JAX's imports
    if args.breakdown:
        figures["breakdown_seconds"] = breakdown(config, summary)
    for key, value in figures.items():
        print(f"{key:>20}: {value}")
    if args.json:
        with open(args.json, "w") as fd:
            json.dump(figures, fd, indent=2)


def process_seconds() -> float | None:
    """Seconds since this process started (Linux: /proc), imports included; None elsewhere."""
    try:
        with open("/proc/self/stat") as fd:
            start_ticks = int(fd.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fd:
            uptime = float(fd.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def breakdown(config, summary: dict) -> dict[str, float]:
    """Where the run's time goes: each part of a step jitted alone at the run's shapes, timed
    over a few calls (median) and scaled to the run's 300 steps and 61 evaluations."""
    import jax.numpy as jnp

    from jaxbyz.data import load_dataset
    from jaxbyz.simulator import make_simulation

    clock = time.perf_counter()
    dataset = load_dataset(config.dataset, config.data_dir)
    loading = time.perf_counter() - clock
    sim = make_simulation(config, dataset)
    key, hp, data = jax.random.key(0), sim.default_hparams(), sim.arrays
    state = jax.jit(sim.init)(key)
    h, f, d = sim.honest, sim.byzantine, sim.dim
    rows = jax.random.normal(key, (h + f, d), jnp.float32)
    parts = {
        "gradients": (jax.jit(lambda s: sim._gradients(s, s.theta, key, hp, data)[0]), (state,)),
        "rule": (jax.jit(lambda G: sim.rule(G, config.nb_decl_byz)), (rows,)),
        "attack": (jax.jit(lambda H: sim.attack(H[:h], f, key=key, f_decl=f)), (rows,)),
        "evaluation": (jax.jit(sim.evaluate), (state, data)),
    }
    counts = {"gradients": config.nb_steps, "rule": config.nb_steps, "attack": config.nb_steps}
    counts["evaluation"] = len(sim.evaluation_steps())
    out = {"loading": round(loading, 2), "compile": round(summary["compile_seconds"], 2)}
    for name, (fn, args) in parts.items():
        jax.block_until_ready(fn(*args))
        times = []
        for _ in range(5):
            clock = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times.append(time.perf_counter() - clock)
        out[name] = round(statistics.median(times) * counts[name], 2)
    named = sum(out[k] for k in parts)
    out["rest of the run (momentum, clipping, metrics, dispatch)"] = round(
        summary["run_seconds"] - named, 2
    )
    if config.model == "simples-full":
        out.update(blas_floor(h, config.batch_size, sim.dataset.num_classes, rows, counts))
    return out


def blas_floor(h: int, b: int, classes: int, rows, counts: dict) -> dict[str, float]:
    """The same products at NumPy's BLAS speed, scaled like the parts: the MLP's gradients (one
    product of all ``h * b`` examples per layer forward; per worker ``X_iᵀ D_i`` for each weight
    matrix backward) and Krum's Gram matrix ``G Gᵀ``: what no implementation of these
    computations beats on this machine."""
    import numpy as np

    rng = np.random.default_rng(0)
    X = rng.standard_normal((h * b, 784), np.float32)
    W1 = rng.standard_normal((784, 100), np.float32)
    W2 = rng.standard_normal((100, 10 if classes is None else classes), np.float32)
    G = np.asarray(rows)

    def gradients() -> None:
        A = np.maximum(X @ W1, 0.0)
        D2 = A @ W2  # stands for the output error: same shape and cost
        D1 = D2 @ W2.T
        np.matmul(X.reshape(h, b, -1).transpose(0, 2, 1), D1.reshape(h, b, -1))
        np.matmul(A.reshape(h, b, -1).transpose(0, 2, 1), D2.reshape(h, b, -1))

    out = {}
    for name, fn, count in (
        ("gradients at BLAS speed", gradients, counts["gradients"]),
        ("Gram at BLAS speed", lambda: G @ G.T, counts["rule"]),
    ):
        fn()
        times = []
        for _ in range(5):
            clock = time.perf_counter()
            fn()
            times.append(time.perf_counter() - clock)
        out[name] = round(statistics.median(times) * count, 2)
    return out


if __name__ == "__main__":
    main()
