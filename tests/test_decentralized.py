"""Decentralized learning on a graph: equivalence with centralised training, metrics, errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxbyz.config import Config
from jaxbyz.data import make_synthetic
from jaxbyz.decentralized import DecentralizedSimulation, build_network, consensus_distance
from jaxbyz.simulator import make_simulation, make_train
from jaxbyz.validation import check_config

DATA = make_synthetic(n_train=600, n_test=200, shape=(6, 6, 1), seed=4)


def small(**changes) -> Config:
    base = Config(
        dataset="synthetic",
        model="logreg",
        nb_workers=8,
        nb_decl_byz=0,
        gar="average",
        attack="little",
        attack_args={"factor": 1.5},
        batch_size=8,
        nb_steps=12,
        evaluation_delta=6,
        learning_rate=0.2,
        learning_rate_decay=0,
    )
    return base.replace(**changes)


@pytest.mark.parametrize("placement", ["worker", pytest.param("update", marks=pytest.mark.slow)])
def test_complete_graph_with_gossip_is_centralised_averaging(placement):
    """On the complete graph, Metropolis-Hastings gossip averages everything: every node holds
    the centralised model (the average rule, same batches), within float32 rounding."""
    central = jax.jit(make_train(small(momentum_at=placement), DATA))(jax.random.key(2))
    graph = small(momentum_at=placement, topology="complete", mixing="gossip")
    out = jax.jit(make_train(graph, DATA))(jax.random.key(2))
    theta = np.asarray(out["theta"])
    assert theta.shape == (8, central["theta"].shape[0])
    for node in theta:
        np.testing.assert_allclose(node, central["theta"], rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(out["accuracy"], central["accuracy"], atol=0.011)
    assert float(np.max(out["study"]["consensus_distance"])) < 1e-8
    nodes = np.asarray(out["node_accuracy"])
    assert nodes.shape == (3, 3) and np.all(nodes[:, 0] <= nodes[:, 1] + 1e-6)


@pytest.mark.slow
def test_complete_graph_with_the_average_rule_is_gossip():
    """The average over each (whole) neighbourhood is the MH gossip of the complete graph."""
    gossip = jax.jit(make_train(small(topology="complete", mixing="gossip"), DATA))
    rule = jax.jit(make_train(small(topology="complete", mixing="rule"), DATA))
    a, b = gossip(jax.random.key(0)), rule(jax.random.key(0))
    np.testing.assert_allclose(a["theta"], b["theta"], rtol=1e-4, atol=1e-5)


def test_ring_separates_nodes_and_metrics_follow():
    """On a ring the nodes drift apart (consensus distance > 0); the node accuracies bracket
    their mean; the Byzantine nodes count is recorded."""
    config = small(
        topology="ring", nb_real_byz=2, nb_decl_byz=1, gar="median", mixing="rule", nb_steps=6
    )
    sim = make_simulation(config, DATA)
    assert isinstance(sim, DecentralizedSimulation)
    out = jax.jit(sim.run)(jax.random.key(0))
    assert out["theta"].shape[0] == 6
    distance = np.asarray(out["study"]["consensus_distance"])
    assert np.all(distance > 0) and np.all(np.isfinite(distance))
    np.testing.assert_allclose(distance[-1], consensus_distance(out["theta"]), rtol=1e-5)
    assert set(np.asarray(out["study"]["byzantine_participants"])) == {2.0}
    low, mean, high = np.asarray(out["node_accuracy"])[-1]
    assert low <= mean <= high


@pytest.mark.slow
def test_dissensus_breaks_gossip_but_not_clipped_gossip():
    config = small(
        topology="torus:3x3", nb_workers=9, nb_real_byz=2, attack="dissensus", attack_args={},
        nb_steps=30, evaluation_delta=0,
    )  # fmt: skip
    plain = jax.jit(make_train(config.replace(mixing="gossip"), DATA))(jax.random.key(0))
    clipped = jax.jit(make_train(config.replace(mixing="clipped-gossip"), DATA))(jax.random.key(0))
    assert (
        plain["study"]["consensus_distance"][-1] > 100 * clipped["study"]["consensus_distance"][-1]
    )


def test_byzantine_nodes_are_drawn_from_the_seed():
    a = build_network(small(topology="ring", nb_real_byz=2, seed=1))
    b = build_network(small(topology="ring", nb_real_byz=2, seed=1))
    c = build_network(small(topology="ring", nb_real_byz=2, seed=2))
    np.testing.assert_array_equal(a.byzantine, b.byzantine)
    assert a.byzantine.sum() == 2 and not np.array_equal(a.byzantine, c.byzantine)
    assert np.all(a.byzantine_slots == (a.mask & a.byzantine[a.table]))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"topology": "hexagon"}, "--topology 'hexagon'"),
        ({"topology": "torus:3x3"}, "--topology 'torus:3x3' does not fit --nb-workers 8"),
        (
            {"topology": "ring", "gar": "krum", "nb_decl_byz": 1, "nb_real_byz": 1},
            "--gar krum: honest node .* neighbourhood of 3",
        ),
        ({"topology": "ring", "mixing": "shout"}, "--mixing 'shout' is unknown"),
        ({"topology": "ring", "mixing": "gossip", "mixing_args": {"tau": 1}}, "--mixing-args"),
        ({"topology": "ring", "momentum_at": "server"}, "--topology with --momentum-at server"),
        (
            {"topology": "ring", "nb_real_byz": 1, "attack": "minmax", "attack_args": {}},
            "--attack minmax on a graph",
        ),
        ({"topology": "ring", "nb_local_steps": 2}, "a graph has no server to run rounds"),
        ({"attack": "dissensus", "attack_args": {}, "nb_decl_byz": 1}, "defined on a graph"),
        ({"topology": "ring", "gar": "fltrust", "nb_decl_byz": 0}, "server's own gradient"),
    ],
)
def test_bad_graph_input(changes, match):
    with pytest.raises(ValueError, match=match) as info:
        check_config(small(**changes))
    assert "\n" not in str(info.value)


def test_graphs_are_not_split_over_devices():
    from jaxbyz.sharding import worker_mesh

    with pytest.raises(ValueError, match="--shard-workers with --topology"):
        make_simulation(small(topology="ring"), DATA, mesh=worker_mesh())


@pytest.mark.parametrize(
    "mixing", [pytest.param("gossip", marks=pytest.mark.slow), "clipped-gossip"]
)
def test_chunked_gossip_equals_the_vectorised_form(mixing):
    """One recipient at a time (the CPU's chunks) or all at once: the same step."""
    import dataclasses

    class AllAtOnce(DecentralizedSimulation):
        @property
        def chunk(self) -> int:
            return self.honest

    config = small(
        topology="torus:3x3", nb_workers=9, nb_real_byz=2, attack="dissensus", attack_args={},
        mixing=mixing, nb_steps=3, gar="median", nb_decl_byz=1,
    )  # fmt: skip
    sim = make_simulation(config, DATA)
    assert sim.chunk == 1  # on the CPU
    whole = AllAtOnce(**{f.name: getattr(sim, f.name) for f in dataclasses.fields(sim)})
    a = jax.jit(sim.run)(jax.random.key(0))
    b = jax.jit(whole.run)(jax.random.key(0))
    np.testing.assert_allclose(a["theta"], b["theta"], rtol=1e-5, atol=1e-6)


def test_graph_run_continues_from_its_checkpoint(tmp_path):
    """``python -m jaxbyz.train --topology ...``: eval.csv has the honest nodes' min, mean and
    max beside the average model's accuracy, study.csv the consensus distance; a run saved at
    step 10 and continued gives the uninterrupted run's rows (every node's model and momentum
    come back)."""
    import pandas as pd

    from jaxbyz import train

    line = ["--dataset", "synthetic", "--model", "logreg", "--nb-workers", "6"]
    line += ["--nb-decl-byz", "1", "--nb-real-byz", "1", "--gar", "median", "--attack", "little"]
    line += ["--attack-args", "factor:1.5", "--topology", "ring", "--momentum-at", "update"]
    line += ["--evaluation-delta", "5", "--seed", "3", "--no-progress", "--cache-dir", "none"]
    whole = tmp_path / "whole"
    assert train.main([*line, "--nb-steps", "20", "--checkpoint-delta", "10",
                       "--result-directory", str(whole)]) == 0  # fmt: skip
    rows = pd.read_csv(whole / "eval.csv")
    assert rows["step"].tolist() == [0, 5, 10, 15, 20]
    assert (rows["node_min"] <= rows["node_mean"]).all()
    assert (rows["node_mean"] <= rows["node_max"]).all() and (rows["node_max"] <= 1).all()
    assert pd.read_csv(whole / "study.csv")["consensus_distance"].iloc[-1] > 0
    part = tmp_path / "part"
    assert train.main([*line, "--nb-steps", "5", "--load-checkpoint", str(whole / "checkpoints"),
                       "--result-directory", str(part)]) == 0  # fmt: skip
    study = pd.read_csv(part / "study.csv").set_index("step")
    expected = pd.read_csv(whole / "study.csv").set_index("step").loc[study.index]
    pd.testing.assert_frame_equal(study, expected)
    evaluations = pd.read_csv(part / "eval.csv").set_index("step")
    pd.testing.assert_frame_equal(
        evaluations, pd.read_csv(whole / "eval.csv").set_index("step").loc[evaluations.index]
    )
