"""The sweep (issue 5): grid expansion and the paper's counts, programs, the report's statistics,
failed runs, resumption after SIGKILL, and multi-device dispatch.

Runs use synthetic data and tiny settings. Until the rule and attack registries land, the runs use
stand-ins registered here (``install_standins``): average, median, "a little is enough", nan.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxbyz.config import Config
from jaxbyz.experiments import grid as grid_lib
from jaxbyz.experiments import report, runner

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------- #
# Stand-ins for the rule and attack registries (used only while the real ones are missing)


def standin_registries():
    """Registries with stand-in rules (average, median) and attacks (little, nan)."""
    import jax.numpy as jnp

    from jaxbyz._registry import Registry
    from jaxbyz.aggregators.base import Rule
    from jaxbyz.attacks.base import Attack

    rules: Registry = Registry("rule")
    rules.register("average")(lambda: Rule("average", lambda G, f, **_: (G.mean(0), None)))
    rules.register("median")(
        lambda: Rule(
            "median",
            lambda G, f, **_: (jnp.median(G, axis=0), None),
            bound_fn=lambda n, f, d: 1.0 / math.sqrt(n - f),
        )
    )

    def little_fn(H, f, *, key, rule, f_decl, factor, negative):
        nu = -factor if negative else factor
        return jnp.broadcast_to(H.mean(0) + nu * H.std(0, ddof=1), (f, H.shape[1]))

    def nan_fn(H, f, **_):
        return jnp.full((f, H.shape[1]), jnp.nan, H.dtype)

    family: Registry = Registry("attack")
    family.register("little")(
        lambda factor=1.5, negative=False: Attack(
            "little", little_fn, {"factor": factor, "negative": negative}
        )
    )
    family.register("nan")(lambda: Attack("nan", nan_fn, {}))
    return rules, family


def _registries_missing() -> bool:
    from jaxbyz import aggregators, attacks

    return not (hasattr(aggregators, "get") and hasattr(attacks, "get"))


def install_standins() -> None:
    """In a subprocess: give the registries stand-ins unless the real ones are there."""
    from jaxbyz import aggregators, attacks

    if _registries_missing():
        rules, family = standin_registries()
        aggregators.get, aggregators.names = rules.get, rules.names
        attacks.get, attacks.names = family.get, family.names


@pytest.fixture
def standins(monkeypatch):
    """The stand-ins for one test, unless the real registries are there."""
    from jaxbyz import aggregators, attacks

    if _registries_missing():
        rules, family = standin_registries()
        for module, registry in ((aggregators, rules), (attacks, family)):
            monkeypatch.setattr(module, "get", registry.get, raising=False)
            monkeypatch.setattr(module, "names", registry.names, raising=False)


TINY = dict(
    dataset="synthetic",
    nb_workers=7,
    nb_decl_byz=2,
    batch_size=8,
    nb_steps=6,
    evaluation_delta=3,
    gar="median",
    attack="little",
    attack_args={"factor": 1.5, "negative": True},
)


def write_grid(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


# --------------------------------------------------------------------------------------------- #
# Grids and presets


def test_paper_presets_match_the_paper_counts():
    """reproduce.py: per dataset 2 f x 2 lr x 2 Nesterov x (rules x 2 attacks x 2 placements),
    rules = 5 at the larger f (no Bulyan) and 6 at the smaller, plus 8 baselines: 176 + 8 = 184
    configurations; x 4 datasets = 736; x 5 seeds = 3680 runs (3520 attacked, 160 baselines)."""
    for dataset in ("paper-mnist", "paper-fashion-mnist", "paper-cifar10", "paper-cifar100"):
        g = grid_lib.load_grid(dataset)
        assert (len(g.runs), g.count("attacked"), g.count("baseline")) == (920, 880, 40), dataset
        assert (g.configurations(), g.configurations("attacked")) == (184, 176), dataset
        assert len(g.left_out) == 2 * 2 * 2 * 2 * 5 * 2 // 2 * 1  # Bulyan at the larger f: 80
        assert {c.gar for c, _ in g.left_out} == {"bulyan"}
    paper = grid_lib.load_grid("paper")
    assert (len(paper.runs), paper.configurations(), paper.count("attacked")) == (3680, 736, 3520)
    # the real-data check of issue 5: Fashion-MNIST, seed 1, no Nesterov: 2 lr x (2 f: 20 + 24
    # attacked, 1 baseline each) = 92 runs; the learning rates share programs: 46 programs, 13
    # with the placement and the attack traced (11 rule x f settings, 2 baselines)
    quick = grid_lib.load_grid("paper-fashion-mnist", {"seed": [1], "momentum_nesterov": False})
    assert len(quick.runs) == 92 and quick.count("baseline") == 4
    assert len(grid_lib.group_programs(quick.runs, trace_structure=False)) == 46
    assert len(grid_lib.group_programs(quick.runs)) == 13
    bulyan = [r.config for r in quick.runs if r.config.gar == "bulyan"]
    assert bulyan and all(c.nb_workers >= 4 * c.nb_decl_byz + 3 for c in bulyan)
    baselines = {(r.config.nb_workers, r.config.gar) for r in quick.runs if r.role == "baseline"}
    assert baselines == {(27, "average"), (39, "average")}  # n - f workers


def test_cifar_learning_rate_axis_and_overrides():
    g = grid_lib.load_grid("paper-cifar10", {"learning_rate": 0.001, "seed": [2]})
    assert {(r.config.learning_rate, r.config.learning_rate_decay_delta) for r in g.runs} == {
        (0.001, 3000)
    }
    assert len(g.runs) == 92 and {r.config.seed for r in g.runs} == {2}
    with pytest.raises(ValueError, match="matches no value"):
        grid_lib.load_grid("paper-cifar10", {"learning_rate": 0.5})


def test_toml_lists_expand_to_the_product(tmp_path):
    path = write_grid(
        tmp_path / "g.toml",
        """
        dataset = "synthetic"
        nb_workers = [7, 9]
        nb_decl_byz = 1
        learning_rate = [0.1, 0.2, 0.3]
        momentum_at = ["update", "worker"]
        gradient_clip = "none"
        seeds = [1, 2]
        [[axis.attack]]
        attack = "little"
        attack_args = { factor = 1.5, negative = true }
        [[axis.attack]]
        attack = "empire"
        attack_args = { factor = 1.1 }
        """,
    )
    g = grid_lib.load_grid(path)
    assert len(g.runs) == 2 * 3 * 2 * 2 * 2 and g.name == "g"
    assert all(r.config.gradient_clip is None for r in g.runs)
    assert {(r.config.attack, r.config.attack_args["factor"]) for r in g.runs} == {
        ("little", 1.5),
        ("empire", 1.1),
    }
    # learning rates and seeds are traced: 2 n x 2 placements x 2 attacks programs; the
    # placement and the attack too, with the structure traced: 2 programs
    assert len(grid_lib.group_programs(g.runs, trace_structure=False)) == 8
    assert len(grid_lib.group_programs(g.runs)) == 2
    assert len(grid_lib.load_grid(path, {"learning_rate": 1}).runs) == 16
    assert grid_lib.load_grid(path, {"learning_rate": 1}).runs[0].config.learning_rate == 1.0
    bad = write_grid(tmp_path / "bad.toml", "learning_rat = 0.1\n")
    with pytest.raises(ValueError, match="unknown configuration field 'learning_rat'"):
        grid_lib.load_grid(bad)


def test_server_optimizers_in_a_grid_are_programs_of_their_own(tmp_path):
    """The Config fields of the server optimiser are grid fields like any other: each optimiser
    is a program, its learning rates and momenta traced values of it (HyperParams)."""
    path = write_grid(
        tmp_path / "optimizers.toml",
        """
        name = "optimizers"
        dataset = "synthetic"
        nb_workers = 7
        nb_decl_byz = 2
        gar = "median"
        attack = "little"
        learning_rate = [0.1, 0.01]
        momentum = [0.0, 0.9]
        [[axis.optimizer]]
        server_optimizer = "sgd"
        [[axis.optimizer]]
        server_optimizer = "adam"
        server_optimizer_args = { b1 = 0.8 }
        """,
    )
    g = grid_lib.load_grid(path)
    programs = grid_lib.group_programs(g.runs)
    assert len(g.runs) == 8 and len(programs) == 2
    assert {p.runs[0].config.server_optimizer for p in programs} == {"sgd", "adam"}
    adam = next(p for p in programs if p.runs[0].config.server_optimizer == "adam")
    assert adam.runs[0].config.server_optimizer_args == {"b1": 0.8}


def test_bulyan_left_out_where_n_below_4f_plus_3(tmp_path):
    path = write_grid(
        tmp_path / "b.toml",
        """
        baseline = true
        nb_workers = 10
        nb_decl_byz = [1, 2]
        gar = ["bulyan", "median"]
        """,
    )
    g = grid_lib.load_grid(path)
    attacked = sorted((r.config.gar, r.config.nb_decl_byz) for r in g.runs if r.role == "attacked")
    assert attacked == [("bulyan", 1), ("median", 1), ("median", 2)]  # 4*2+3 = 11 > 10
    assert [(c.gar, c.nb_decl_byz) for c, _ in g.left_out] == [("bulyan", 2)]
    assert sorted(r.config.nb_workers for r in g.runs if r.role == "baseline") == [8, 9]


def test_programs_and_batches():
    base = Config(**TINY)
    runs = [
        grid_lib.Run(
            base.replace(seed=s, learning_rate=lr, attack_args={"factor": k, "negative": True})
        )
        for s in (1, 2)
        for lr in (0.1, 0.2)
        for k in (1.0, 2.0)
    ]
    runs.append(grid_lib.Run(base.replace(gar="average")))
    programs = grid_lib.group_programs(runs)
    assert [len(p.runs) for p in programs] == [8, 1]
    assert [len(c) for c in grid_lib.chunks(programs[0].runs, 3)] == [3, 3, 2]
    assert [len(c) for c in grid_lib.chunks(programs[0].runs, 8)] == [8]
    # a Dirichlet partition depends on the seed: the seed is then static
    split = [grid_lib.Run(base.replace(seed=s, dirichlet_alpha=0.5)) for s in (1, 2)]
    assert len(grid_lib.group_programs(split)) == 2


# --------------------------------------------------------------------------------------------- #
# The report's statistics on a hand-made table


def _row(config: Config, acc: float, role: str = "attacked") -> dict:
    run = grid_lib.Run(config, role)
    (program,) = grid_lib.group_programs([run])
    row = runner.config_row(run, program.id)
    return {**row, "best_accuracy": acc, "status": "completed", "reason": ""}


def test_headline_statistics_by_hand():
    """Five (update, worker) pairs against two baselines (seeds 1 and 2), counted by hand."""
    base = Config(**TINY)
    # (rule, seed, acc_update, acc_worker); ref = 0.9 for seed 1, 0.8 for seed 2
    cases = [
        ("median", 1, 0.30, 0.85),  # loss 0.6, gain 0.55: effective at 0.1/0.2/0.4, above all
        ("krum", 1, 0.60, 0.75),  # loss 0.3, gain 0.15: effective 0.1/0.2; above 0.1 only
        ("trmean", 1, 0.85, 0.82),  # loss 0.05, gain -0.03: < 0, < -0.02; ref - worker 0.08
        ("median", 2, 0.55, 0.70),  # loss 0.25, gain 0.15: effective 0.1/0.2; above 0.1 only
        ("krum", 2, 0.75, 0.68),  # loss 0.05, gain -0.07: < 0, < -0.02, < -0.05; ref-w 0.12
    ]
    rows = [
        _row(grid_lib.baseline_config(base.replace(seed=s)), r, "baseline")
        for s, r in ((1, 0.9), (2, 0.8))
    ]
    for rule, seed, upd, wrk in cases:
        c = base.replace(gar=rule, seed=seed)
        rows.append(_row(c.replace(momentum_at="update"), upd))
        rows.append(_row(c.replace(momentum_at="worker"), wrk))
    rows.append(_row(base.replace(gar="phocas", momentum_at="update"), 0.1))  # unpaired: ignored
    table = pd.DataFrame(rows)
    pairs = report.placement_pairs(table)
    assert len(pairs) == 5
    np.testing.assert_allclose(sorted(pairs["loss"]), [0.05, 0.05, 0.25, 0.3, 0.6], atol=1e-12)
    s = report.headline(pairs)
    assert s["pairs"] == 5
    assert (s["loss>0.1"], s["loss>0.1,gain>0.1"]) == (3, 3)
    assert (s["loss>0.2"], s["loss>0.2,gain>0.2"], s["loss>0.2,gain>0"]) == (3, 1, 3)
    assert (s["loss>0.4"], s["loss>0.4,gain>0.4"]) == (1, 1)
    assert (s["gain<0"], s["gain<-0.02"], s["gain<-0.05"]) == (2, 2, 1)
    assert (s["gain<0,ref-worker>0.05"], s["gain<0,ref-worker>0.1"]) == (2, 1)
    assert s["claim_holds"] is False  # gain > 0.2 in 1 of 3, not more than 60%
    assert "does not hold" in report.claim_text(s)
    headline = report.headline_table(pairs)
    assert headline.iloc[0]["loss > 0.2"] == 3 and headline.iloc[0]["claim holds"] == "no"
    summary = report.placement_summary(table)
    median = summary[summary["gar"] == "median"].iloc[0]
    assert median["update"] == "0.425 ± 0.125" and median["worker"] == "0.775 ± 0.075"
    failed = (table["gar"] == "krum") & (table["seed"] == 1) & (table["momentum_at"] == "update")
    table.loc[failed, "best_accuracy"] = float("nan")  # a failed run drops its pair
    assert len(report.placement_pairs(table)) == 4


def test_variants_of_one_attack_are_not_averaged_as_seeds():
    """Two argument sets of one attack on one seed: two rows of one seed each, not a mean."""
    base = Config(**TINY).replace(gar="median", attack="little")
    rows = [_row(grid_lib.baseline_config(base), 0.9, "baseline")]
    for factor, upd, wrk in ((1.0, 0.3, 0.7), (2.0, 0.5, 0.8)):
        c = base.replace(attack_args={"factor": factor})
        rows += [_row(c.replace(momentum_at=p), a) for p, a in (("update", upd), ("worker", wrk))]
    table = pd.DataFrame(rows)
    summary = report.placement_summary(table).set_index("attack")
    assert sorted(summary.index) == ['little {"factor": 1.0}', 'little {"factor": 2.0}']
    assert summary.loc['little {"factor": 2.0}', "update"] == "0.500 ± 0.000"
    assert set(summary["seeds"]) == {1}
    pairs = report.placement_pairs(table)
    np.testing.assert_allclose(sorted(pairs["gain"]), [0.3, 0.4], atol=1e-12)
    one = table[table["attack_args"] != table["attack_args"].iloc[-1]]  # one set: name alone
    assert list(report.placement_summary(one)["attack"]) == ["little"]


def _three_step_curves(table: pd.DataFrame) -> pd.DataFrame:
    """Curves of three evaluations (steps 0, 1, 2) for every run of ``table``."""
    return pd.DataFrame(
        [
            {"run_id": r, "step": s, "accuracy": 0.1 * s, "ratio": 1.0, "sampled_ratio": 1.0}
            for r in table["run_id"]
            for s in (0, 1, 2)
        ]
    )


def _capture_figures(monkeypatch) -> list:
    """The ``(figure, axes)`` pairs ``plt.subplots`` returns from now on (make_plots closes its
    figures; their axes remain readable)."""
    import matplotlib.pyplot as plt

    created = []
    subplots = plt.subplots
    monkeypatch.setattr(
        plt, "subplots", lambda *a, **k: created.append(subplots(*a, **k)) or created[-1]
    )
    return created


def test_plots_keep_a_legend_when_the_first_cell_is_empty(tmp_path, monkeypatch):
    """Rules median and krum, attacks little (krum only) and signflip (median only): the top-left
    panel (little / median) has no run, and the legend still lists both placements."""
    pytest.importorskip("matplotlib")
    base = Config(**TINY)
    rows = [
        _row(base.replace(gar="median", attack="signflip", momentum_at="update"), 0.5),
        _row(base.replace(gar="krum", attack="little", momentum_at="worker"), 0.6),
    ]
    table = pd.DataFrame(rows).assign(bound=np.nan)
    curves = _three_step_curves(table)
    created = _capture_figures(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # "No artists with labels found ..."
        paths = report.make_plots(table, curves, tmp_path)
    assert len(paths) == 2 and all(p.exists() for p in paths)
    axes = created[0][1]
    assert not axes[0, 0].lines  # the empty cell ...
    texts = [t.get_text() for t in axes[0, 0].get_legend().get_texts()]
    assert sorted(texts) == ["update", "worker"]  # ... carries every placement's entry


def test_curve_panels_wrap_long_attack_labels(tmp_path, monkeypatch):
    """An attack named with its arguments is wider than a panel: its titles wrap, and the titles
    of neighbouring panels no longer run into each other."""
    pytest.importorskip("matplotlib")
    base = Config(**TINY)
    long_args = [
        {"factor": 1.5, "negative": True, "nb_real_byz": 2},
        {"factor": 2.5, "negative": False, "nb_real_byz": 1},
    ]
    rows = [
        _row(base.replace(gar=rule, attack="little", attack_args=args, momentum_at="update"), 0.5)
        for rule in ("median", "krum")
        for args in long_args
    ]
    table = pd.DataFrame(rows).assign(bound=np.nan)
    curves = _three_step_curves(table)
    created = _capture_figures(monkeypatch)
    report.make_plots(table, curves, tmp_path)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig, axes = created[0]
    renderer = FigureCanvasAgg(fig).get_renderer()  # make_plots closed the figure
    left, right = (axes[0, j].title for j in (0, 1))
    assert "\n" in left.get_text() and len(left.get_text().splitlines()[0]) <= 28
    assert left.get_window_extent(renderer).x1 <= right.get_window_extent(renderer).x0


# --------------------------------------------------------------------------------------------- #
# Running sweeps


def _statuses(out: Path) -> dict[str, str]:
    table = pd.read_csv(out / "runs.csv")
    return dict(zip(table["name"], table["status"], strict=True))


def test_failed_runs_are_recorded_and_the_sweep_goes_on(tmp_path, standins):
    """A huge learning rate diverges to NaN, an unknown attack argument raises; the rest runs."""
    path = write_grid(
        tmp_path / "fail.toml",
        """
        dataset = "synthetic"
        nb_workers = 7
        nb_decl_byz = 2
        batch_size = 8
        nb_steps = 6
        evaluation_delta = 3
        gradient_clip = "none"
        gar = "median"
        attack = "little"
        seed = [1, 2]
        [[axis.case]]
        attack_args = { factor = 1.5, negative = true }
        learning_rate = [0.1, 1e30]
        [[axis.case]]
        attack_args = { no_such_argument = 1.0 }
        """,
    )
    # the grid checks refuse the unknown argument before anything runs; unchecked, the runner
    # must still record such a run as an error and go on
    with pytest.raises(ValueError, match=r"attack_args = .*no_such_argument"):
        grid_lib.load_grid(path)
    g = grid_lib.load_grid(path, check=False)
    store = runner.Store(tmp_path / "out")
    stats = runner.Sweep(g, store, max_batch=4, progress=False, log=lambda _: None).run()
    assert stats.runs_executed == 6 and stats.failed == 4 and stats.compiled == 1
    table = pd.read_csv(tmp_path / "out" / "runs.csv")
    status = table.groupby(["learning_rate", "attack_args"])["status"].agg(set).to_dict()
    assert status[(0.1, '{"factor": 1.5, "negative": true}')] == {"completed"}
    assert status[(1e30, '{"factor": 1.5, "negative": true}')] == {"diverged"}
    assert status[(0.5, '{"no_such_argument": 1.0}')] == {"error"}
    errors = table[table["status"] == "error"]
    assert errors["reason"].str.contains("no_such_argument").all()
    diverged = table[table["status"] == "diverged"]
    assert diverged["reason"].str.contains("non-finite loss").all()
    done = table[table["status"] == "completed"]
    assert (done["best_accuracy"] > 0).all() and np.isfinite(done["share_under_bound"]).all()
    curves = pd.read_csv(tmp_path / "out" / "curves.csv.gz")
    assert set(curves["run_id"]) == set(table.loc[table["status"] != "error", "run_id"])
    assert (curves.groupby("run_id").size() == 3).all()  # evaluations at steps 0, 3, 6
    path = report.write_report(tmp_path / "out", table.fillna({"reason": ""}), curves, {})
    text = path.read_text()
    assert "## Runs that did not complete" in text and "no_such_argument" in text
    pngs = sorted((tmp_path / "out" / "plots").glob("*.png"))
    assert [p.name.split("-")[0] for p in pngs] == ["accuracy", "accuracy", "ratio", "ratio"]
    assert all(p.stat().st_size < 60_000 for p in pngs)
    # a second session finds everything done; --retry-failed takes the errors again
    assert runner.Sweep(g, store, progress=False).pending() == []
    assert len(runner.Sweep(g, store, retry_failed=True, progress=False).pending()) == 2


KILL_GRID = """
name = "kill"
dataset = "synthetic"
nb_workers = 7
nb_decl_byz = 2
batch_size = 8
nb_steps = 30
evaluation_delta = 10
gar = "median"
attack = "little"
attack_args = { factor = 1.5, negative = true }
seed = [1, 2, 3, 4, 5, 6, 7, 8]
"""


def _sweep_process(args: list[str], env_extra: dict | None = None) -> subprocess.Popen:
    code = (
        f"import sys; sys.path[:0] = [{str(ROOT / 'tests')!r}, {str(ROOT)!r}]\n"
        "from test_sweep import install_standins; install_standins()\n"
        "from jaxbyz.experiments.sweep import main\n"
        f"sys.exit(main({args!r}))\n"
    )
    env = {**os.environ, **(env_extra or {})}
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_resume_after_sigkill(tmp_path):
    grid_file = write_grid(tmp_path / "kill.toml", KILL_GRID)
    out = tmp_path / "out"
    args = ["--grid", str(grid_file), "--output", str(out), "--max-batch", "1", "--no-plots"]
    args += ["--cache-dir", str(tmp_path / "cache")]
    first = _sweep_process(args)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None:
        if len(list((out / "parts").glob("*.npz"))) >= 2:
            break
        time.sleep(0.05)
    killed = first.poll() is None
    if killed:
        first.send_signal(signal.SIGKILL)
    first.communicate()
    parts_before = len(list((out / "parts").glob("*.npz")))
    assert killed and 2 <= parts_before < 8, "the sweep was not killed mid-way"
    second = _sweep_process(args)
    output, _ = second.communicate(timeout=180)
    assert second.returncode == 0, output
    assert f"{parts_before} already done" in output
    table = pd.read_csv(out / "runs.csv")
    assert len(table) == 8 and table["run_id"].is_unique
    assert (table["status"] == "completed").all()
    ids = []
    for part in (out / "parts").glob("*.npz"):
        with np.load(part) as data:
            ids += [row["run_id"] for row in json.loads(str(data["rows"]))]
    assert sorted(ids) == sorted(table["run_id"])  # nothing run twice, nothing lost
    assert (out / "report.md").exists()


@pytest.mark.slow
def test_multi_device_dispatch_matches_one_device(tmp_path):
    grid_file = write_grid(
        tmp_path / "multi.toml",
        """
        name = "multi"
        dataset = "synthetic"
        nb_workers = 7
        nb_decl_byz = 2
        batch_size = 8
        nb_steps = 6
        evaluation_delta = 3
        gar = "median"
        attack = "little"
        attack_args = { factor = 1.5, negative = true }
        momentum_at = ["update", "worker"]
        learning_rate = [0.1, 0.05]
        seed = [1, 2]
        """,
    )
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    tables = {}
    for devices in ("1", "all"):
        out = tmp_path / f"out-{devices}"
        args = ["--grid", str(grid_file), "--output", str(out), "--devices", devices]
        args += ["--max-batch", "2", "--no-plots", "--no-progress"]
        args += ["--cache-dir", str(tmp_path / "cache")]
        proc = _sweep_process(args, env)
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output
        tables[devices] = pd.read_csv(out / "runs.csv").set_index("run_id").sort_index()
    one, many = tables["1"], tables["all"]
    assert len(set(one["device"])) == 1 and len(set(many["device"])) == 2  # one per program
    assert len(one) == 8 and list(one.index) == list(many.index)
    for column in ("best_accuracy", "final_loss", "mean_ratio"):
        np.testing.assert_allclose(one[column], many[column], rtol=1e-5, err_msg=column)


@pytest.mark.slow
def test_compiling_ahead_in_threads_matches_one_at_a_time(tmp_path):
    """Programs built by several threads give the same runs as one thread; each program is
    compiled once, and every batch runs the program of its own configuration."""
    path = write_grid(
        tmp_path / "threads.toml",
        """
        name = "threads"
        dataset = "synthetic"
        nb_workers = 7
        nb_decl_byz = 2
        batch_size = 8
        nb_steps = 6
        evaluation_delta = 3
        gar = ["median", "krum"]
        attack = "little"
        attack_args = { factor = 1.5, negative = true }
        momentum_at = "worker"
        seed = [1, 2]
        """,
    )
    g = grid_lib.load_grid(path)
    tables = {}
    for workers in (1, 3):
        store = runner.Store(tmp_path / f"out-{workers}")
        logged: list[str] = []
        sweep = runner.Sweep(
            g, store, max_batch=2, progress=False, log=logged.append, compile_workers=workers
        )
        stats = sweep.run()
        assert stats.failed == 0 and stats.runs_executed == 4
        assert stats.compiled == 2 and stats.compile_workers == workers  # 2 programs, 1 batch each
        assert sum("compiled for" in line for line in logged) == 2
        tables[workers] = pd.read_csv(store.root / "runs.csv").set_index("run_id").sort_index()
    one, many = tables[1], tables[3]
    assert list(one.index) == list(many.index)
    for column in ("best_accuracy", "final_loss", "mean_ratio", "mean_sampled_ratio"):
        np.testing.assert_array_equal(one[column], many[column], err_msg=column)
    assert len(set(one["mean_ratio"].round(6))) == 4  # the programs and seeds really differ
    with pytest.raises(ValueError, match="--compile-workers must be >= 1, got 0"):
        runner.Sweep(g, runner.Store(tmp_path / "bad"), compile_workers=0)


# --------------------------------------------------------------------------------------------- #
# Command line


def test_cli_help_and_dry_run(tmp_path, capsys, standins):
    from jaxbyz.experiments import sweep

    with pytest.raises(SystemExit):
        sweep.main(["--help"])
    text = capsys.readouterr().out
    for option in (
        "--grid",
        "--output",
        "--seeds",
        "--max-batch",
        "--dry-run",
        "--report-only",
        "--devices",
        "smoke",
        "paper-fashion-mnist",
    ):
        assert option in text
    code = sweep.main(
        [
            "paper-fashion-mnist",
            "--seeds",
            "1",
            "--set",
            "momentum_nesterov=false",
            "--dry-run",
            "--output",
            str(tmp_path / "dry"),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    assert "92 runs (88 attacked, 4 baseline)" in text and "92 to run in 13 programs" in text
    assert "traced: placement, attack" in text
    argv = ["paper-fashion-mnist", "--seeds", "1", "--set", "momentum_nesterov=false"]
    assert sweep.main([*argv, "--dry-run", "--dedicated-programs"]) == 0
    assert "92 to run in 46 programs" in capsys.readouterr().out
    assert not (tmp_path / "dry").exists()
    with pytest.raises(SystemExit):
        sweep.main(["no-such-preset"])
    assert "unknown preset" in capsys.readouterr().err


def test_missing_dataset_stops_the_sweep_with_one_line(tmp_path, capsys, monkeypatch):
    from jaxbyz import data as data_lib
    from jaxbyz.experiments import sweep

    def missing(name, data_dir=None, **_):
        raise data_lib.DatasetNotFoundError(f"--dataset {name}: not found (test)")

    monkeypatch.setattr(data_lib, "load_dataset", missing)
    out = tmp_path / "out"
    args = ["smoke", "--set", "dataset=fashion-mnist", "--output", str(out), "--no-progress"]
    with pytest.raises(SystemExit) as exit_info:
        sweep.main([*args, "--cache-dir", "none"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "fashion-mnist: not found" in err and "--set dataset=synthetic" in err
    assert not (out / "runs.csv").exists()
