"""Structure choices as traced data: one program for runs differing in placement, Nesterov or
a moment-family attack, equal to the dedicated programs it replaces."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbyz import attacks, momentum, structure, transforms
from jaxbyz.config import Config, HyperParams
from jaxbyz.data import make_synthetic
from jaxbyz.experiments import grid as grid_lib
from jaxbyz.simulator import make_simulation, make_train, moment_attack

DATA = make_synthetic(n_train=1500, n_test=300, shape=(8, 8, 1), seed=5)
LITTLE = {"attack": "little", "attack_args": {"factor": 1.5, "negative": True}}
EMPIRE = {"attack": "empire", "attack_args": {"factor": 1.1}}


def small(**changes) -> Config:
    base = Config(
        dataset="synthetic",
        nb_workers=9,
        nb_decl_byz=2,
        gar="median",
        batch_size=16,
        nb_steps=8,
        evaluation_delta=4,
        learning_rate=0.1,
        momentum=0.9,
        dampening=0.2,
        gradient_clip=1.0,
        **LITTLE,
    )
    return base.replace(**changes)


# ---------------------------------------------------------------------------------------------- #
# Building blocks, exactly


def test_switch_returns_the_chosen_branch_and_keeps_the_others_state():
    rng = np.random.default_rng(0)
    branches = (optax.identity(), transforms.momentum(0.9, 0.1), optax.scale(-2.0))
    tx = transforms.switch(1, *branches)
    u1, u2 = (jnp.asarray(rng.normal(size=5), jnp.float32) for _ in range(2))
    state = tx.init(jnp.zeros(5))
    out1, state = tx.update(u1, state)
    out2, state = tx.update(u2, state)
    alone = branches[1]
    s = alone.init(jnp.zeros(5))
    ref1, s = alone.update(u1, s)
    ref2, s = alone.update(u2, s)
    np.testing.assert_array_equal(out1, ref1)
    np.testing.assert_array_equal(out2, ref2)
    np.testing.assert_array_equal(transforms.velocity(state.states[1]), transforms.velocity(s))
    for index in (0, 2):  # the other branches, traced indices under vmap
        outs, _ = jax.vmap(
            lambda i: transforms.switch(i, *branches).update(u1, tx.init(jnp.zeros(5)))
        )(jnp.asarray([index, 1]))
        np.testing.assert_array_equal(outs[0], branches[index].update(u1, ())[0] if index else u1)
        np.testing.assert_array_equal(outs[1], ref1)


@pytest.mark.parametrize("placement", momentum.PLACEMENTS)
def test_traced_composition_equals_the_dedicated_one(placement):
    """Three steps of the worker and server stages: the traced composition gives the dedicated
    one's submissions, update and velocity (tolerance: float32 rounding, 1e-6 relative)."""
    rng = np.random.default_rng(1)
    h, d = 4, 6
    kwargs = dict(beta=0.9, dampening=0.2, optimizer=optax.sgd(0.1), num_workers=h)
    code = structure.PLACEMENT_CODES[placement]
    pair = (momentum.compose(placement, **kwargs), momentum.compose_traced(code, **kwargs))
    theta = jnp.zeros(d)
    states = [(c.worker.init(theta), c.server.init(theta)) for c in pair]
    previous = jnp.asarray(rng.normal(size=d), jnp.float32)
    for _ in range(3):
        grads = jnp.asarray(rng.normal(size=(h, d)), jnp.float32)
        outs = []
        for c, (ws, ss) in zip(pair, states, strict=True):
            sent, ws = c.worker.update(grads, ws, theta, previous_aggregate=previous)
            update, ss = c.server.update(sent[1:].mean(0), ss, theta)
            agg = transforms.RobustAggregateState(previous=previous, accepted=jnp.zeros(0))
            velocity = jnp.broadcast_to(c.velocity(ws, agg, ss), (h, d))
            outs.append((sent, update, velocity, (ws, ss)))
        for a, b in zip(outs[0][:3], outs[1][:3], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        states = [o[3] for o in outs]
        previous = outs[0][0].mean(0)


@pytest.mark.parametrize("spec", [LITTLE, EMPIRE], ids=["little", "empire"])
def test_moment_attack_equals_the_attack_exactly(spec):
    H = jnp.asarray(np.random.default_rng(2).normal(size=(7, 33)), jnp.float32)
    attack = attacks.get(spec["attack"], **spec["attack_args"])
    a, b = structure.attack_moments(attack.name, attack.params)
    coefficients = {"attack_std": jnp.float32(a), "attack_mean": jnp.float32(b)}
    np.testing.assert_array_equal(
        jax.jit(moment_attack, static_argnums=1)(H, 3, coefficients),
        jax.jit(lambda H: attack(H, 3))(H),
    )


def test_which_choices_are_traceable():
    spec = structure.attack_spec(small())
    assert structure.traceable(small()) == structure.Traced(True, True, True, (spec,))
    adaptive = small(attack_args={"factor": -4})  # a searched factor: a branch, not a moment
    assert not structure.traceable(adaptive).attack and structure.traceable(adaptive).switch
    flip = small(attack="labelflip", attack_args={})  # its workers run the placement's stage
    assert structure.traceable(flip) == structure.Traced(False, True, False)
    rounds = small(attack="signflip", attack_args={}, nb_local_steps=2)  # federated rounds
    assert structure.traceable(rounds).switch == ()
    greedy = small(attack="optimized", attack_args={})
    remembers = small(attack="optimized", attack_args={"memory": 0.9})  # its drift is state
    assert structure.traceable(greedy).switch and structure.traceable(remembers).switch == ()
    assert structure.attack_moments("little", {"factor": 2, "negative": False}) == (2.0, 0.0)
    assert structure.attack_moments("empire", {"factor": 1.1}) == (0.0, -1.1)
    assert structure.attack_moments("signflip", {"scale": 1.0}) is None
    with pytest.raises(ValueError, match="placement of this configuration cannot be traced"):
        make_simulation(flip, DATA, traced=structure.Traced(placement=True))


def test_paper_grid_is_thirteen_programs():
    """The paper's Fashion-MNIST grid (920 runs): 92 dedicated programs, 13 with the placement,
    Nesterov and the attack traced (11 rule x f settings and 2 baselines)."""
    grid = grid_lib.load_grid("paper-fashion-mnist")
    assert len(grid.runs) == 920
    assert len(grid_lib.group_programs(grid.runs, trace_structure=False)) == 92
    programs = grid_lib.group_programs(grid.runs)
    assert len(programs) == 13
    assert {p.traced for p in programs} == {
        structure.Traced(True, True, True),
        structure.Traced(nesterov=True),
    }


# ---------------------------------------------------------------------------------------------- #
# Whole runs: the traced program against the dedicated ones


QUICK = [("worker", True, EMPIRE), ("server", False, LITTLE)]  # each choice takes two values
FULL = [
    (p, nesterov, spec)
    for p, (nesterov, spec) in itertools.product(
        momentum.PLACEMENTS, [(False, LITTLE), (True, EMPIRE), (True, LITTLE), (False, EMPIRE)]
    )
]


@pytest.mark.parametrize(
    "combos", [QUICK, pytest.param(FULL, marks=pytest.mark.slow)], ids=["two", "all-twelve"]
)
def test_traced_program_equals_dedicated_programs(combos):
    """Runs (placements x Nesterov x little/empire) vmapped through one traced program equal
    each run's dedicated program: accuracies within one test example, parameters and study
    metrics within 1e-4 relative (vmapped and single programs round differently; the same
    tolerance as seeds batched by vmap)."""
    configs = [small(momentum_at=p, momentum_nesterov=n, **spec) for p, n, spec in combos]
    traced = structure.varying(configs)
    assert traced == structure.Traced(True, True, True)
    train = make_train(configs[0], DATA, traced=traced)
    hps = [
        HyperParams.from_config(c)._replace(attack={}) for c in configs
    ]  # the factors live in the moment coefficients
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *hps)
    keys = jnp.stack([jax.random.key(3)] * len(configs))
    together = jax.jit(jax.vmap(train, in_axes=(0, 0, None)))(keys, stacked, train.data)
    for i, config in enumerate(configs):
        alone = jax.jit(make_train(config, DATA))(jax.random.key(3))
        np.testing.assert_allclose(
            together["accuracy"][i], alone["accuracy"], atol=1.01 / 300, err_msg=str(i)
        )
        np.testing.assert_allclose(together["theta"][i], alone["theta"], rtol=1e-4, atol=1e-5)
        for name in ("honest_norm", "attack_norm", "aggregate_norm"):
            np.testing.assert_allclose(
                together["study"][name][i], alone["study"][name], rtol=1e-4, err_msg=name
            )
    # the six runs are not one run: the choices really change the trajectory
    assert len({np.asarray(t).tobytes() for t in together["theta"]}) == len(configs)


