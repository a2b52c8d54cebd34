"""The optimized attack's benchmark table (benchmarks/optimized_attack.py) on a hand-made table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "optimized_attack.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("optimized_attack_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(gar, placement, attack, accuracy, args="{}", status="completed", role="attacked", seed=1):
    return {
        "gar": gar, "momentum_at": placement, "nb_decl_byz": 12, "attack": attack,
        "attack_args": args, "final_accuracy": accuracy, "status": status, "role": role,
        "seed": seed, "run_id": f"{gar}-{placement}-{attack}-{args}-{seed}",
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
            run("median", "update", "minsum", 0.80, seed=2),  # mean 0.70
            run("median", "update", "little", 0.66, args=little),
            run("median", "update", "little", 0.68, args=little, seed=2),  # mean 0.67
            run("median", "update", "little", 0.75),  # other arguments: an attack of its own
            run("median", "update", "optimized", 0.70),
            run("median", "update", "optimized", 0.66, seed=2),  # mean 0.68
            run("median", "update", "empire", 0.10, seed=3),  # no optimized run at seed 3
        ]
    )
    (row,) = bench.strongest(table, "final_accuracy", 0.01).to_dict(orient="records")
    assert row["strongest other"] == "little" and row["seeds"] == 2
    assert row["its accuracy"] == pytest.approx(0.67)
    assert row["optimized"] == pytest.approx(0.68) and row["holds"]  # +0.01 <= 0.01
    # paired by seed: differences 0.04 and -0.02, std 0.0424, over sqrt(2)
    assert row["paired error"] == pytest.approx(0.03)
    assert "| +0.0100 ± 0.0300 |" in bench.markdown(pd.DataFrame([row]))
    one = bench.strongest(table[table["seed"] == 1], "final_accuracy", 0.01)
    assert one["paired error"].isna().all() and "±" not in bench.markdown(one)


def test_attacks_table_lists_every_attack_against_a_reference(bench):
    """``--attacks``: each attack's mean over seeds, strongest first, its difference to the
    reference with the paired standard error and the seeds where it is higher, from the
    definitions on a hand-made table of 3 seeds; a reference the cell lacks is refused."""
    down, up = json.dumps({"negative": True}), json.dumps({"negative": False})
    values = {
        "little": (0.60, 0.70, 0.65),
        "empire": (0.80, 0.75, 0.90),
        "optimized": (0.62, 0.66, 0.70),
    }
    rows = [run("average", "update", None, 0.86, role="baseline")]
    for attack, accuracies in values.items():
        for seed, accuracy in enumerate(accuracies, start=1):
            rows.append(
                run(
                    "median",
                    "update",
                    attack,
                    accuracy,
                    args=down if attack == "little" else "{}",
                    seed=seed,
                )
            )
    rows.append(run("median", "update", "little", 0.10, args=up, status="failed"))  # not counted
    table = pd.DataFrame(rows)
    frame = bench.attack_means(table, "final_accuracy")
    assert list(frame["attack"]) == ["little negative=True", "optimized", "empire"]
    assert (frame["reference"] == "little negative=True").all()  # default: the strongest
    got = bench.attack_means(table, "final_accuracy", reference="optimized")
    got = {r["attack"]: r for r in got.to_dict(orient="records")}
    for attack, accuracies in values.items():
        name = "little negative=True" if attack == "little" else attack
        d = np.subtract(accuracies, values["optimized"])
        assert got[name]["mean"] == pytest.approx(np.mean(accuracies))
        assert got[name]["difference"] == pytest.approx(d.mean())
        assert got[name]["paired error"] == pytest.approx(d.std(ddof=1) / np.sqrt(3))
        assert got[name]["seeds higher"] == int((d > 0).sum())
    assert got["empire"]["seeds higher"] == 3 and got["little negative=True"]["seeds higher"] == 1
    markdown = bench.attacks_markdown(bench.attack_means(table, "final_accuracy"), "final_accuracy")
    assert (
        "| median | update | 12 | empire | 3 | 0.8167 | little negative=True "
        "| +0.1667 ± 0.0601 | 3 |" in markdown
    )
    with pytest.raises(ValueError, match="reference='little negative=False' is not an attack"):
        bench.attack_means(table, "final_accuracy", reference="little negative=False")


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
    in both counts by its first execution; list arguments are shown comma-separated; a folder
    without runs.csv is named in the error."""
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
    assert len(table) == 4 and sorted(bench.first_executions(table)["run_id"]) == ["a", "b", "c"]
    frame = bench.strongest(table, "final_accuracy", 0.01)
    got = {r["variant"]: r for r in frame.to_dict(orient="records")}
    tailored = got["optimized direction=start starts=minmax,minsum"]
    assert tailored["its accuracy"] == pytest.approx(0.62) and tailored["holds"]
    assert not got["optimized"]["holds"]
    with pytest.raises(ValueError, match="missing"):
        bench.load_tables([tmp_path / "missing"], "final_accuracy", 10)


