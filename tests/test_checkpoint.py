"""Run-state checkpoints: bit-exact round trips, atomicity, pruning, path forms, shardings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbyz import checkpoint as ck


@chex.dataclass
class State:
    theta: jax.Array
    momenta: jax.Array
    opt: tuple
    key: jax.Array
    step: jax.Array


class OnlyTheta(NamedTuple):
    theta: jax.Array  # its leaf is named "state.theta", as State's


def make_state(seed: int = 0) -> State:
    # numpy values: eager jax.random/jnp calls would each compile a small program
    rng = np.random.default_rng(seed)
    f32 = lambda *shape: jnp.asarray(rng.standard_normal(shape, dtype=np.float32))  # noqa: E731
    return State(
        theta=f32(7),
        momenta=f32(5, 7),
        opt=(
            optax.EmptyState(),
            optax.ScaleByAdamState(count=jnp.asarray(3, jnp.int32), mu=f32(7), nu=f32(7)),
            {"lr": jnp.asarray(0.1, jnp.float32)},
        ),
        key=jax.random.split(jax.random.key(seed), 3),
        step=jnp.asarray(42, jnp.int32),
    )


def bits(tree):
    """Every leaf as raw numpy (key data for PRNG keys), to compare bit for bit."""

    def raw(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.asarray(x)

    return jax.tree.map(raw, tree)


def assert_bit_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(bits(a)), jax.tree.leaves(bits(b)), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def test_round_trip_is_bit_exact(tmp_path):
    state = make_state()
    path = ck.save(tmp_path, 10, state, {"config": {"rule": "krum"}})
    assert path == tmp_path / "10"
    restored, meta = ck.restore(tmp_path, 10, state)
    assert_bit_equal(restored, state)
    assert isinstance(restored, State)
    assert isinstance(restored.opt[0], optax.EmptyState)
    assert isinstance(restored.opt[1], optax.ScaleByAdamState)
    assert restored.key.dtype == state.key.dtype
    assert restored.step.dtype == jnp.int32
    draws = jax.random.normal(restored.key[1], (4,))
    assert (
        np.asarray(draws).tobytes() == np.asarray(jax.random.normal(state.key[1], (4,))).tobytes()
    )
    assert meta == {
        "config": {"rule": "krum"},
        "step": 10,
        "checkpoint_format": ck.CHECKPOINT_FORMAT,
    }
    assert ck.read_metadata(path) == meta


def test_restore_from_shapes(tmp_path):
    state = make_state()
    ck.save(tmp_path, 1, state, {})
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    restored, _ = ck.restore(tmp_path, 1, like)
    assert_bit_equal(restored, state)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(restored))


def test_keep_prunes_and_steps_must_increase(tmp_path):
    state = make_state()
    for step in (1, 2, 3, 5):
        ck.save(tmp_path, step, state, {}, keep=2)
    assert ck.steps(tmp_path) == [3, 5]
    assert ck.latest(tmp_path) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3", "5"]
    with pytest.raises(FileExistsError):
        ck.save(tmp_path, 5, state, {})
    with pytest.raises(ValueError, match="holds step 5"):
        ck.save(tmp_path, 4, state, {})
    with pytest.raises(TypeError):  # not JSON: nothing is written
        ck.save(tmp_path, 6, state, {"bad": object()})
    assert ck.steps(tmp_path) == [3, 5]
    ck.save(tmp_path, 6, state, {}, keep=1)
    assert ck.steps(tmp_path) == [6]


def test_incomplete_checkpoints_are_ignored_then_cleaned(tmp_path):
    state = make_state()
    ck.save(tmp_path, 4, state, {})
    # what a save killed before its final rename leaves: orbax's temporary folder (the
    # arrays written, the commit file too), a prune killed half-way, a step folder without
    # the commit file
    tmp = tmp_path / "8.orbax-checkpoint-tmp"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "manifest.ocdbt").write_bytes(b"\0" * 10)
    (tmp / ck.COMMIT_FILE).write_text("")
    (tmp_path / "2.deleting").mkdir()
    (tmp_path / "3").mkdir()
    assert ck.steps(tmp_path) == [4]
    assert ck.latest(tmp_path) == 4
    assert ck.resolve(tmp_path) == (tmp_path, 4)
    ck.save(tmp_path, 8, state, {})
    assert ck.steps(tmp_path) == [4, 8]
    assert not tmp.exists() and not (tmp_path / "2.deleting").exists()
    restored, _ = ck.restore(tmp_path, 8, state)
    assert_bit_equal(restored, state)
    (tmp_path / "12").mkdir()  # a numbered folder orbax would take for a newer step
    with pytest.raises(ValueError, match="12 is an incomplete checkpoint folder"):
        ck.save(tmp_path, 10, state, {})


def test_a_save_failing_before_its_rename_leaves_no_checkpoint(tmp_path, monkeypatch):
    # orbax's real temporary folder, stopped at the last moment: every item written and
    # renamed inside it, its commit file written, only the final rename to "2" missing
    from orbax.checkpoint._src.path import async_path

    state = make_state()
    ck.save(tmp_path, 1, state, {})
    rename = async_path.rename

    async def no_final_rename(src, dst):
        if dst.name == "2":
            raise OSError("killed")
        return await rename(src, dst)

    monkeypatch.setattr(async_path, "rename", no_final_rename)
    with pytest.raises(Exception, match="killed"):
        ck.save(tmp_path, 2, state, {})
    monkeypatch.undo()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["1", "2.orbax-checkpoint-tmp"], left
    for item in (ck.COMMIT_FILE, "state/manifest.ocdbt", "metadata/metadata"):
        assert (tmp_path / "2.orbax-checkpoint-tmp" / item).exists()  # complete, yet ignored
    assert ck.steps(tmp_path) == [1]
    ck.save(tmp_path, 2, state, {})  # the leftover is cleaned, the step saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2"]


def one_line_error(tmp_path, like) -> str:
    with pytest.raises(ValueError) as info:
        ck.restore(tmp_path, 1, like)
    message = str(info.value)
    assert "\n" not in message
    assert info.value.__context__ is None and info.value.__cause__ is None
    return message


def test_mismatching_like_names_the_leaf(tmp_path):
    state = make_state()
    ck.save(tmp_path, 1, state, {})
    message = one_line_error(
        tmp_path, state.replace(momenta=jax.ShapeDtypeStruct((6, 7), jnp.float32))
    )
    assert "state.momenta" in message and "float32[6,7]" in message and "float32[5,7]" in message
    message = one_line_error(tmp_path, state.replace(step=jax.ShapeDtypeStruct((), jnp.float32)))
    assert "state.step" in message and "int32[]" in message
    key_data = jax.random.key_data(state.key)
    message = one_line_error(tmp_path, state.replace(key=key_data))
    assert "state.key" in message and "PRNG key threefry2x32" in message
    message = one_line_error(tmp_path, {"state": state})
    assert "['state']" in message and "no such leaf" in message
    message = one_line_error(tmp_path, state.replace(opt=(optax.EmptyState(),)))
    assert "state.opt[1].count" in message and "no such leaf" in message
    message = one_line_error(tmp_path, OnlyTheta(state.theta))  # leaves only in the checkpoint
    assert "expected no such leaf, found" in message


def test_other_format_is_refused(tmp_path):
    state = make_state()
    path = ck.save(tmp_path, 1, state, {})
    meta = json.loads((path / ck.METADATA_FILE).read_text())
    (path / ck.METADATA_FILE).write_text(json.dumps({**meta, "checkpoint_format": 99}))
    with pytest.raises(ValueError, match="format 99"):
        ck.restore(tmp_path, 1, state)


def test_resolve_path_forms(tmp_path):
    state = make_state()
    checkpoints = tmp_path / "run" / ck.SUBDIR
    for step in (100, 120):
        ck.save(checkpoints, step, state, {})
    assert ck.resolve(tmp_path / "run") == (checkpoints, 120)
    assert ck.resolve(checkpoints) == (checkpoints, 120)
    assert ck.resolve(checkpoints / "100") == (checkpoints, 100)
    assert ck.read_metadata(checkpoints / "100")["step"] == 100
    assert ck.read_metadata(tmp_path / "run")["step"] == 120
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "empty", tmp_path / "absent", checkpoints / "120.orbax-checkpoint-tmp"):
        with pytest.raises(ValueError, match="no checkpoint") as info:
            ck.resolve(path)
        assert "\n" not in str(info.value)
    assert ck.steps(tmp_path / "absent") == [] and ck.latest(tmp_path / "empty") is None


SHARDED = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jaxbyz import checkpoint as ck

    directory = sys.argv[1]
    mesh = Mesh(np.asarray(jax.devices()), ("workers",))
    rows, whole = NamedSharding(mesh, P("workers")), NamedSharding(mesh, P())
    state = {
        "momenta": jax.device_put(np.arange(8 * 6, dtype=np.float32).reshape(8, 6), rows),
        "keys": jax.device_put(jax.random.split(jax.random.key(0), 8), rows),
        "theta": jax.device_put(np.ones(6, np.float32), whole),
    }
    ck.save(directory, 3, state, {})

    def abstract(x, sharding):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    def raw(x):
        return np.asarray(jax.random.key_data(x) if x.dtype == state["keys"].dtype else x)

    report = {"devices": jax.device_count()}
    for name, target in (("as_saved", None), ("resharded", whole)):
        like = {k: abstract(x, target or x.sharding) for k, x in state.items()}
        out, _ = ck.restore(directory, 3, like)
        report[name] = {
            # the sharding JAX gives the original leaf placed with `like`'s sharding
            "shardings": all(
                out[k].sharding == jax.device_put(x, like[k].sharding).sharding
                and out[k].sharding.is_equivalent_to(like[k].sharding, x.ndim)
                for k, x in state.items()
            ),
            "shard": out["momenta"].addressable_shards[0].data.shape,
            "keys": out["keys"].dtype == state["keys"].dtype,
            "bits": all(np.array_equal(raw(out[k]), raw(x)) for k, x in state.items()),
            "draws": bool(
                jnp.array_equal(
                    jax.vmap(jax.random.normal)(out["keys"]),
                    jax.vmap(jax.random.normal)(state["keys"]),
                )
            ),
        }
    print(json.dumps(report))
    """
)


def test_sharded_restore_on_four_devices(tmp_path):
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, "-c", SHARDED, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["devices"] == 4
    every = {"shardings": True, "keys": True, "bits": True, "draws": True}
    assert report["as_saved"] == {**every, "shard": [2, 6]}, report  # rows over 4 devices
    assert report["resharded"] == {**every, "shard": [8, 6]}, report  # replicated
    assert proc.stderr.strip() == "", proc.stderr[-2000:]  # no orbax log noise
