"""The optimized attack's benchmark table (benchmarks/optimized_attack.py) on a hand-made table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "optimized_attack.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("optimized_attack_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(gar, placement, attack, accuracy, args="{}", status="completed", role="attacked"):
    return {
        "gar": gar, "momentum_at": placement, "nb_decl_byz": 12, "attack": attack,
        "attack_args": args, "final_accuracy": accuracy, "status": status, "role": role,
    }  # fmt: skip


def test_each_variant_against_the_strongest_other_attack(bench):
    directed = json.dumps({"objective": "directed"})
    table = pd.DataFrame(
        [
            run("average", "update", None, 0.86, role="baseline"),
            run("median", "update", "little", 0.66),
            run("median", "update", "minsum", 0.62),
            run("median", "update", "gaussian", 0.10, status="failed"),  # not counted
            run("median", "update", "mimic", float("nan")),  # no value: not counted
            run("trmean", "update", "optimized", float("nan")),  # nothing to compare
            run("trmean", "update", "little", 0.7),
            run("median", "update", "optimized", 0.69),
            run("median", "update", "optimized", 0.625, args=directed),
            run("median", "worker", "little", 0.84),
            run("median", "worker", "optimized", 0.80),
        ]
    )
    frame = bench.strongest(table, "final_accuracy", 0.01)
    got = {(r["momentum_at"], r["variant"]): r for r in frame.to_dict(orient="records")}
    assert set(got) == {
        ("update", "optimized"),
        ("update", "optimized objective=directed"),
        ("worker", "optimized"),
    }
    default = got[("update", "optimized")]
    assert default["strongest other"] == "minsum" and not default["holds"]
    assert default["difference"] == pytest.approx(0.07)
    assert got[("update", "optimized objective=directed")]["holds"]  # +0.005 <= 0.01
    assert got[("worker", "optimized")]["holds"] and got[("worker", "optimized")]["f"] == 12
    assert bench.cells_held(frame) == (2, 2)  # the directed variant holds the update cell
    assert bench.cells_held(frame[frame["variant"] == "optimized"]) == (1, 2)
    lines = bench.markdown(frame).splitlines()
    assert (
        len(lines) == 2 + 3 and "| optimized objective=directed | 1 | 0.6250 | minsum |" in lines[3]
    )
    best = bench.best_per_cell(frame)  # one row per cell: its strongest variant
    assert [(r["momentum_at"], r["variant"]) for r in best.to_dict(orient="records")] == [
        ("update", "optimized objective=directed"),
        ("worker", "optimized"),
    ]
    assert bench.cells_held(best) == bench.cells_held(frame)


def test_several_seeds_count_by_their_means(bench):
    """Each attack is its mean over seeds: one lucky run of ``minsum`` does not make it the
    strongest, and the optimized attack's mean is compared with the lowest mean."""
    little = json.dumps({"factor": 1.5, "negative": True})
    table = pd.DataFrame(
        [
            run("median", "update", "minsum", 0.60),
            run("median", "update", "minsum", 0.80),  # mean 0.70
            run("median", "update", "little", 0.66, args=little),
            run("median", "update", "little", 0.68, args=little),  # mean 0.67
            run("median", "update", "little", 0.75),  # other arguments: an attack of its own
            run("median", "update", "optimized", 0.70),
            run("median", "update", "optimized", 0.66),  # mean 0.68
        ]
    )
    (row,) = bench.strongest(table, "final_accuracy", 0.01).to_dict(orient="records")
    assert row["strongest other"] == "little" and row["seeds"] == 2
    assert row["its accuracy"] == pytest.approx(0.67)
    assert row["optimized"] == pytest.approx(0.68) and row["holds"]  # +0.01 <= 0.01


def test_last_mean_averages_each_runs_last_evaluations(bench):
    table = pd.DataFrame({"run_id": ["a", "b", "c"]})
    curves = pd.DataFrame(
        {
            "run_id": ["a"] * 4 + ["b"] * 2,
            "step": [15, 0, 5, 10, 0, 5],  # out of order on purpose
            "accuracy": [0.4, 0.1, 0.2, 0.3, 0.5, float("nan")],
        }
    )
    got = bench.with_last_mean(table, curves, 2)
    assert got["last_mean"].iloc[0] == pytest.approx(0.35)  # steps 10 and 15
    assert got["last_mean"].iloc[1] == pytest.approx(0.5)  # a NaN evaluation is not counted
    assert pd.isna(got["last_mean"].iloc[2])  # no curve


def test_folders_are_read_as_one_table(bench, tmp_path):
    """A variant run in a folder of its own is compared with the attacks of another folder; a run
    in both counts once; list arguments are shown comma-separated; a folder without runs.csv is
    named in the error."""
    starts = json.dumps({"direction": "start", "starts": ["minmax", "minsum"]})
    first = [
        dict(run("median", "update", "minsum", 0.62), run_id="a"),
        dict(run("median", "update", "optimized", 0.69), run_id="b"),
    ]
    second = [
        dict(run("median", "update", "optimized", 0.61, args=starts), run_id="c"),
        dict(run("median", "update", "minsum", 0.99), run_id="a"),  # already in the first
    ]
    for name, rows in (("paper", first), ("tailored", second)):
        (tmp_path / name).mkdir()
        pd.DataFrame(rows).to_csv(tmp_path / name / "runs.csv", index=False)
    table = bench.load_tables([tmp_path / "paper", tmp_path / "tailored"], "final_accuracy", 10)
    assert sorted(table["run_id"]) == ["a", "b", "c"]
    frame = bench.strongest(table, "final_accuracy", 0.01)
    got = {r["variant"]: r for r in frame.to_dict(orient="records")}
    tailored = got["optimized direction=start starts=minmax,minsum"]
    assert tailored["its accuracy"] == pytest.approx(0.62) and tailored["holds"]
    assert not got["optimized"]["holds"]
    with pytest.raises(ValueError, match="missing"):
        bench.load_tables([tmp_path / "missing"], "final_accuracy", 10)