# ---------------------------------------------------------------------------------------------- #
# The attack switch: attacks outside the moment family in one program


SWITCH_GRID = """
name = "switch"
dataset = "synthetic"
nb_workers = 9
nb_decl_byz = 2
gar = "median"
batch_size = 16
nb_steps = 8
evaluation_delta = 4
learning_rate = 0.1
momentum = 0.9
gradient_clip = 1.0
momentum_at = ["update", "worker"]
baseline = false

[[axis.attack]]
attack = "signflip"

[[axis.attack]]
attack = "minmax"

[[axis.attack]]
attack = "gaussian"

[[axis.attack]]
attack = "little"
attack_args = { factor = 0.5 }

[[axis.attack]]
attack = "little"
attack_args = { factor = 1.5 }

[[axis.attack]]
attack = "labelflip"
"""


def test_attack_switch_groups_attacks_and_batches_each_apart(tmp_path):
    """Attacks on the submitted vectors share one program (a switch), a data-poisoning attack
    keeps programs of its own; each batch holds one branch; ``little``'s two factors share a
    branch (a traced number)."""
    path = tmp_path / "switch.toml"
    path.write_text(SWITCH_GRID)
    grid = grid_lib.load_grid(path)
    programs = grid_lib.group_programs(grid.runs)
    assert len(grid.runs) == 12 and len(programs) == 3  # the switch; labelflip per placement
    switch = next(p for p in programs if p.traced.switch)
    assert len(switch.traced.switch) == 4 and switch.traced.placement
    assert "vs 4 attacks" in switch.label
    batches = switch.batches(8)
    assert [len(b) for b in batches] == [2, 2, 2, 4]
    for batch in batches:
        assert len({switch.branch(r) for r in batch}) == 1
    assert len(grid_lib.group_programs(grid.runs, trace_structure=False)) == 12 - 2
    assert structure.traceable(small(attack="labelflip", attack_args={})).switch == ()
    assert structure.switch_factor(small(attack_args={"factor": 2})) == 2.0
    assert structure.switch_factor(small(attack_args={"factor": -4})) == 0.0  # a search
    ((little, traced),) = structure.switch_attacks((structure.attack_spec(small()),))
    assert little.name == "little" and traced and little.params["negative"]
    assert structure.attack_spec(small(attack_args={"factor": -4})) != structure.attack_spec(
        small(attack_args={"factor": 2})
    )


