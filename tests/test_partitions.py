"""Non-IID partitions of the honest workers (``--partition``): NumPy references written from the
definitions (McMahan et al. 2017's shards, ByzFL's sorted and gamma-similarity splits), coverage,
label skew, determinism, the ``--dirichlet-alpha`` alias, refusals, and a tiny run of each."""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest
import quick_run

from jaxbyz import data, train
from jaxbyz.config import Config
from jaxbyz.experiments import grid as grid_lib
from jaxbyz.simulator import make_simulation, make_train
from jaxbyz.validation import check_config

ACCEPTED = "accepted: iid, sorted, dirichlet:ALPHA (ALPHA > 0), shards:K (an integer K >= 1)"


def _labels(n: int, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, n).astype(np.int32)


def _owned(table: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    return [np.asarray(table[i, : lengths[i]]) for i in range(len(lengths))]


def _assert_exact_cover(owned: list[np.ndarray], n: int) -> None:
    """Every example owned by exactly one worker, every worker owning at least one."""
    assert all(len(o) >= 1 for o in owned)
    np.testing.assert_array_equal(np.sort(np.concatenate(owned)), np.arange(n))


# --------------------------------------------------------------------------------------------- #
# References (float-free: plain loops over the definitions)


def _ref_label_order(labels: np.ndarray, indices) -> list[int]:
    """``indices`` sorted by (label, index)."""
    return [i for _, i in sorted((int(labels[i]), int(i)) for i in indices)]


def _ref_blocks(items: list[int], parts: int) -> list[list[int]]:
    """``items`` cut in ``parts`` contiguous blocks, the first ``len % parts`` one longer."""
    base, extra = divmod(len(items), parts)
    blocks, start = [], 0
    for p in range(parts):
        size = base + (1 if p < extra else 0)
        blocks.append(items[start : start + size])
        start += size
    return blocks


def ref_sorted(labels, workers):
    return _ref_blocks(_ref_label_order(labels, range(len(labels))), workers)


def ref_shards(labels, workers, k, seed):
    shards = _ref_blocks(_ref_label_order(labels, range(len(labels))), k * workers)
    draw = np.random.default_rng(seed).permutation(k * workers)
    owned = []
    for w in range(workers):
        mine = []
        for j in range(k):
            mine += shards[int(draw[w * k + j])]
        owned.append(mine)
    return owned


def ref_gamma(labels, workers, gamma, seed):
    n = len(labels)
    shared_count = int(n * gamma)
    order = np.random.default_rng(seed).permutation(n)
    shared = _ref_blocks([int(i) for i in order[:shared_count]], workers)
    rest = _ref_blocks(_ref_label_order(labels, order[shared_count:]), workers)
    return [shared[workers - 1 - w] + rest[w] for w in range(workers)]


CASES = [(40, 3), (100, 7), (257, 5), (12, 12)]


@pytest.mark.parametrize("n,workers", CASES)
def test_sorted_matches_reference_and_covers(n, workers):
    labels = _labels(n, seed=n)
    owned = _owned(*data.sorted_partition(labels, workers))
    assert [o.tolist() for o in owned] == ref_sorted(labels, workers)
    _assert_exact_cover(owned, n)
    # contiguous blocks of the label order: worker i's labels all <= worker i+1's
    for a, b in itertools.pairwise(owned):
        assert labels[a].max() <= labels[b].min()


@pytest.mark.parametrize(
    "n,workers,k", [(n, w, k) for n, w in CASES for k in (1, 2, 3) if k * w <= n]
)
def test_shards_match_reference_and_cover(n, workers, k):
    labels = _labels(n, seed=n)
    owned = _owned(*data.shards_partition(labels, workers, k, seed=5))
    assert [sorted(o.tolist()) for o in owned] == [
        sorted(r) for r in ref_shards(labels, workers, k, 5)
    ]
    _assert_exact_cover(owned, n)
    sizes = [len(o) for o in owned]
    assert max(sizes) - min(sizes) <= k  # shards differ in size by at most one


@pytest.mark.parametrize("n,workers", CASES)
@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.5, 1.0])
def test_gamma_matches_reference_and_covers(n, workers, gamma):
    labels = _labels(n, seed=n)
    owned = _owned(*data.gamma_partition(labels, workers, gamma, seed=2))
    assert [o.tolist() for o in owned] == ref_gamma(labels, workers, gamma, 2)
    _assert_exact_cover(owned, n)
    sizes = [len(o) for o in owned]
    assert max(sizes) - min(sizes) <= 1
    if gamma == 0.0:  # no IID share: the sorted split
        assert [o.tolist() for o in owned] == ref_sorted(labels, workers)


