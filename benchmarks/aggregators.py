"""Throughput of every aggregation rule, jitted, against a vectorised NumPy baseline.

For each rule and each ``n x d`` float32 matrix (standard normal rows): compile time apart, the
median time per call over ``--repeats`` calls after one warm-up call, the effective bandwidth
``n d 4 / time`` (bytes of input read per second), and the same rule written with vectorised NumPy
(``np.sort``, ``np.partition``, a BLAS Gram matrix) timed in the same run, with the ratio. Shapes
whose matrix exceeds ``--max-gb`` are skipped, and so are the larger shapes of a rule once one of
its calls took more than ``--budget`` seconds. Writes ``<out>.json`` and ``<out>.md``.

The hardware's limit, measured in the same run: for each shape, one copy of the same matrix,
timed like the rules, by XLA (a jitted ``X + z`` with ``z`` a traced zero, so that XLA must
write a fresh buffer) and by NumPy (``np.copyto`` into a buffer allocated once). ``copy GB/s`` is
the faster of the two, in bytes of input per second (a copy also writes as many), and each
rule's ``of copy`` is its GB/s over that: the fraction of one memory pass its time amounts to.
A rule must read its whole input once, so 1.0 is the most a rule that reads its input can
expect; a rule that only reduces (no full-size write) can exceed it, up to the read bandwidth.

    python benchmarks/aggregators.py --quick                 # n=51 and n=256 at d=79,510
    python benchmarks/aggregators.py --rules krum median --n 51 256 --d 100000
    python benchmarks/aggregators.py                          # the whole grid (hours on 2 cores)
    python benchmarks/aggregators.py --kernels --n 256 1024 --d 79510 --repeats 7

``f`` is the paper's choice for ``n = 51``: ``(n-3)//2`` (24), ``(n-3)//4`` for Bulyan (12), and
for brute the largest ``f <= (n-1)//2`` with ``C(n, f) <= 10^5``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxbyz import aggregators

DEFAULT_N = (11, 51, 256, 1024, 4096)
DEFAULT_D = (10_000, 100_000, 1_000_000)
QUICK = ((51, 79_510), (256, 79_510))
TARGETS_MS = {  # the paper's PyTorch code on the same 2-core CPU (issue 3), n = 51, d = 79,510
    (51, "median"): 37,
    (51, "trmean"): 108,
    (51, "phocas"): 162,
    (51, "meamed"): 100,
    (51, "krum"): 48,
    (51, "bulyan"): 84,
    (256, "krum"): 130,
    (256, "bulyan"): 170,
}


def tolerated(rule: str, n: int) -> int:
    """The ``f`` benchmarked for ``rule`` at ``n`` workers."""
    if rule == "bulyan":
        return max(0, (n - 3) // 4)
    if rule == "brute":
        f = (n - 1) // 2
        while f > 0 and math.comb(n, f) > 100_000:
            f -= 1
        return f
    return max(0, (n - 3) // 2)


# ---------------------------------------------------------------------------- NumPy baselines


def _np_median(G: np.ndarray) -> np.ndarray:
    k = (G.shape[0] - 1) // 2
    return np.partition(G, k, axis=0)[k]


def _np_trmean(G: np.ndarray, f: int) -> np.ndarray:
    return np.sort(G, axis=0)[f : G.shape[0] - f].mean(axis=0)


def _np_closest(G: np.ndarray, c: np.ndarray, m: int) -> np.ndarray:
    idx = np.argsort(np.abs(G - c), axis=0, kind="stable")[:m]
    return np.take_along_axis(G, idx, axis=0).mean(axis=0)


def _np_distances(G: np.ndarray) -> np.ndarray:
    K = G @ G.T
    sq = np.diag(K)
    return np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * K, 0))


def _np_scores(D: np.ndarray, k: int) -> np.ndarray:
    off = D + np.diag(np.full(D.shape[0], np.inf))
    return np.sort(off, axis=1)[:, :k].sum(axis=1)


def _np_krum(G: np.ndarray, f: int) -> np.ndarray:
    n = G.shape[0]
    order = np.argsort(_np_scores(_np_distances(G), n - f - 1), kind="stable")
    return G[order[: n - f - 2]].mean(axis=0)


def _np_bulyan(G: np.ndarray, f: int) -> np.ndarray:
    n = G.shape[0]
    m, theta = n - f - 2, n - 2 * f - 2
    order = np.argsort(_np_scores(_np_distances(G), m), kind="stable")[:m]
    suffix = np.cumsum(G[order][::-1], axis=0)[::-1][:theta]
    Y = suffix / (m - np.arange(theta))[:, None]
    return _np_closest(Y, _np_median(Y), theta - 2 * f)


def _np_smallest_mean(G: np.ndarray, keys: np.ndarray, c: int) -> np.ndarray:
    return G[np.argsort(keys, kind="stable")[:c]].mean(axis=0)


def _np_geomed(G: np.ndarray, iterations: int) -> np.ndarray:
    z = _np_median(G)
    for _ in range(iterations):
        w = 1 / np.maximum(np.linalg.norm(G - z, axis=1), 1e-6)
        z = w @ G / w.sum()
    return z


def _np_cclip(G: np.ndarray, tau: float) -> np.ndarray:
    diff = G - np.zeros(G.shape[1], G.dtype)
    scale = np.minimum(1, tau / np.maximum(np.linalg.norm(diff, axis=1), 1e-30))
    return scale @ diff / G.shape[0]


def _np_brute(G: np.ndarray, f: int) -> np.ndarray:
    n = G.shape[0]
    D = _np_distances(G)
    best = min(itertools.combinations(range(n), n - f), key=lambda s: D[np.ix_(s, s)].max())
    return G[list(best)].mean(axis=0)


NUMPY: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "average": lambda G, f: G.mean(axis=0),
    "median": lambda G, f: _np_median(G),
    "trmean": _np_trmean,
    "phocas": lambda G, f: _np_closest(G, _np_trmean(G, f), G.shape[0] - f),
    "meamed": lambda G, f: _np_closest(G, _np_median(G), G.shape[0] - f),
    "krum": _np_krum,
    "bulyan": _np_bulyan,
    "brute": _np_brute,
    "aksel": lambda G, f: _np_smallest_mean(
        G, ((G - _np_median(G)) ** 2).sum(axis=1), (G.shape[0] + 1) // 2
    ),
    "cge": lambda G, f: _np_smallest_mean(G, (G**2).sum(axis=1), G.shape[0] - f),
    "monna": lambda G, f: _np_smallest_mean(
        G, ((G - _np_median(G)) ** 2).sum(axis=1), G.shape[0] - f
    ),
    "geomed": lambda G, f: _np_geomed(G, 100),
    "cclip": lambda G, f: _np_cclip(G, 10.0),
}


# ---------------------------------------------------------------------------- timing


def timed(fn: Callable[[], object], repeats: int, budget: float) -> tuple[float, int]:
    """Median seconds per call of ``fn`` (already warm) and the number of calls timed."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
        if sum(times) > budget:
            break
    return statistics.median(times), len(times)