SMALL_SWITCH = (
    SWITCH_GRID.replace('[[axis.attack]]\nattack = "gaussian"\n\n', "")
    .replace('[[axis.attack]]\nattack = "signflip"\n\n', "")
    .replace('gar = "median"', 'gar = "average"')
    .replace("nb_steps = 8", "nb_steps = 4")
    .replace("baseline = false", "baseline = false\nseed = [1, 2]")
    .split('[[axis.attack]]\nattack = "labelflip"')[0]
)


@pytest.mark.parametrize(
    "text, overrides, max_batch",
    [
        (SMALL_SWITCH, {"momentum_at": "worker"}, 2),  # one batch size: batches of 2
        pytest.param(SWITCH_GRID, {}, 8, marks=pytest.mark.slow),
        pytest.param(SWITCH_GRID, {}, 1, marks=pytest.mark.slow),
    ],
    ids=["two-attacks", "all-batched", "all-one-run-batches"],
)
def test_attack_switch_sweep_equals_dedicated_programs(tmp_path, text, overrides, max_batch):
    """The same grid run with the switch and with one program per attack: best accuracies within
    one test example, final losses and variance-norm ratios within 1e-4 relative (the tolerance
    of the traced placement: vmapped and single programs round differently; in practice equal
    to 1e-7); the attacks really differ. Each branch must get its own run's factor: ``little``
    at 0.5 and 1.5 share a branch."""
    import pandas as pd

    from jaxbyz.experiments import runner

    path = tmp_path / "switch.toml"
    path.write_text(text)
    grid = grid_lib.load_grid(path, overrides)
    datasets = {("synthetic", None): DATA}
    tables = {}
    for traced in (True, False):
        store = runner.Store(tmp_path / f"out-{traced}")
        sweep = runner.Sweep(
            grid,
            store,
            max_batch=max_batch,
            progress=False,
            log=lambda _: None,
            trace_structure=traced,
            datasets=datasets,
        )
        assert sweep.run().failed == 0
        tables[traced] = pd.read_csv(store.root / "runs.csv").set_index("run_id").sort_index()
    switch, dedicated = tables[True], tables[False]
    assert list(switch.index) == list(dedicated.index)
    assert not set(switch["program_id"]) & set(dedicated["program_id"])  # other executables
    np.testing.assert_allclose(switch["best_accuracy"], dedicated["best_accuracy"], atol=1.01 / 300)
    for column in ("final_loss", "mean_ratio"):
        np.testing.assert_allclose(switch[column], dedicated[column], rtol=1e-4, err_msg=column)
    assert len(set(switch["final_loss"].round(6))) == len(switch)


