"""The paper's command lines (``attack.py`` flags, as ``reproduce.py`` generates them) work
unchanged: every one passes ``--dry-run``; flags without meaning here say so; values that
cannot be honoured are refused in one line; the flags with meaning change the run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import quick_run

from jaxbyz import train

GARS = ("krum", "median", "trmean", "phocas", "meamed", "bulyan")
ATTACKS = (("little", ["factor:1.5", "negative:True"]), ("empire", ["factor:1.1"]))
MNIST = {
    "batch-size": 83,
    "model": "simples-full",
    "loss": "nll",
    "learning-rate-decay-delta": 300,
    "momentum": 0.9,
    "l2-regularize": 1e-4,
    "evaluation-delta": 5,
    "gradient-clip": 2,
    "nb-steps": 300,
    "nb-for-study": 1,
    "nb-for-study-past": 150,
    "nb-workers": 51,
}
CIFAR = {
    "batch-size": 50,
    "model": "empire-cnn",
    "loss": "nll",
    "learning-rate-decay": 167,
    "momentum": 0.99,
    "l2-regularize": 1e-2,
    "evaluation-delta": 100,
    "gradient-clip": 5,
    "nb-steps": 3000,
    "nb-for-study": 1,
    "nb-for-study-past": 25,
    "nb-workers": 25,
}


def flags(params: dict) -> list[str]:
    """A parameter dict as the paper's job runner turns it into flags: a true bool is a bare
    flag, a false one is left out, a list is spread after its flag."""
    out: list[str] = []
    for name, value in params.items():
        if isinstance(value, bool):
            out += [f"--{name}"] if value else []
        elif isinstance(value, list):
            out += [f"--{name}", *map(str, value)]
        else:
            out += [f"--{name}", str(value)]
    return out


def paper_command_lines() -> list[list[str]]:
    """Every run of the paper's reproduce.py (seed 1), with the flags its job runner adds."""
    lines = []
    settings = [
        (ds, MNIST, {}, (24, 12), [(lr, None) for lr in (0.5, 0.02)])
        for ds in ("mnist", "fashionmnist")
    ]
    settings += [
        (ds, CIFAR, {"model-args": arg}, (11, 5), [(0.01, 1500), (0.001, 3000)])
        for ds, arg in (("cifar10", "cifar100:False"), ("cifar100", "cifar100:True"))
    ]
    for ds, base, extra, fs, rates in settings:
        for f in fs:
            for lr, delta in rates:
                for nesterov in (False, True):
                    common = {**base, "dataset": ds, **extra, "learning-rate": lr}
                    if delta is not None:
                        common["learning-rate-decay-delta"] = delta
                    common["momentum-nesterov"] = nesterov
                    lines.append(flags({**common, "nb-workers": base["nb-workers"] - f}))
                    for gar in GARS[: len(GARS) - (1 if f == fs[0] else 0)]:
                        for attack, args in ATTACKS:
                            for where in ("update", "worker"):
                                run = {**common, "nb-decl-byz": f, "nb-real-byz": f, "gar": gar}
                                run |= {"attack": attack, "attack-args": args}
                                lines.append(flags({**run, "momentum-at": where}))
    return lines


def test_every_reproduce_command_line_passes_dry_run(tmp_path, capsys):
    lines = paper_command_lines()
    assert len(lines) == 736  # the paper's 736 configurations
    for i, line in enumerate(lines):
        extra = ["--seed", "1", "--device", "cpu", "--result-directory", str(tmp_path / str(i))]
        assert train.main([*line, *extra, "--dry-run"]) == 0, line
        printed = capsys.readouterr()
        assert "error" not in printed.err, (line, printed.err)
    resolved = json.loads(printed.out[: printed.out.index("\nrule:")])
    assert resolved["config"]["model_args"] == {"cifar100": True}
    assert resolved["config"]["dataset"] == "cifar100"
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_paper_dataset_name_and_a_flag_without_meaning(capsys):
    line = ["--dataset", "fashionmnist", "--nb-steps", "10", "--device-gar", "cuda:1"]
    line += ["--user-input-delta", "10"]
    assert train.main([*line, "--dry-run"]) == 0
    printed = capsys.readouterr()
    assert '"dataset": "fashion-mnist"' in printed.out
    notes = [n for n in printed.err.splitlines() if n.startswith("note:")]
    assert len(notes) == 2 and "--device-gar 'cuda:1' has no effect here" in notes[0]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (["--nb-local-steps", "0"], "--nb-local-steps must be a positive integer, got 0"),
        (["--device", "cuda:3"], "--device 'cuda:3' cannot be honoured"),
        (["--loss", "mse"], "--loss mse"),
        (["--criterion", "sigmoid"], "--criterion sigmoid"),
        (["--init-mono", "xavier_uniform"], "--init-mono"),
        (
            ["--model", "empire-cnn", "--model-args", "cifar100:False", "--dataset", "cifar100"],
            "cifar100",
        ),
        (["--gars", "krum,x"], "--gars"),
        (
            ["--server-optimizer", "adam", "--server-optimizer-args", "nope:1"],
            "takes no parameter nope",
        ),
        (["--nb-steps", "-1"], "--nb-steps -1 (no limit, the paper's default) cannot be"),
        (["--nb-steps", "0"], "--nb-steps must be a positive integer, got 0"),
        (["--checkpoint-delta", "10"], "fix: add --result-directory"),
    ],
)
def test_values_that_cannot_be_honoured_are_refused(capsys, line, expected):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--nb-steps", "10", *line, "--dry-run"])
    assert exit_info.value.code == 2
    err = [e for e in capsys.readouterr().err.splitlines() if not e.startswith("note:")]
    assert len(err) == 1 and expected in err[0], err


QUICK = [*quick_run.QUICK, "--attack", "little", "--attack-args", "factor:1.5", "--seed", "1"]


def test_flags_with_meaning_change_the_run(tmp_path):
    """--evaluation-delta 0 evaluates the last step only; --nb-for-study 0 writes no study;
    --nb-for-study above the honest count samples extra gradients (the sampled metrics change,
    the honest ones do not); --gars runs a mixture; --batch-size-test x reps evaluates that many
    examples."""

    def run(name, *extra):
        out = tmp_path / name
        assert train.main([*QUICK, "--result-directory", str(out), *extra]) == 0
        return out

    base = run("base", "--evaluation-delta", "3")
    assert pd.read_csv(base / "eval.csv")["step"].tolist() == [0, 3, 6]
    more = run("more", "--evaluation-delta", "3", "--nb-for-study", "9")
    a, b = pd.read_csv(base / "study.csv"), pd.read_csv(more / "study.csv")
    np.testing.assert_array_equal(a["honest_norm"], b["honest_norm"])
    assert not np.allclose(a["sampled_deviation"], b["sampled_deviation"])
    other = ["--evaluation-delta", "0", "--nb-for-study", "0", "--gars", "median,1;krum,3"]
    other = run("other", *other, "--batch-size-test", "7")
    assert not (other / "study.csv").exists()
    evaluations = pd.read_csv(other / "eval.csv")
    assert evaluations["step"].tolist() == [6]  # no periodic evaluation, the final one
    written = json.loads((other / "config.json").read_text())
    assert written["gars"] == "median,1;krum,3" and written["batch_size_test"] == 7
    accuracy = evaluations["accuracy"]  # of 7 x 100 examples (the paper's 100 repetitions)
    np.testing.assert_allclose(accuracy * 700, np.round(accuracy * 700), atol=1e-3)