_COPY: dict[tuple[int, int], dict] = {}


def copy_bandwidth(G: jax.Array, repeats: int) -> dict:
    """Bytes of ``G`` copied per second (GB/s), by XLA and by NumPy, measured once per shape."""
    shape = tuple(G.shape)
    if shape not in _COPY:
        nbytes = G.size * G.dtype.itemsize
        zero = jnp.zeros((), G.dtype)
        xla = jax.jit(lambda X, z: X + z).lower(G, zero).compile()
        jax.block_until_ready(xla(G, zero))
        xla_s = timed(lambda: xla(G, zero), repeats, math.inf)[0]
        src = np.asarray(G)
        dst = np.empty_like(src)
        np.copyto(dst, src)
        numpy_s = timed(lambda: np.copyto(dst, src), repeats, math.inf)[0]
        _COPY[shape] = {
            "copy_xla_gb_per_s": round(nbytes / xla_s / 1e9, 3),
            "copy_numpy_gb_per_s": round(nbytes / numpy_s / 1e9, 3),
        }
        _COPY[shape]["copy_gb_per_s"] = max(_COPY[shape].values())
    return _COPY[shape]


def bench_one(name: str, n: int, d: int, args: argparse.Namespace) -> dict:
    """One rule at one shape: compile and run times, bandwidth, NumPy baseline."""
    f = tolerated(name, n)
    rule = aggregators.get(name)
    rule.check(n, f)
    G = jax.block_until_ready(jax.random.normal(jax.random.key(n * 7 + d), (n, d), jnp.float32))
    key = jax.random.key(0)
    fn = jax.jit(lambda G, key: rule.aggregate(G, f, key=key)[0])
    start = time.perf_counter()
    compiled = fn.lower(G, key).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(compiled(G, key))  # warm-up
    first_s = time.perf_counter() - start
    jax_s, calls = timed(lambda: compiled(G, key), args.repeats, args.budget)
    record = {
        "rule": name,
        "n": n,
        "d": d,
        "f": f,
        "compile_s": round(compile_s, 3),
        "ms": round(jax_s * 1e3, 3),
        "calls": calls,
        "gb_per_s": round(n * d * 4 / jax_s / 1e9, 3),
        "first_call_s": round(first_s, 3),
    }
    record.update(copy_bandwidth(G, args.repeats))
    record["of_copy"] = round(record["gb_per_s"] / record["copy_gb_per_s"], 4)
    numpy_ok = n <= args.numpy_max_n and not (name == "brute" and n > 11)
    if not args.no_numpy and name in NUMPY and numpy_ok:
        Gn = np.asarray(G)
        baseline = NUMPY[name]
        start = time.perf_counter()
        baseline(Gn, f)
        once = time.perf_counter() - start
        np_s = (
            once
            if once > args.budget / 2
            else timed(lambda: baseline(Gn, f), args.repeats, args.budget)[0]
        )
        record["numpy_ms"] = round(np_s * 1e3, 3)
        record["numpy_over_jax"] = round(np_s / jax_s, 2)
        record["numpy_of_copy"] = round(n * d * 4 / np_s / 1e9 / record["copy_gb_per_s"], 4)
    target = TARGETS_MS.get((n, name))
    if target is not None and d == 79_510:
        record["target_ms"] = target
        record["met"] = jax_s * 1e3 <= target
    return record


