"""Communication graphs of decentralized learning: who gossips with whom (NumPy, host side).

In decentralized Byzantine learning there is no server: node ``i`` holds its own model ``x_i``
and, at each step, combines the vectors of its *neighbourhood* ``N_i ∪ {i}`` (itself included)
in a graph ``G = (V, E)``; a Byzantine node sends each of its neighbours a vector of its own
choosing. This module builds the graph from a ``--topology`` specification and the static
tables the jitted step reads (:mod:`jaxbyz.gossip`):

- :func:`parse`: the graph of a specification (``complete``, ``ring``, ``torus:RxC``,
  ``two-cliques``, ``erdos-renyi:P``, ``star``), refused in one line naming ``--topology``, the
  value and the fix when it does not fit the number of nodes or is disconnected;
- :func:`neighbour_table`: ``[n, D+1]`` indices of every neighbourhood (itself first), padded
  to the maximum degree ``D`` so that one gather reads them all, and the mask of real entries;
- :func:`metropolis_hastings` and :func:`table_weights`: the gossip matrix ``W`` of
  Xiao & Boyd (2004), as He, Karimireddy & Jaggi (2022) use it, and its entries in table form;
- :func:`byzantine_nodes`: which nodes are Byzantine, drawn from a seed;
- :func:`degree_groups`: the neighbourhoods grouped by size (a rule needs a static row count);
- :func:`check_neighbourhoods`: every honest neighbourhood admissible for a rule.

Everything here is static: computed once per run on the host, closed over as constants.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "FORMS",
    "Graph",
    "byzantine_nodes",
    "check_neighbourhoods",
    "degree_groups",
    "is_connected",
    "metropolis_hastings",
    "neighbour_table",
    "parse",
    "table_weights",
]

FLAG = "--topology"
FORMS = ("complete", "ring", "star", "two-cliques", "torus:RxC", "erdos-renyi:P")
ER_DRAWS = 100  # connected Erdős–Rényi draws tried: seeds seed, seed + 1, ..., seed + 99
# fewest nodes of each form: a ring needs 3 nodes (2 would double its one edge), a star a hub
# and two leaves, two cliques two nodes each
MIN_NODES = {"complete": 2, "ring": 3, "star": 3, "two-cliques": 4, "torus": 2, "erdos-renyi": 2}


@dataclasses.dataclass(frozen=True, eq=False)
class Graph:
    """An undirected simple graph on nodes ``0..n-1``.

    Attributes:
      spec: the ``--topology`` specification it was built from (``"torus:4x4"``).
      adjacency: ``[n, n]`` bool, symmetric, no self loops: ``adjacency[i, j]`` iff ``{i, j}``
        is an edge.
    """

    spec: str
    adjacency: np.ndarray

    def __post_init__(self) -> None:
        A = np.asarray(self.adjacency)
        if A.ndim != 2 or A.shape[0] != A.shape[1] or A.shape[0] < 1 or A.dtype != np.bool_:
            raise ValueError(
                f"Graph {self.spec!r}: adjacency must be a square [n, n] bool matrix, got "
                f"shape {A.shape} and dtype {A.dtype}"
            )
        if not np.array_equal(A, A.T) or A.diagonal().any():
            raise ValueError(f"Graph {self.spec!r}: adjacency must be symmetric with no self loops")

    @property
    def n(self) -> int:
        """The number of nodes."""
        return int(self.adjacency.shape[0])

    @property
    def degrees(self) -> np.ndarray:
        """``[n]`` int: the number of neighbours of each node (itself not counted)."""
        return self.adjacency.sum(axis=1).astype(np.int64)


# ---------------------------------------------------------------------------------------------- #
# Building the graph of a specification


def _refuse(spec: Any, why: str, fix: str) -> ValueError:
    return ValueError(f"{FLAG} {spec!r} {why}; fix: {fix}")


def _from_edges(n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The ``[n, n]`` adjacency with the edges ``{rows[e], cols[e]}``: self pairs dropped and
    repeated pairs merged (a set of edges, never a multigraph)."""
    A = np.zeros((n, n), np.bool_)
    A[rows, cols] = True
    A[cols, rows] = True
    np.fill_diagonal(A, False)
    return A