def test_dirichlet_alias_and_cover():
    labels = _labels(300)
    table, lengths = data.dirichlet_partition(labels, 6, 0.3, seed=4)
    _assert_exact_cover(_owned(table, lengths), 300)
    for partition, alpha in (("dirichlet:0.3", None), ("iid", 0.3), ("dirichlet:0.3", 0.3)):
        got = data.honest_partition(labels, 6, partition, seed=4, dirichlet_alpha=alpha)
        np.testing.assert_array_equal(got[0], table)
        np.testing.assert_array_equal(got[1], lengths)


# --------------------------------------------------------------------------------------------- #
# Label skew


def test_sorted_and_shards_label_skew():
    labels = np.repeat(np.arange(10), 30)[np.random.default_rng(1).permutation(300)]
    # sorted: 5 workers, 2 classes each
    owned = _owned(*data.sorted_partition(labels, 5))
    assert [len(np.unique(labels[o])) for o in owned] == [2] * 5
    # shards:2 of 30 examples (label-pure): at most 2 labels per worker, and for some seed
    # a worker with 2 labels; shards:1 with 10 workers: exactly one label each
    counts = []
    for seed in range(4):
        owned = _owned(*data.shards_partition(labels, 5, 2, seed=seed))
        counts += [len(np.unique(labels[o])) for o in owned]
    assert max(counts) == 2 and min(counts) >= 1
    owned = _owned(*data.shards_partition(labels, 10, 1, seed=0))
    assert sorted(int(labels[o][0]) for o in owned) == list(range(10))
    assert all(len(np.unique(labels[o])) == 1 for o in owned)


def test_gamma_interpolates_between_sorted_and_iid():
    labels = np.repeat(np.arange(10), 100)[np.random.default_rng(2).permutation(1000)]

    def mean_labels(gamma):
        owned = _owned(*data.gamma_partition(labels, 10, gamma, seed=0))
        return np.mean([len(np.unique(labels[o])) for o in owned])

    assert mean_labels(0.0) == 1.0
    assert mean_labels(1.0) == 10.0
    assert 1.0 < mean_labels(0.2) <= 10.0
    # the IID share: with gamma = 1 every worker's label histogram is near the global one
    owned = _owned(*data.gamma_partition(labels, 4, 1.0, seed=0))
    for o in owned:
        assert np.bincount(labels[o], minlength=10).min() >= 10


# --------------------------------------------------------------------------------------------- #
# Determinism, the table's shape, the sampler


@pytest.mark.parametrize("spec", ["dirichlet:0.5", "shards:2", "gamma:0.5", "sorted"])
def test_deterministic_given_the_seed(spec):
    labels = _labels(200)
    a = data.honest_partition(labels, 5, spec, seed=3)
    b = data.honest_partition(labels, 5, spec, seed=3)
    c = data.honest_partition(labels, 5, spec, seed=4)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    table, lengths = a
    assert table.dtype == np.int32 and lengths.dtype == np.int32
    assert table.shape == (5, lengths.max())
    # padded by repetition: every entry of a row is one of the worker's examples
    for i in range(5):
        assert set(table[i].tolist()) == set(table[i, : lengths[i]].tolist())
    differs = not np.array_equal(a[0], c[0])
    assert differs == data.partition_uses_seed(spec) or spec == "sorted"
    assert data.partition_uses_seed(spec) == (spec != "sorted")


def test_iid_is_no_partition_and_sampler_stays_inside():
    labels = _labels(120)
    assert data.honest_partition(labels, 4, "iid", seed=0) is None
    assert not data.partition_uses_seed("iid")
    table, lengths = data.honest_partition(labels, 4, "shards:2", seed=0)
    idx = np.asarray(data.sample_indices(jax.random.key(0), 4, 16, 120, (table, lengths)))
    for i in range(4):
        assert set(idx[i].tolist()) <= set(table[i, : lengths[i]].tolist())


# --------------------------------------------------------------------------------------------- #
# Refusals


@pytest.mark.parametrize(
    "spec,why",
    [
        ("shards:0", "K=0 must be an integer >= 1"),
        ("shards:1.5", "K=1.5 must be an integer >= 1"),
        ("shards:", "shards needs a parameter, e.g. shards:2"),
        ("gamma:1.5", "G=1.5 must be a number in [0, 1]"),
        ("gamma:-0.1", "G=-0.1 must be a number in [0, 1]"),
        ("gamma:nan", "G=nan must be a number in [0, 1]"),
        ("dirichlet:0", "ALPHA=0 must be a finite number > 0"),
        ("dirichlet:inf", "ALPHA=inf must be a finite number > 0"),
        ("dirichlet:x", "ALPHA=x must be a finite number > 0"),
        ("sorted:3", "sorted takes no parameter"),
        ("iid:1", "iid takes no parameter"),
        ("foo", "unknown partition 'foo'"),
        ("", "unknown partition ''"),
    ],
)
def test_parse_errors_name_flag_value_and_forms(spec, why):
    with pytest.raises(ValueError) as info:
        data.parse_partition(spec)
    message = str(info.value)
    assert message.startswith(f"--partition {spec!r} is invalid: {why}; {ACCEPTED}"), message
    assert "\n" not in message
    with pytest.raises(ValueError, match="--partition"):  # the configuration check too
        check_config(_tiny(partition=spec))