def test_program_id_names_the_compiled_program():
    """Equal ids for the same executable, other ids for other executables: a run alone in its
    program has its dedicated program's id; the same run in a switch, or in a switch with other
    branches, another id; two switches tracing only the placement keep their attack apart."""
    minmax, minsum = small(attack="minmax", attack_args={}), small(attack="minsum", attack_args={})

    def ids(configs, trace_structure=True):
        programs = grid_lib.group_programs(map(grid_lib.Run, configs), trace_structure)
        return [p.id for p in programs]

    (alone,) = ids([minsum])
    (switch,) = ids([minmax, minsum])
    (wider,) = ids([minmax, minsum, small()])
    assert len({alone, switch, wider}) == 3
    assert ids([minmax, minsum], trace_structure=False)[1] == alone
    both = [c.replace(momentum_at=m) for c in (minmax, minsum) for m in ("update", "worker")]
    placement_only = ids(both[:2]), ids(both[2:])
    assert placement_only[0] != placement_only[1]
    (one_placement,) = ids([minsum, minsum.replace(seed=2)])  # the seed is a traced number
    assert one_placement == alone


def test_equal_program_ids_give_equal_runs_bit_for_bit(tmp_path):
    """A run alone in its program and the same run in a ``--dedicated-programs`` sweep of a
    wider grid are one executable (one id): equal bit for bit. In a switch it is another
    executable (another id): equal to rounding only (the tolerance of the test above)."""
    import pandas as pd

    from jaxbyz.experiments import runner

    wide = tmp_path / "wide.toml"
    wide.write_text(SMALL_SWITCH.replace("seed = [1, 2]", "seed = 1"))
    alone = tmp_path / "alone.toml"
    alone.write_text(wide.read_text().split("[[axis.attack]]")[0] + 'attack = "minmax"\n')
    tables = {}
    for name, path, traced in (("alone", alone, True), ("dedicated", wide, False)):
        store = runner.Store(tmp_path / name)
        sweep = runner.Sweep(
            grid_lib.load_grid(path, {"momentum_at": "worker"}),
            store,
            max_batch=1,
            progress=False,
            log=lambda _: None,
            trace_structure=traced,
            datasets={("synthetic", None): DATA},
        )
        assert sweep.run().failed == 0
        table = pd.read_csv(store.root / "runs.csv")
        tables[name] = table[table["attack"] == "minmax"].iloc[0]
    one, other = tables["alone"], tables["dedicated"]
    assert one["run_id"] == other["run_id"] and one["program_id"] == other["program_id"]
    for column in ("best_accuracy", "final_accuracy", "final_loss", "mean_ratio"):
        assert one[column] == other[column], column
    curves = [
        pd.read_csv(tmp_path / name / "curves.csv.gz").set_index("run_id").loc[one["run_id"]]
        for name in tables
    ]
    np.testing.assert_array_equal(curves[0].to_numpy(), curves[1].to_numpy())


def test_defenses_vs_attacks_is_122_programs():
    """Per rule and f, one switch program for the 15 attacks on the submitted vectors (both
    placements traced) and one ``labelflip`` program per placement; two baselines: 20 x 2 x 3 +
    2 = 122 programs for 1,282 runs."""
    grid = grid_lib.load_grid("defenses-vs-attacks")
    programs = grid_lib.group_programs(grid.runs)
    assert len(grid.runs) == 1282 and len(programs) == 122
    switches = [p for p in programs if p.traced.switch]
    assert len(switches) == 40 and {len(p.traced.switch) for p in switches} == {15}
    assert all(len(b) == 2 for p in switches for b in p.batches(8))  # one attack, 2 placements