def test_runs_executed_in_several_folders_give_ranges_and_a_verdict(bench, tmp_path):
    """The same run executed by other programs (one run id in two folders): the main columns keep
    the first execution, the ranges span every execution, and the verdict says whether the
    rounding decides: it does when the other's executions straddle the optimized value."""
    paper = [
        run("median", "update", "minsum", 0.62),
        run("median", "update", "optimized", 0.635),
        run("krum", "update", "little", 0.66),
        run("krum", "update", "optimized", 0.29),
        run("trmean", "update", "minmax", 0.40),
        run("trmean", "update", "optimized", 0.60),
    ]
    alone = [
        run("median", "update", "minsum", 0.53),  # the same runs, other programs
        run("krum", "update", "little", 0.70),
        run("trmean", "update", "minmax", 0.45),
    ]
    for name, rows in (("paper", paper), ("alone", alone)):
        (tmp_path / name).mkdir()
        pd.DataFrame(rows).to_csv(tmp_path / name / "runs.csv", index=False)
    table = bench.load_tables([tmp_path / "paper", tmp_path / "alone"], "final_accuracy", 10)
    assert len(table) == 9 and len(bench.first_executions(table)) == 6
    frame = bench.strongest(table, "final_accuracy", 0.01)
    got = {r["rule"]: r for r in frame.to_dict(orient="records")}
    median = got["median"]
    assert median["its accuracy"] == pytest.approx(0.62) and not median["holds"]  # +0.015
    assert median["other range"] == pytest.approx((0.53, 0.62))
    assert median["optimized range"] == pytest.approx((0.635, 0.635))
    assert (median["runs"], median["executions"]) == (2, 3)
    assert median["verdict"] == "fails"  # 0.635 > 0.62 + 0.01 under every pairing
    assert got["krum"]["verdict"] == "holds" and got["trmean"]["verdict"] == "fails"
    assert bench.cell_verdicts(frame) == {"holds": 1, "rounding": 0, "fails": 2}
    loose = bench.strongest(table, "final_accuracy", 0.05)  # 0.635 <= 0.62 + 0.05, not 0.53 + 0.05
    assert {r["rule"]: r["verdict"] for r in loose.to_dict(orient="records")}["median"] == (
        "rounding"
    )
    lines = bench.markdown(frame).splitlines()
    assert lines[0].endswith("| executions | optimized range | other range | verdict |")
    assert "| 3 | 0.6350 | 0.5300-0.6200 | fails |" in lines[3]
    single = bench.strongest(bench.first_executions(table), "final_accuracy", 0.01)
    assert not bench.reexecuted(single) and "verdict" not in bench.markdown(single)


def test_envelope_bounds_the_mean_over_seeds(bench):
    """Each seed's run may take any of its executions: the mean of the lowest values and the
    mean of the highest."""
    executions = pd.DataFrame(
        {"run_id": ["s1", "s1", "s2", "s2", "s2", "x"], "v": [0.5, 0.7, 0.6, 0.6, 0.9, 0.0]}
    )
    assert bench.envelope(executions, pd.Series(["s1", "s2"]), "v") == pytest.approx((0.55, 0.8))


def test_seeds_option_keeps_the_given_seeds(bench, tmp_path, monkeypatch, capsys):
    """``--seeds 1`` compares seed 1 alone where the folder holds more seeds; a bad value and a
    seed without runs are named in the error."""
    rows = [
        run("median", "update", "minsum", 0.62),
        run("median", "update", "minsum", 0.90, seed=2),
        run("median", "update", "optimized", 0.60),
        run("median", "update", "optimized", 0.70, seed=2),
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "runs.csv", index=False)

    def main(*argv: str) -> str:
        monkeypatch.setattr("sys.argv", ["optimized_attack.py", str(tmp_path), *argv])
        assert bench.main() == 0
        return capsys.readouterr().out

    assert "| 2 | 0.6500 | minsum | 0.7600 |" in main()  # both seeds: means
    assert "| 1 | 0.6000 | minsum | 0.6200 |" in main("--seeds", "1")
    for bad, message in (("x", "is not a seed or a range"), ("3", "at --seeds 3")):
        with pytest.raises(SystemExit):
            main("--seeds", bad)
        assert message in capsys.readouterr().err