def test_parse_accepts_the_forms():
    assert data.parse_partition("iid") == ("iid", None)
    assert data.parse_partition(" Sorted ") == ("sorted", None)
    assert data.parse_partition("dirichlet:0.5") == ("dirichlet", 0.5)
    assert data.parse_partition("shards:2") == ("shards", 2)
    assert data.parse_partition("gamma:0") == ("gamma", 0.0)
    assert data.parse_partition("gamma:1") == ("gamma", 1.0)


def test_alias_conflicts_are_refused():
    check_config(_tiny(partition="dirichlet:0.5", dirichlet_alpha=0.5))  # the same: accepted
    for spec in ("dirichlet:0.4", "shards:2", "sorted"):
        with pytest.raises(ValueError) as info:
            check_config(_tiny(partition=spec, dirichlet_alpha=0.5))
        assert str(info.value) == (
            f"--partition {spec!r} and --dirichlet-alpha 0.5 disagree (--dirichlet-alpha A is "
            "--partition dirichlet:A); fix: give only one of them"
        )


def test_too_few_examples():
    labels = _labels(10)
    with pytest.raises(ValueError, match=r"^--partition shards:3: 12 shards \(3 per honest worker"):
        data.shards_partition(labels, 4, 3)
    for call in (
        lambda: data.sorted_partition(labels, 11),
        lambda: data.gamma_partition(labels, 11, 0.5),
    ):
        with pytest.raises(ValueError, match=r"the 10 training examples cannot be split across 11"):
            call()


# --------------------------------------------------------------------------------------------- #
# Configuration, programs and runs

DATA = data.make_synthetic(n_train=300, n_test=100, shape=(4, 4, 1), seed=1)


def _tiny(**changes) -> Config:
    return Config(
        dataset="synthetic",
        model="logreg",
        nb_workers=5,
        nb_decl_byz=1,
        gar="median",
        attack="nan",
        attack_args={},
        batch_size=8,
        nb_steps=3,
        evaluation_delta=0,
        learning_rate=0.1,
        seed=2,
    ).replace(**changes)


def _arrays(config: Config) -> dict:
    """The simulation's device arrays (no compilation: the model is only shape-evaluated)."""
    return make_simulation(config, DATA).arrays


def test_alias_gives_the_same_device_arrays():
    a = _arrays(_tiny(dirichlet_alpha=0.5))
    b = _arrays(_tiny(partition="dirichlet:0.5"))
    assert a["partition_table"].shape[0] == 4  # the honest workers
    for name in ("partition_table", "partition_lengths"):
        np.testing.assert_array_equal(a[name], b[name])
    assert "partition_table" not in _arrays(_tiny())


def test_program_key_keeps_the_seed_of_seeded_partitions():
    def programs(**changes):
        runs = [grid_lib.Run(_tiny(seed=s, **changes)) for s in (1, 2)]
        return len(grid_lib.group_programs(runs))

    assert programs() == 1
    assert programs(partition="sorted") == 1
    for spec in ("shards:2", "gamma:0.5", "dirichlet:0.5"):
        assert programs(partition=spec) == 2
    assert programs(dirichlet_alpha=0.5) == 2


def test_tiny_run_with_each_partition():
    """One compiled run (a single compilation keeps the test short) fed each partition's device
    arrays, the table padded by repetition to one width (the sampler reads only ``lengths``)."""
    train = jax.jit(make_train(_tiny(partition="shards:2"), DATA))
    thetas = []
    for spec in ("shards:2", "dirichlet:0.5", "sorted", "gamma:0.5"):
        arrays = dict(_arrays(_tiny(partition=spec)))
        expected = data.honest_partition(DATA.train_y, 4, spec, seed=2)
        np.testing.assert_array_equal(arrays["partition_table"], expected[0])
        np.testing.assert_array_equal(arrays["partition_lengths"], expected[1])
        owned = _owned(*expected)
        arrays["partition_table"] = np.stack([np.resize(o, len(DATA.train_y)) for o in owned])
        out = train(jax.random.key(0, impl="rbg"), None, arrays)  # rbg: compiles faster
        assert out["accuracy"].shape == (1,)
        thetas.append(np.asarray(out["theta"]))
        assert np.isfinite(thetas[-1]).all()
    assert not np.array_equal(thetas[0], thetas[2])  # the honest batches come from the partition


def test_train_command_refuses_a_bad_partition(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        train.main(
            [*quick_run.QUICK, "--partition", "gamma:1.5", "--result-directory", str(tmp_path)]
        )
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--partition 'gamma:1.5' is invalid: G=1.5 must be a number in [0, 1]" in err
    assert len(err.splitlines()) == 1
