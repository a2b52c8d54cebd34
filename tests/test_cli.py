"""``python -m jaxbyz.train``: results written, bad input refused before compiling."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import quick_run

from jaxbyz import train
from jaxbyz.metrics import NAMES

QUICK = [*quick_run.QUICK, "--evaluation-delta", "4"]


def test_run_writes_results(tmp_path, capsys):
    out = tmp_path / "run"
    code = train.main(
        [
            *QUICK,
            "--attack",
            "little",
            "--attack-args",
            "factor:1.5",
            "--result-directory",
            str(out),
        ]
    )
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["attack_args"] == {"factor": 1.5} and config["nb_workers"] == 7
    curve = pd.read_csv(out / "eval.csv")
    assert curve["step"].tolist() == [0, 4, 6]
    study = pd.read_csv(out / "study.csv")
    assert study.columns.tolist() == ["step", *NAMES] and len(study) == 6
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert "best top-1 accuracy" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--dataset", "imagenet"], "--dataset 'imagenet' is unknown"),
        (["--model", "resnet"], "--model resnet: unknown model 'resnet'; known models:"),
        (["--gar", "nope"], "unknown aggregation rule 'nope'"),
        (["--attack", "nope"], "unknown attack 'nope'"),
        (["--nb-decl-byz", "7"], "--nb-decl-byz must be in [0, nb-workers)"),
        (["--gar", "krum", "--nb-decl-byz", "3"], "krum needs n >= 2f+3, got n=7, f=3"),
        (["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
        (["--nb-steps", "-3"], "--nb-steps must be a positive integer, got -3"),
        (["--learning-rate", "0"], "--learning-rate must be a finite number > 0, got 0.0"),
        (["--nb-real-byz", "3"], "--nb-real-byz must be between 0 and --nb-decl-byz (2), got 3"),
        (["--attack-args", "factor"], "--attack-args 'factor' is malformed"),
        (["--num-processes", "2", "--process-id", "0"], "fix: add --shard-workers"),
        (
            ["--shard-workers", "--coordinator-address", "node0"],
            "--coordinator-address 'node0': expected HOST:PORT",
        ),
        (
            ["--shard-workers", "--coordinator-address", "node0:1234", "--num-processes", "2"],
            "needs --num-processes N and --process-id I",
        ),
        (
            "--shard-workers --coordinator-address node0:1234 --num-processes 2 --process-id 2",
            "need N >= 1 and 0 <= I < N",
        ),
    ],
)
def test_bad_input_one_clear_line(tmp_path, capsys, flags, expected):
    flags = flags.split() if isinstance(flags, str) else flags
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exit_info:
        train.main([*QUICK, *flags, "--result-directory", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_missing_dataset_is_explained(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("jaxbyz.data.DEBIAN_DIRS", {})
    monkeypatch.setattr("jaxbyz.data._download_idx", _offline)
    monkeypatch.setattr("jaxbyz.data.load_tfds_dataset", _no_tfds)
    with pytest.raises(SystemExit):
        train.main([*QUICK[2:], "--dataset", "fashion-mnist", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert "--dataset fashion-mnist: not found" in err and "--dataset synthetic" in err


def _offline(*args, **kwargs):
    raise OSError("network unreachable")


def _no_tfds(*args, **kwargs):
    from jaxbyz.data import DatasetNotFoundError

    raise DatasetNotFoundError("no tensorflow-datasets")


def test_existing_result_directory_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "eval.csv").write_text("precious\n")
    with pytest.raises(SystemExit):
        train.main([*QUICK, "--attack", "nan", "--result-directory", str(out)])
    assert "already exists" in capsys.readouterr().err
    assert (out / "eval.csv").read_text() == "precious\n"


def test_help_lists_rules_and_attacks():
    result = subprocess.run(
        [sys.executable, "-m", "jaxbyz.train", "--help"], capture_output=True, text=True, check=True
    )
    assert (
        "--nb-decl-byz" in result.stdout and "krum" in result.stdout and "little" in result.stdout
    )
