"""The persistent compilation cache: on by default, where it lives, how it is turned off, and a
second run of the same command compiling nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxbyz import cache


def test_where_the_cache_lives(monkeypatch, tmp_path):
    monkeypatch.delenv(cache.ENVIRONMENT, raising=False)
    assert cache.resolve(None) == Path.home() / ".cache" / "jaxbyz" / "xla"
    monkeypatch.setenv(cache.ENVIRONMENT, str(tmp_path / "env"))
    assert cache.resolve(None) == tmp_path / "env"
    assert cache.resolve(tmp_path / "flag") == tmp_path / "flag"  # the flag wins
    for off in ("none", "None", "off"):
        assert cache.resolve(off) is None
    monkeypatch.setenv(cache.ENVIRONMENT, "none")
    assert cache.resolve(None) is None and cache.enable(None) is None


def test_a_folder_that_cannot_be_made_is_one_clear_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match=r"--cache-dir .*cannot be created.*--cache-dir none"):
        cache.enable(blocker / "xla")


def test_second_run_of_the_same_command_compiles_nothing(tmp_path):
    """``python -m jaxbyz.train`` twice with the default cache (here ``$JAXBYZ_CACHE_DIR``):
    the first run stores its programs, the second adds no entry (it loaded them all)."""
    folder = tmp_path / "xla"
    env = {**os.environ, cache.ENVIRONMENT: str(folder)}
    argv = [sys.executable, "-m", "jaxbyz.train", "--dataset", "synthetic", "--nb-workers", "7"]
    argv += ["--nb-decl-byz", "1", "--gar", "median", "--attack", "little", "--attack-args"]
    argv += ["factor:1.5", "--nb-steps", "6", "--evaluation-delta", "3", "--no-progress"]
    argv += ["--seed", "1", "--model", "logreg", "--batch-size", "8", "--batch-size-test", "50"]
    argv += ["--batch-size-test-reps", "2"]

    def entries() -> set[str]:
        return {p.name for p in folder.iterdir()} if folder.exists() else set()

    subprocess.run(argv, env=env, check=True, capture_output=True, text=True, timeout=300)
    first = entries()
    assert any(name.startswith("jit_") for name in first), first
    subprocess.run(argv, env=env, check=True, capture_output=True, text=True, timeout=300)
    assert entries() == first