def _complete(n: int) -> np.ndarray:
    return ~np.eye(n, dtype=np.bool_)


def _ring(n: int) -> np.ndarray:
    i = np.arange(n)
    return _from_edges(n, i, (i + 1) % n)


def _star(n: int) -> np.ndarray:
    leaves = np.arange(1, n)
    return _from_edges(n, np.zeros_like(leaves), leaves)


def _two_cliques(n: int) -> np.ndarray:
    """Cliques ``A = {0..a-1}`` (``a = ceil(n/2)``) and ``B = {a..n-1}`` joined by the one edge
    ``{0, n-1}``: the first node of ``A`` to the last node of ``B``, as ``TwoCliques(q, 0)`` and
    ``Dumbbell`` in He, Karimireddy & Jaggi's ``codes/graph_utils.py`` (their bridge ``(0,
    2q-1)``; they take equal cliques, here an odd ``n`` gives ``A`` one node more)."""
    a = -(-n // 2)
    side = np.arange(n) < a
    A = side[:, None] == side[None, :]
    np.fill_diagonal(A, False)
    A[0, n - 1] = A[n - 1, 0] = True
    return A


def _torus(rows: int, cols: int) -> np.ndarray:
    """The ``rows x cols`` torus grid: node ``r * cols + c`` linked to ``(r, c ± 1 mod cols)``
    and ``(r ± 1 mod rows, c)`` (the numbering of ``TorusGraph`` in He et al.'s code). A side of
    2 gives one edge, not two, to the single node both ways; a side of 1 gives none (a ``1 x C``
    torus is a ring of ``C``)."""
    r, c = np.divmod(np.arange(rows * cols), cols)
    right = r * cols + (c + 1) % cols
    down = ((r + 1) % rows) * cols + c
    node = np.arange(rows * cols)
    return _from_edges(rows * cols, np.concatenate([node, node]), np.concatenate([right, down]))


def _square_factors(n: int) -> tuple[int, int]:
    """``R x C = n`` with ``R <= C`` closest to a square (``1 x n`` for a prime)."""
    rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
    return rows, n // rows


def _entropy(seed: int) -> int:
    """A seed as the non-negative integer NumPy's ``default_rng`` takes (itself when >= 0)."""
    return int(seed) % 2**64


def is_connected(adjacency: np.ndarray) -> bool:
    """Whether every node is reached from node 0 (breadth-first, ``O(n^2)``)."""
    n = adjacency.shape[0]
    reached = np.zeros(n, np.bool_)
    reached[0] = True
    frontier = reached.copy()
    while frontier.any():
        frontier = adjacency[frontier].any(axis=0) & ~reached
        reached |= frontier
    return bool(reached.all())


def _erdos_renyi(spec: str, n: int, p: float, seed: int) -> np.ndarray:
    """The first connected draw of ``G(n, p)`` (each of the ``n(n-1)/2`` edges present with
    probability ``p``, the upper triangle of ``default_rng(seed + t).random((n, n)) < p``) for
    ``t = 0, 1, ..., 99``."""
    upper = np.triu(np.ones((n, n), np.bool_), k=1)
    for t in range(ER_DRAWS):
        draw = np.random.default_rng(_entropy(seed + t)).random((n, n)) < p
        A = draw & upper
        A = A | A.T
        if is_connected(A):
            return A
    hint = min(1.0, 1.5 * math.log(n) / n)
    raise _refuse(
        spec,
        f"drew no connected graph on {n} nodes in {ER_DRAWS} draws (seeds {seed} to "
        f"{seed + ER_DRAWS - 1})",
        f"a larger P (connected draws become likely above ln(n)/n; try erdos-renyi:{hint:.2g})",
    )


def _parse_torus(spec: str, argument: str, n: int) -> np.ndarray:
    rows_text, sep, cols_text = argument.lower().partition("x")
    if not (sep and rows_text.isdigit() and cols_text.isdigit()):
        raise _refuse(spec, "is malformed", "write torus:RxC with positive integers R and C")
    rows, cols = int(rows_text), int(cols_text)
    best = "x".join(map(str, _square_factors(n)))
    if rows < 1 or cols < 1 or rows * cols != n:
        raise _refuse(
            spec,
            f"does not fit --nb-workers {n}: R x C must equal the number of nodes",
            f"torus:{best}",
        )
    return _torus(rows, cols)


def _parse_probability(spec: str, argument: str) -> float:
    try:
        p = float(argument)
    except ValueError:
        p = math.nan
    if not (0.0 < p <= 1.0):
        raise _refuse(
            spec,
            "needs an edge probability P in (0, 1]",
            "write erdos-renyi:P with 0 < P <= 1, e.g. erdos-renyi:0.5",
        )
    return p


def parse(spec: str, n: int, seed: int = 0) -> Graph:
    """The graph ``spec`` on ``n`` nodes (``seed`` draws ``erdos-renyi``).

    Forms: ``complete``; ``ring`` (``i ~ i ± 1 mod n``); ``star`` (node 0 is the hub);
    ``two-cliques`` (cliques of ``ceil(n/2)`` and ``floor(n/2)`` nodes joined by the single edge
    ``{0, n-1}``, He, Karimireddy & Jaggi 2022); ``torus:RxC`` (the ``R x C`` grid with
    wrap-around, 4 neighbours each, ``R C = n``); ``erdos-renyi:P`` (each edge present with
    probability ``P`` in ``(0, 1]``; a disconnected draw is redrawn with seeds ``seed + 1``,
    ``seed + 2``, ... up to 100 draws, so the graph is a function of ``(spec, n, seed)``).

    Raises one ValueError naming ``--topology``, the value and the fix: unknown forms (listing
    the valid ones), malformed arguments, too few nodes for the form, a torus that does not
    tile ``n``, no connected Erdős–Rényi draw.
    """
    if not isinstance(spec, str):
        raise _refuse(spec, "is not a string", f"choose one of {', '.join(FORMS)}")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"--nb-workers must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"{FLAG} {spec!r}: the seed must be an integer, got {seed!r}")
    n, seed = int(n), int(seed)
    name, has_argument, argument = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in MIN_NODES:
        raise _refuse(spec, "is unknown", f"choose one of {', '.join(FORMS)}")
    takes_argument = name in ("torus", "erdos-renyi")
    if has_argument != ":" * takes_argument:
        form = next(f for f in FORMS if f.partition(":")[0] == name)
        why = "takes an argument" if takes_argument else "takes no argument"
        raise _refuse(spec, why, f"write {form}")
    if n < MIN_NODES[name]:
        raise _refuse(
            spec,
            f"needs --nb-workers >= {MIN_NODES[name]}, got {n}",
            "more workers, or --topology complete" if n >= 2 else "at least 2 workers",
        )
    if name == "torus":
        A = _parse_torus(spec, argument.strip(), n)
    elif name == "erdos-renyi":
        A = _erdos_renyi(spec, n, _parse_probability(spec, argument.strip()), seed)
    else:
        A = {"complete": _complete, "ring": _ring, "star": _star, "two-cliques": _two_cliques}[
            name
        ](n)
    if not is_connected(A):  # by construction never, checked all the same
        raise _refuse(spec, f"is disconnected on {n} nodes", "a connected topology")
    return Graph(spec=spec, adjacency=A)


# ---------------------------------------------------------------------------------------------- #
# Static tables of the jitted step


def neighbour_table(graph: Graph) -> tuple[np.ndarray, np.ndarray]:
    """The neighbourhood of every node as a padded index table.

    Returns ``(table, mask)``, both ``[n, D+1]`` with ``D`` the maximum degree: row ``i`` of
    ``table`` (int32) is ``[i, j_1 < j_2 < ... < j_deg(i), i, ..., i]`` (itself, its neighbours
    in ascending order, then padding that repeats ``i``); ``mask`` (bool) is True on the
    ``deg(i) + 1`` real entries, the self entry included.
    """
    A = graph.adjacency
    n, degrees = graph.n, graph.degrees
    width = int(degrees.max()) + 1
    table = np.repeat(np.arange(n, dtype=np.int32)[:, None], width, axis=1)
    mask = np.arange(width)[None, :] < (degrees + 1)[:, None]
    rows, cols = np.nonzero(A)  # row-major: each row's neighbours ascending
    slots = 1 + np.arange(rows.size) - np.repeat(np.cumsum(degrees) - degrees, degrees)
    table[rows, slots] = cols
    return table, mask


def metropolis_hastings(graph: Graph) -> np.ndarray:
    """The Metropolis–Hastings gossip matrix ``W`` ``[n, n]`` (float64).

    ``W_ij = 1 / (1 + max(deg_i, deg_j))`` for an edge ``{i, j}``, ``W_ii = 1 - Σ_{j≠i} W_ij``,
    0 elsewhere (Xiao & Boyd 2004; ``metropolis_weight`` in He, Karimireddy & Jaggi's code).
    Symmetric and doubly stochastic, with ``W_ii >= 1 / (1 + deg_i) > 0``.
    """
    degrees = graph.degrees
    W = np.where(graph.adjacency, 1.0 / (1.0 + np.maximum.outer(degrees, degrees)), 0.0)
    np.fill_diagonal(W, 1.0 - W.sum(axis=1))
    return W


def table_weights(W: np.ndarray, table: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``[m, K]`` float32: ``W[i, table[r, k]]`` on the real entries of row ``r``, 0 on padding,
    where ``i = table[r, 0]`` is the row's own node (so a subset of the table's rows, such as
    the honest nodes', reads its own weights)."""
    table = np.asarray(table)
    weights = np.asarray(W)[table[:, :1], table]
    return np.where(mask, weights, 0.0).astype(np.float32)


def byzantine_nodes(n: int, f: int, seed: int) -> np.ndarray:
    """``[n]`` bool: ``f`` distinct nodes drawn uniformly (without replacement) by
    ``default_rng([seed, 0xB42])``; the same for the same ``(n, f, seed)``."""
    for name, value in (("n", n), ("f", f), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"byzantine_nodes: {name} must be an integer, got {value!r}")
    if n < 1 or not 0 <= f <= n:
        raise ValueError(
            f"byzantine_nodes: f={f} Byzantine nodes do not fit n={n} nodes; fix: 0 <= f <= n"
        )
    chosen = np.random.default_rng([_entropy(seed), 0xB42]).choice(int(n), int(f), replace=False)
    byzantine = np.zeros(int(n), np.bool_)
    byzantine[chosen] = True
    return byzantine


def degree_groups(mask: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """The rows of a neighbour ``mask`` ``[m, K]`` grouped by neighbourhood size.

    Returns ``[(k, rows), ...]`` sorted by ``k``: each distinct size ``k`` (real entries, the
    self entry included) with the ascending row indices (int64) of the rows of that size.
    """
    sizes = np.asarray(mask).sum(axis=1)
    return [(int(k), np.nonzero(sizes == k)[0]) for k in np.unique(sizes)]


def check_neighbourhoods(
    graph: Graph,
    byzantine: np.ndarray,
    check: Callable[[int, int], None],
    f_decl: int,
    owner: str,
) -> None:
    """Every honest node's neighbourhood admissible: ``check(k_i, f_decl)`` for each honest
    ``i``, ``k_i = deg_i + 1`` (e.g. ``rule.check``, which raises ValueError).

    A refusal is re-raised in one line naming ``owner``, the first refused node, its
    neighbourhood size, how many of its neighbours are Byzantine, the reason and the fix.
    """
    byzantine = np.asarray(byzantine, np.bool_)
    sizes = graph.degrees + 1
    refused: dict[int, str] = {}
    for k in np.unique(sizes[~byzantine]):
        try:
            check(int(k), f_decl)
        except ValueError as err:
            refused[int(k)] = str(err)
    if not refused:
        return
    node = int(np.nonzero(~byzantine & np.isin(sizes, list(refused)))[0][0])
    k = int(sizes[node])
    bad = int((graph.adjacency[node] & byzantine).sum())
    raise ValueError(
        f"{owner}: honest node {node} has a neighbourhood of {k} (itself and {k - 1} "
        f"neighbours, {bad} of them Byzantine) under {FLAG} {graph.spec!r}, and {refused[k]}; "
        f"fix: fewer declared Byzantine per neighbourhood (--nb-decl-byz {f_decl}) or a denser "
        f"{FLAG}"
    )
