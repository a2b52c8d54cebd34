"""Checkpoints of ``python -m jaxbyz.train``: a run killed with SIGKILL and run again with the
same command ends with the files of an uninterrupted run; ``--load-checkpoint`` continues a
saved run exactly; a result directory holding another configuration is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from jaxbyz import train

RUN = [
    "--dataset", "synthetic", "--model", "simples-full", "--nb-workers", "9",
    "--nb-decl-byz", "2", "--nb-real-byz", "2", "--gar", "krum", "--attack", "little",
    "--attack-args", "factor:1.5", "negative:True", "--momentum-at", "worker",
    "--batch-size", "32", "--learning-rate", "0.1", "--evaluation-delta", "10",
    "--seed", "3", "--no-progress",
]  # fmt: skip
STEPS, DELTA = 300, 100
TIMINGS = ("compile_seconds", "run_seconds", "steps_per_second", "first_step")


def finished_files(directory: Path) -> dict[str, object]:
    summary = json.loads((directory / "summary.json").read_text())
    return {
        "eval.csv": (directory / "eval.csv").read_bytes(),
        "study.csv": (directory / "study.csv").read_bytes(),
        "config.json": (directory / "config.json").read_bytes(),
        "summary": {k: v for k, v in summary.items() if k not in TIMINGS},
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole") / "run"
    flags = [*RUN, "--nb-steps", str(STEPS), "--checkpoint-delta", str(DELTA)]
    assert train.main([*flags, "--result-directory", str(out)]) == 0
    return out


@pytest.mark.slow
def test_sigkill_then_same_command_gives_the_uninterrupted_files(uninterrupted, tmp_path):
    out = tmp_path / "run"
    command = [*RUN, "--nb-steps", str(STEPS), "--checkpoint-delta", str(DELTA)]
    command += ["--result-directory", str(out)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    process = subprocess.Popen([sys.executable, "-m", "jaxbyz.train", *command], env=env)
    first = out / "checkpoints" / str(DELTA)
    deadline = time.monotonic() + 120
    while not first.is_dir() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "summary.json").exists()

    assert train.main(command) == 0  # the same command resumes
    assert finished_files(out) == finished_files(uninterrupted)


def test_load_checkpoint_continues_exactly(uninterrupted, tmp_path):
    """From the saved step 200, 50 more steps give the rows the whole run has there."""
    out = tmp_path / "continued"
    flags = [*RUN, "--nb-steps", "50", "--load-checkpoint", str(uninterrupted / "checkpoints")]
    assert train.main([*flags, "--result-directory", str(out)]) == 0
    whole = pd.read_csv(uninterrupted / "study.csv").set_index("step")
    part = pd.read_csv(out / "study.csv").set_index("step")
    assert part.index.tolist() == list(range(200, 250))
    pd.testing.assert_frame_equal(part, whole.loc[200:249])
    evaluations = pd.read_csv(out / "eval.csv")
    assert evaluations["step"].tolist() == [200, 210, 220, 230, 240, 250]
    expected = pd.read_csv(uninterrupted / "eval.csv").set_index("step").loc[200:250]
    assert evaluations.set_index("step").equals(expected)


def test_refusals(uninterrupted, tmp_path, capsys):
    with pytest.raises(SystemExit):  # another configuration in the directory
        train.main([*RUN, "--nb-steps", "20", "--result-directory", str(uninterrupted)])
    assert "holds another configuration (nb_steps differ" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the same, completed
        train.main([*RUN, "--nb-steps", str(STEPS), "--result-directory", str(uninterrupted)])
    assert "holds this run, completed" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a checkpoint of another model
        train.main([*RUN, "--nb-steps", "5", "--nb-workers", "10", "--load-checkpoint",
                    str(uninterrupted)])  # fmt: skip
    err = capsys.readouterr().err
    assert "does not fit this run" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        train.main([*RUN, "--nb-steps", "5", "--load-checkpoint", str(tmp_path)])
    assert "no checkpoint at" in capsys.readouterr().err