def markdown(records: list[dict], header: str) -> str:
    """A Markdown table of the records."""
    lines = [
        header,
        "",
        "| rule | n | d | f | ms/call | compile s | GB/s | copy GB/s | of copy | NumPy ms "
        "| NumPy of copy | NumPy/JAX | target ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    nan = float("nan")
    for r in records:
        if "skipped" in r:
            lines.append(
                f"| {r['rule']} | {r['n']} | {r['d']} | | skipped: {r['skipped']} ||||||||"
            )
            continue
        target = ""
        if "target_ms" in r:
            target = f"{r['target_ms']} ({'met' if r['met'] else 'missed'})"
        lines.append(
            f"| {r['rule']} | {r['n']} | {r['d']} | {r['f']} | {r['ms']:.1f} | "
            f"{r['compile_s']:.1f} | {r['gb_per_s']:.2f} | {r['copy_gb_per_s']:.2f} | "
            f"{r['of_copy']:.3f} | {r.get('numpy_ms', nan):.1f} | "
            f"{r.get('numpy_of_copy', nan):.3f} | {r.get('numpy_over_jax', nan):.2f} | {target} |"
        )
    return "\n".join(lines) + "\n"


def kernels(n: int, d: int, rounds: int) -> list[dict]:
    """The CPU kernels of the rules against NumPy, alternating ``rounds`` times in one process:
    the median's selection (``np.partition``; the host selection alone; with NaN counted as +Inf
    inside it; the median rule as the callers run it, NaN replaced first by XLA; the previous
    network path) and the Gram matrix (NumPy's ``G @ G.T``; the FFI BLAS call; XLA's dot)."""
    from jaxbyz.aggregators import distance, host, order

    G = jax.block_until_ready(jax.random.normal(jax.random.key(n * 7 + d), (n, d), jnp.float32))
    Gn = np.asarray(G)
    k = (n - 1) // 2
    median = aggregators.get("median")

    def compiled(fn: Callable, selection: str = "host") -> Callable[[], jax.Array]:
        order.CPU_SELECTION = selection
        try:
            c = jax.jit(fn).lower(G).compile()
        finally:
            order.CPU_SELECTION = "host"
        return lambda: c(G)

    fns: dict[str, Callable[[], object]] = {
        "np.partition": lambda: np.partition(Gn, k, axis=0)[k],
        "host select": compiled(lambda G: host.select(G, k, k)),
        "select, NaN as +Inf": compiled(lambda G: order.order_statistics(G, (k,), True)[k]),
        "median rule": compiled(lambda G: median.aggregate(G, 0)[0]),
    }
    if n <= 1024:
        fns["median rule, network"] = compiled(lambda G: median.aggregate(G, 0)[0], "network")
    if n <= 4096:
        fns["numpy G @ G.T"] = lambda: Gn @ Gn.T
        fns["gram, FFI BLAS"] = compiled(host.gram)
        fns["gram, XLA dot"] = compiled(distance.xla_gram)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        jax.block_until_ready(fn())
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return [
        {"kernel": name, "n": n, "d": d, "ms": round(statistics.median(t) * 1e3, 2), "runs": len(t)}
        for name, t in times.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rules", nargs="+", default=aggregators.names())
    parser.add_argument("--n", nargs="+", type=int, default=list(DEFAULT_N))
    parser.add_argument("--d", nargs="+", type=int, default=list(DEFAULT_D))
    parser.add_argument("--quick", action="store_true", help="only n=51 and 256 at d=79,510")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per rule and shape")
    parser.add_argument("--max-gb", type=float, default=2.0, help="largest input matrix, in GB")
    parser.add_argument("--no-numpy", action="store_true", help="skip the NumPy baselines")
    parser.add_argument(
        "--numpy-max-n", type=int, default=1024, help="no NumPy baseline above this n"
    )
    parser.add_argument("--out", default="benchmarks/results/aggregators")
    parser.add_argument(
        "--kernels",
        action="store_true",
        help="time the CPU selection and Gram kernels against NumPy instead (see kernels())",
    )
    args = parser.parse_args()
    if args.kernels:
        rows = [r for n in args.n for d in args.d for r in kernels(n, d, args.repeats)]
        table = ["| kernel | n | d | ms (median) |", "|---|---:|---:|---:|"]
        table += [f"| {r['kernel']} | {r['n']} | {r['d']} | {r['ms']:.1f} |" for r in rows]
        print("\n".join(table))
        out = Path(args.out + "-kernels")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
        return
    shapes = list(QUICK) if args.quick else [(n, d) for n in args.n for d in args.d]
    shapes.sort(key=lambda s: s[0] * s[1])
    records: list[dict] = []
    too_slow: dict[str, int] = {}
    for name in args.rules:
        for n, d in shapes:
            reason = None
            if n * d * 4 / 1e9 > args.max_gb:
                reason = f"{n * d * 4 / 1e9:.1f} GB > --max-gb"
            elif name in too_slow and n * d > too_slow[name]:
                reason = "a smaller shape exceeded --budget"
            elif name == "brute" and n > 51:
                reason = "exponential in n"
            if reason is None:
                try:
                    aggregators.get(name).check(n, tolerated(name, n))
                except ValueError as err:
                    reason = str(err)
            if reason is not None:
                records.append({"rule": name, "n": n, "d": d, "skipped": reason})
                continue
            record = bench_one(name, n, d, args)
            records.append(record)
            print(json.dumps(record), flush=True)
            if record["first_call_s"] + record["compile_s"] > args.budget:
                too_slow[name] = n * d
    machine = (
        f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), "
        f"jax {jax.__version__}, {jax.devices()[0].platform}"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine, "records": records}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    out.with_suffix(".md").write_text(markdown(records, f"Machine: {machine}"))
    print(markdown(records, f"Machine: {machine}"))


if __name__ == "__main__":
    main()
