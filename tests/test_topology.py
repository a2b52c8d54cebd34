"""Tests of the communication graphs (jaxbyz.topology) against references written from the
definitions: edge sets built pair by pair, loops over nodes, SciPy's connected components."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.sparse.csgraph import connected_components

from jaxbyz import aggregators, topology
from jaxbyz.topology import Graph


def edge_set(A: np.ndarray) -> set[tuple[int, int]]:
    return {(i, j) for i, j in zip(*np.nonzero(A), strict=True) if i < j}


def connected(A: np.ndarray) -> bool:
    return connected_components(A.astype(np.int8), directed=False)[0] == 1


def assert_simple(graph: Graph) -> None:
    A = graph.adjacency
    assert A.dtype == np.bool_ and A.shape == (graph.n, graph.n)
    assert np.array_equal(A, A.T) and not A.diagonal().any()
    assert connected(A)
    np.testing.assert_array_equal(graph.degrees, [A[i].sum() for i in range(graph.n)])


# ------------------------------------------------------------------------------------------- #
# Forms


@pytest.mark.parametrize("n", [3, 4, 9])
def test_ring(n):
    graph = topology.parse("ring", n)
    assert_simple(graph)
    assert edge_set(graph.adjacency) == {tuple(sorted((i, (i + 1) % n))) for i in range(n)}
    assert (graph.degrees == 2).all() and graph.spec == "ring"


@pytest.mark.parametrize("n", [2, 5])
def test_complete(n):
    graph = topology.parse("complete", n)
    assert_simple(graph)
    assert (graph.degrees == n - 1).all()
    assert len(edge_set(graph.adjacency)) == n * (n - 1) // 2


def test_star():
    graph = topology.parse("star", 6)
    assert_simple(graph)
    assert edge_set(graph.adjacency) == {(0, j) for j in range(1, 6)}
    assert graph.degrees[0] == 5 and (graph.degrees[1:] == 1).all()


def torus_reference(R: int, C: int) -> set[tuple[int, int]]:
    edges = set()
    for r, c in itertools.product(range(R), range(C)):
        for rr, cc in ((r, (c + 1) % C), (r, (c - 1) % C), ((r + 1) % R, c), ((r - 1) % R, c)):
            a, b = r * C + c, rr * C + cc
            if a != b:
                edges.add((min(a, b), max(a, b)))
    return edges


@pytest.mark.parametrize(
    ("R", "C", "degree"), [(4, 4, 4), (3, 5, 4), (2, 3, 3), (2, 2, 2), (1, 5, 2), (3, 1, 2)]
)
def test_torus(R, C, degree):
    graph = topology.parse(f"torus:{R}x{C}", R * C)
    assert_simple(graph)
    assert edge_set(graph.adjacency) == torus_reference(R, C)
    assert (graph.degrees == degree).all()
    if (R, C) == (4, 4):
        assert len(edge_set(graph.adjacency)) == 32


@pytest.mark.parametrize("n", [4, 7, 8])
def test_two_cliques(n):
    graph = topology.parse("two-cliques", n)
    assert_simple(graph)
    a = (n + 1) // 2
    first, second = range(a), range(a, n)
    expected = {(i, j) for i, j in itertools.combinations(first, 2)}
    expected |= {(i, j) for i, j in itertools.combinations(second, 2)}
    expected.add((0, n - 1))  # the bridge of He et al.'s TwoCliques(q, 0): (0, 2q - 1)
    assert edge_set(graph.adjacency) == expected
    degrees = [a - 1] * a + [n - a - 1] * (n - a)
    degrees[0] += 1
    degrees[-1] += 1
    np.testing.assert_array_equal(graph.degrees, degrees)


def er_reference(n: int, p: float, seed: int) -> np.ndarray:
    for t in range(100):
        draw = np.random.default_rng(seed + t).random((n, n)) < p
        A = np.zeros((n, n), np.bool_)
        for i in range(n):
            for j in range(i + 1, n):
                A[i, j] = A[j, i] = draw[i, j]
        if connected(A):
            return A
    raise AssertionError("no connected draw")


def test_erdos_renyi_reproducible_and_seeded():
    a = topology.parse("erdos-renyi:0.5", 12, seed=3)
    b = topology.parse("erdos-renyi:0.5", 12, seed=3)
    c = topology.parse("erdos-renyi:0.5", 12, seed=4)
    assert_simple(a)
    assert np.array_equal(a.adjacency, b.adjacency)
    assert not np.array_equal(a.adjacency, c.adjacency)
    assert np.array_equal(a.adjacency, er_reference(12, 0.5, 3))
    assert (topology.parse("erdos-renyi:1", 6).degrees == 5).all()


def test_erdos_renyi_redraws_disconnected():
    n, p = 12, 0.2
    seed = next(s for s in range(200) if not connected(er_reference_first(n, p, s)))
    graph = topology.parse(f"erdos-renyi:{p}", n, seed=seed)
    assert_simple(graph)
    assert np.array_equal(graph.adjacency, er_reference(n, p, seed))


def er_reference_first(n: int, p: float, seed: int) -> np.ndarray:
    A = np.triu(np.random.default_rng(seed).random((n, n)) < p, k=1)
    return A | A.T


# ------------------------------------------------------------------------------------------- #
# Refusals: one line naming --topology, the value and the fix


@pytest.mark.parametrize(
    ("spec", "n", "pattern"),
    [
        ("torus:3x5", 16, r"--topology 'torus:3x5' does not fit --nb-workers 16: .*fix: torus:4x4"),
        ("torus:3x3", 12, r"--topology 'torus:3x3' .* fix: torus:3x4"),
        ("torus:0x5", 5, r"--topology 'torus:0x5' .*fix: torus:1x5"),
        ("torus:4by4", 16, r"--topology 'torus:4by4' is malformed; fix: write torus:RxC"),
        ("torus", 16, r"--topology 'torus' takes an argument; fix: write torus:RxC"),
        ("hypercube", 8, r"--topology 'hypercube' is unknown; fix: choose one of complete, ring"),
        ("ring:4", 8, r"--topology 'ring:4' takes no argument; fix: write ring"),
        ("ring", 2, r"--topology 'ring' needs --nb-workers >= 3, got 2; fix: "),
        ("star", 2, r"--topology 'star' needs --nb-workers >= 3"),
        ("two-cliques", 3, r"--topology 'two-cliques' needs --nb-workers >= 4"),
        ("complete", 1, r"--topology 'complete' needs --nb-workers >= 2, got 1"),
        ("erdos-renyi:0", 8, r"--topology 'erdos-renyi:0' needs an edge probability P in \(0, 1\]"),
        ("erdos-renyi:1.5", 8, r"--topology 'erdos-renyi:1.5' needs an edge probability"),
        ("erdos-renyi:x", 8, r"--topology 'erdos-renyi:x' needs an edge probability .*fix: "),
        ("erdos-renyi:0.01", 20, r"--topology 'erdos-renyi:0.01' drew no connected graph .*fix: "),
        (3, 8, r"--topology 3 is not a string; fix: choose one of"),
    ],
)
def test_bad_specs(spec, n, pattern):
    with pytest.raises(ValueError, match=pattern) as info:
        topology.parse(spec, n)
    assert "\n" not in str(info.value)


def test_bad_counts():
    with pytest.raises(ValueError, match="--nb-workers must be a positive integer, got 0"):
        topology.parse("ring", 0)
    with pytest.raises(ValueError, match="adjacency must be symmetric"):
        Graph("x", np.triu(np.ones((3, 3), np.bool_), k=1))
    with pytest.raises(ValueError, match="f=5 Byzantine nodes do not fit n=4"):
        topology.byzantine_nodes(4, 5, 0)


# ------------------------------------------------------------------------------------------- #
# Tables and weights


GRAPHS = [("ring", 7), ("star", 6), ("two-cliques", 7), ("torus:3x4", 12), ("erdos-renyi:0.4", 10)]


@pytest.mark.parametrize(("spec", "n"), GRAPHS)
def test_metropolis_hastings(spec, n):
    graph = topology.parse(spec, n, seed=1)
    W = topology.metropolis_hastings(graph)
    deg = [int(graph.adjacency[i].sum()) for i in range(n)]
    ref = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if graph.adjacency[i, j]:
                ref[i, j] = 1.0 / (1 + max(deg[i], deg[j]))
        ref[i, i] = 1.0 - sum(ref[i, j] for j in range(n) if j != i)
    np.testing.assert_allclose(W, ref, rtol=0, atol=1e-15)
    assert W.dtype == np.float64 and np.array_equal(W, W.T)
    np.testing.assert_allclose(W.sum(0), 1.0, atol=1e-12)
    np.testing.assert_allclose(W.sum(1), 1.0, atol=1e-12)
    assert (W >= 0).all() and (W.diagonal() > 0).all()


@pytest.mark.parametrize(("spec", "n"), GRAPHS)
def test_neighbour_table_and_weights(spec, n):
    graph = topology.parse(spec, n, seed=1)
    table, mask = topology.neighbour_table(graph)
    D = max(int(graph.adjacency[i].sum()) for i in range(n))
    assert table.shape == mask.shape == (n, D + 1)
    assert table.dtype == np.int32 and mask.dtype == np.bool_
    for i in range(n):
        neighbours = [j for j in range(n) if graph.adjacency[i, j]]
        row = [i, *neighbours] + [i] * (D - len(neighbours))
        assert table[i].tolist() == row
        assert mask[i].tolist() == [True] * (len(neighbours) + 1) + [False] * (D - len(neighbours))
    W = topology.metropolis_hastings(graph)
    weights = topology.table_weights(W, table, mask)
    assert weights.dtype == np.float32
    for i in range(n):
        for k in range(D + 1):
            expected = W[i, table[i, k]] if mask[i, k] else 0.0
            assert weights[i, k] == np.float32(expected)
    np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-6)
    rows = np.array([1, 3])  # a subset of recipients reads its own nodes' weights
    np.testing.assert_array_equal(topology.table_weights(W, table[rows], mask[rows]), weights[rows])


def test_degree_groups():
    graph = topology.parse("star", 5)
    _, mask = topology.neighbour_table(graph)
    groups = topology.degree_groups(mask)
    assert [k for k, _ in groups] == [2, 5]
    np.testing.assert_array_equal(groups[0][1], [1, 2, 3, 4])
    np.testing.assert_array_equal(groups[1][1], [0])
    graph = topology.parse("erdos-renyi:0.4", 10, seed=1)
    _, mask = topology.neighbour_table(graph)
    groups = topology.degree_groups(mask)
    sizes = graph.degrees + 1
    assert [k for k, _ in groups] == sorted(set(sizes.tolist()))
    for k, rows in groups:
        np.testing.assert_array_equal(rows, [i for i in range(10) if sizes[i] == k])


def test_byzantine_nodes():
    a = topology.byzantine_nodes(20, 6, seed=7)
    assert a.dtype == np.bool_ and a.shape == (20,) and a.sum() == 6
    assert np.array_equal(a, topology.byzantine_nodes(20, 6, seed=7))
    assert not np.array_equal(a, topology.byzantine_nodes(20, 6, seed=8))
    expected = np.random.default_rng([7, 0xB42]).choice(20, 6, replace=False)
    assert set(np.nonzero(a)[0].tolist()) == set(expected.tolist())
    assert topology.byzantine_nodes(5, 0, 1).sum() == 0


def test_check_neighbourhoods():
    graph = topology.parse("star", 8)
    krum = aggregators.get("krum")  # needs k >= 2f + 3
    byzantine = np.zeros(8, np.bool_)
    byzantine[[0, 1]] = True  # the hub is Byzantine: node 2 is the first honest leaf
    with pytest.raises(ValueError) as info:
        topology.check_neighbourhoods(graph, byzantine, krum.check, 1, "--gar krum")
    message = str(info.value)
    assert message.startswith("--gar krum: honest node 2 has a neighbourhood of 2 ")
    assert "1 of them Byzantine" in message and "krum needs n >= 2f+3" in message
    assert "--topology 'star'" in message and "fix: fewer declared Byzantine" in message
    assert "\n" not in message
    # a Byzantine leaf's neighbourhood is not checked; a denser graph passes
    complete = topology.parse("complete", 8)
    topology.check_neighbourhoods(complete, byzantine, krum.check, 1, "--gar krum")
    median = aggregators.get("median")
    topology.check_neighbourhoods(graph, byzantine, median.check, 1, "--gar median")
