"""Decentralized learning on a graph (``--topology``): no server, one model per honest node.

The ``n`` workers are the nodes of a graph (:mod:`jaxbyz.topology`); ``f`` of them, drawn from
the run's seed, are Byzantine. Honest node ``i`` holds its own model ``x_i`` (the models are a
``[m, d]`` array, one row per honest node, all starting from the same ``θ_0``). A step with
learning rate ``γ_t``:

1. **local update**: ``g_i = clip(∇ℓ(x_i; batch_i))``, ``d_i = W(g_i)`` with ``W`` the worker
   stage of the momentum placement (worker momentum for ``worker``; the identity for
   ``update``), then the half step ``x_i^+ = x_i - γ_t d_i``;
2. **communication**: node ``i`` reads the half-step models of its neighbourhood
   ``N_i ∪ {i}``; each Byzantine neighbour sends ``i`` a vector of its own: ``little``/``empire``
   computed on ``i``'s honest neighbours (``mu_i + a sigma_i + b mu_i``), or ``dissensus``
   (He, Karimireddy & Jaggi 2022). Node ``i`` combines them into ``c_i`` (``--mixing``): plain
   gossip ``Σ_k W_ik x_k`` with Metropolis-Hastings weights, ClippedGossip
   ``x_i + Σ_k W_ik CLIP(x_k - x_i, τ_i)`` (``--mixing-args tau:T``, else the adaptive radius),
   or the robust rule ``--gar`` on the neighbourhood told ``--nb-decl-byz`` Byzantine rows
   (:func:`jaxbyz.gossip.apply_rule`, vectorised over nodes);
3. **node's own server stage**: with worker momentum and SGD, ``x_i ← c_i`` (He et al.'s
   algorithm); otherwise the combined change in gradient units ``u_i = (x_i - c_i) / γ_t`` goes
   through the node's server stage (momentum for ``update``, weight decay, the optimiser):
   ``x_i ← x_i - γ_t m_i`` for ``update`` with SGD. On the complete graph with plain averaging
   every node holds the same model, and both placements are the synchronous algorithms with
   the average rule.

Metrics: the accuracy of the honest nodes' average model ``x̄`` (``evaluate``), the min, mean
and max accuracy over the honest nodes (``evaluate_nodes``), and at every step the consensus
distance ``mean_i ||x_i - x̄||²`` (study metric ``consensus_distance``).

Not on graphs: federated rounds, Nesterov, the ``server`` placement (it mixes a previous
aggregate no node has), rules reading a server's gradient, attacks other than ``little``,
``empire`` (fixed factors) and ``dissensus``, data poisoning; each is refused in one line by
:func:`check_decentralized`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbyz import gossip, topology
from jaxbyz import metrics as metrics_lib
from jaxbyz.config import Config, HyperParams
from jaxbyz.rows import row_mean
from jaxbyz.simulator import Data, Simulation, State, moment_row
from jaxbyz.structure import attack_moments

Array = jax.Array
MIXINGS = ("rule", "gossip", "clipped-gossip")
GRAPH_ATTACKS = ("little", "empire", "dissensus")


@dataclasses.dataclass(frozen=True)
class Network:
    """The static tables of a run's graph, rows restricted to the honest nodes (recipients)."""

    graph: topology.Graph
    byzantine: np.ndarray  # [n] bool
    nodes: np.ndarray  # [m] the honest nodes, ascending (row r of the models is node nodes[r])
    table: np.ndarray  # [m, K] neighbourhood of each honest node, itself first, padded
    mask: np.ndarray  # [m, K] real slots
    weights: np.ndarray  # [m, K] Metropolis-Hastings gossip weights (0 on padding)
    uniform: np.ndarray  # [m, K] 1 / |N_i ∪ {i}| on real slots (what a rule weighs)
    honest_slots: np.ndarray  # [m, K] real slots of honest nodes
    byzantine_slots: np.ndarray  # [m, K] real slots of Byzantine nodes
    row_of: np.ndarray  # [n] the model row of each node (Byzantine nodes: 0, never read)


def build_network(config: Config) -> Network:
    """The graph of ``--topology``, its Byzantine nodes (``f`` drawn from ``--seed``) and the
    neighbour tables of the honest nodes."""
    graph = topology.parse(config.topology, config.nb_workers, config.seed)
    byzantine = topology.byzantine_nodes(config.nb_workers, config.f_real, config.seed)
    table, mask = topology.neighbour_table(graph)
    nodes = np.flatnonzero(~byzantine)
    table, mask = table[nodes], mask[nodes]
    weights = topology.table_weights(topology.metropolis_hastings(graph), table, mask)
    uniform = (mask / mask.sum(axis=1, keepdims=True)).astype(np.float32)
    row_of = np.zeros(config.nb_workers, np.int32)
    row_of[nodes] = np.arange(len(nodes))
    return Network(
        graph=graph,
        byzantine=byzantine,
        nodes=nodes,
        table=table,
        mask=mask,
        weights=weights,
        uniform=uniform,
        honest_slots=mask & ~byzantine[table],
        byzantine_slots=mask & byzantine[table],
        row_of=row_of,
    )


class DecentralizedSimulation(Simulation):
    """A :class:`jaxbyz.simulator.Simulation` on a graph (module doc): ``state.theta`` is
    ``[m, d]``, one model per honest node."""

    several_models = True

    @functools.cached_property
    def network(self) -> Network:
        return build_network(self.config)

    @property
    def study_extra(self) -> int:
        return 0  # the study reads the honest nodes' own gradients

    @property
    def direct(self) -> bool:
        """Whether a node's new model is its combination ``c_i`` itself (worker momentum, SGD
        at the server's learning rate, no weight decay: He et al.'s algorithm)."""
        c = self.config
        return (
            c.momentum_at == "worker"
            and c.server_optimizer == "sgd"
            and not c.server_optimizer_args
            and c.server_learning_rate == 1.0
            and not c.weight_decay
        )

    # ------------------------------------------------------------------------------------------ #

    def init(self, key: Array) -> State:
        """Every honest node starts from the same ``θ_0``; each keeps its own server stage."""
        state = super().init(key)
        m = self.honest
        per_node = jax.tree.map(
            lambda leaf: jnp.broadcast_to(leaf, (m, *jnp.shape(leaf))), state.server_state
        )
        return state.replace(
            theta=jnp.broadcast_to(state.theta, (m, self.dim)), server_state=per_node
        )

    def step(self, state: State, hp: HyperParams, data: Data) -> tuple[State, dict[str, Array]]:
        """One local update and one communication round of every honest node (module doc)."""
        key, k_grad, k_rule = jax.random.split(state.key, 3)
        stages = self.stages(hp)
        lr = stages.schedule(state.step)
        grads, losses_, updates = self._gradients(state, state.theta, k_grad, hp, data)
        grads, _ = stages.clip.update(grads, stages.clip.init(state.theta[0]))
        previous = {"previous_aggregate": state.aggregator_state.previous}
        directions, worker_state = stages.composition.worker.update(
            grads, state.worker_state, None, **previous
        )
        half = state.theta - lr * directions
        combined, attack_rows = self._communicate(half, hp, k_rule)
        theta, server_state, change = self._node_update(state, stages, combined, lr)
        study, past = metrics_lib.study(
            sampled=grads,
            honest=directions,
            byzantine=attack_rows,
            aggregate=row_mean(change),
            accepted=None,
            loss=row_mean(losses_[:, None])[0],
            l2_from_origin=jnp.linalg.norm(row_mean(state.theta) - state.theta0),
            learning_rate=lr,
            past=state.past,
            step=state.step,
            momentum=hp.momentum,
            byzantine_participants=self.byzantine,
            consensus_distance=consensus_distance(theta),
        )
        new_state = state.replace(
            theta=theta,
            model_state={**state.model_state, **updates},
            worker_state=worker_state,
            server_state=server_state,
            past=past,
            step=state.step + 1,
            key=key,
        )
        return new_state, study

    def _communicate(self, half: Array, hp: HyperParams, key: Array) -> tuple[Array, Array]:
        """Each honest node's combination of its neighbourhood ``[m, d]``, and the rows its
        Byzantine neighbours sent it (``[m, d]``; ``[0, d]`` without Byzantine nodes).

        Gossip and ClippedGossip read the neighbourhoods in chunks of :meth:`chunk` recipients
        (``lax.map``): on a CPU one recipient at a time keeps its ``[K, d]`` rows in cache
        instead of writing the whole ``[m, K, d]`` tensor (a 1,024-node torus: 1.6 GB), 5 to
        10 times faster; elsewhere one chunk, the plain vectorised form. The rule path
        gathers every neighbourhood (the rule reads them grouped by size, one key each): a
        coordinate-wise rule over all neighbourhoods at once is faster than one at a time
        (median on the 1,024-node torus: 2.6 s per step against 3.5 s chunked)."""
        net, c = self.network, self.config
        if c.mixing == "rule":
            received, attack_rows = self._received(half, hp, jnp.arange(self.honest))
            rule_key = key if self.rule.needs_key else None
            combined = gossip.apply_rule(
                self.rule, received, net.mask, c.nb_decl_byz, rule_key, prev=half
            )
            return combined, attack_rows

        def combine(rows: Array) -> tuple[Array, Array]:
            received, attack_rows = self._received(half, hp, rows)
            weights, own = jnp.asarray(net.weights)[rows], half[rows]
            if c.mixing == "gossip":
                return gossip.mix(received, weights), attack_rows
            tau = self._tau(received, own, rows)
            return gossip.clipped_gossip(received, weights, own, tau), attack_rows

        size = self.chunk
        chunks = jnp.arange(self.honest).reshape(-1, size)
        combined, attack_rows = jax.lax.map(combine, chunks)
        return combined.reshape(self.honest, -1), attack_rows.reshape(-1, self.dim)

    @property
    def chunk(self) -> int:
        """Recipients per chunk of the gossip step: 1 on a CPU, all of them elsewhere."""
        return 1 if jax.default_backend() == "cpu" else self.honest

    def _received(self, half: Array, hp: HyperParams, rows: Array) -> tuple[Array, Array]:
        """What the recipients ``rows`` receive ``[r, K, d]``, Byzantine slots included, and the
        row their Byzantine neighbours send each of them ``[r, d]`` (``[0, d]`` without)."""
        net = self.network
        received = gossip.gather(half, jnp.asarray(net.row_of[net.table])[rows])
        if not self.byzantine:
            return received, half[:0]
        attack_rows = self._attack(received, half[rows], hp, rows)
        byzantine = jnp.asarray(net.byzantine_slots)[rows][..., None]
        return jnp.where(byzantine, attack_rows[:, None, :], received), attack_rows

    def _attack(self, received: Array, own: Array, hp: HyperParams, rows: Array) -> Array:
        """What the Byzantine neighbours of the recipients ``rows`` send each ``[r, d]``."""
        net = self.network
        honest = jnp.asarray(net.honest_slots)[rows]
        if self.attack.name == "dissensus":
            weights = net.uniform if self.config.mixing == "rule" else net.weights
            epsilon = hp.attack.get("epsilon", self.attack.params["epsilon"])
            byzantine = jnp.asarray(net.byzantine_slots)[rows]
            return gossip.dissensus(
                received, jnp.asarray(weights)[rows], own, honest, byzantine, epsilon
            )
        mu, sigma = gossip.neighbourhood_moments(received, honest)
        a, b = self._moment_coefficients(hp)
        return moment_row(mu, sigma, a, b)

    def _tau(self, received: Array, own: Array, rows: Array) -> Array:
        """ClippedGossip's radius: ``--mixing-args tau:T``, else the adaptive one."""
        net = self.network
        if "tau" in self.config.mixing_args:
            return jnp.asarray(self.config.mixing_args["tau"], own.dtype)
        byzantine_weight = np.sum(np.where(net.byzantine_slots, net.weights, 0.0), axis=1)
        weights, mask = jnp.asarray(net.weights)[rows], jnp.asarray(net.mask)[rows]
        return gossip.adaptive_tau(
            received, weights, own, mask, jnp.asarray(byzantine_weight)[rows]
        )

    def _node_update(
        self, state: State, stages: Any, combined: Array, lr: Array
    ) -> tuple[Array, Any, Array]:
        """The new models, server states, and the combined change ``u_i = (x_i - c_i) / γ_t``."""
        safe = jnp.where(lr > 0, lr, 1.0)
        change = jnp.where(lr > 0, (state.theta - combined) / safe, 0.0)
        if self.direct:
            return combined, state.server_state, change
        server = stages.composition.server
        update, server_state = jax.vmap(server.update)(change, state.server_state, state.theta)
        return optax.apply_updates(state.theta, update), server_state, change

    # ------------------------------------------------------------------------------------------ #

    def evaluate(self, state: State, data: Data) -> Array:
        """The accuracy of the honest nodes' average model ``x̄``."""
        return super().evaluate(state.replace(theta=row_mean(state.theta)), data)

    def evaluate_nodes(self, state: State, data: Data) -> Array:
        """``[3]``: the min, mean and max accuracy over the honest nodes' own models."""
        accuracies = jax.lax.map(
            lambda theta: Simulation.evaluate(self, state.replace(theta=theta), data), state.theta
        )
        return jnp.stack([accuracies.min(), accuracies.mean(), accuracies.max()])


def consensus_distance(theta: Array) -> Array:
    """``mean_i ||x_i - x̄||²`` over the rows of ``theta`` ``[m, d]``."""
    deviation = theta - row_mean(theta)
    return jnp.mean(jnp.sum(deviation * deviation, axis=1))


def check_decentralized(config: Config, rule: Any, attack: Any) -> None:
    """Refuse, in one line, what a graph run cannot do (module doc); check every honest
    neighbourhood against the rule."""
    c = config
    network = build_network(c)  # parses --topology: one line naming it on failure
    if c.mixing not in MIXINGS:
        raise ValueError(f"--mixing {c.mixing!r} is unknown; choose one of {', '.join(MIXINGS)}")
    unknown = set(c.mixing_args) - ({"tau"} if c.mixing == "clipped-gossip" else set())
    if unknown:
        raise ValueError(
            f"--mixing-args {sorted(unknown)} not taken by --mixing {c.mixing}; clipped-gossip "
            "takes tau:RADIUS (> 0), the others nothing"
        )
    tau = c.mixing_args.get("tau", 1.0)
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau > 0:
        raise ValueError(f"--mixing-args tau:{tau!r} must be a number > 0 (the clipping radius)")
    if c.momentum_at == "server" or c.momentum_nesterov:
        raise ValueError(
            f"--topology with --momentum-at {c.momentum_at}"
            f"{' --momentum-nesterov' if c.momentum_nesterov else ''}: a graph has no server "
            "aggregate to mix or look ahead along; fix: --momentum-at worker or update, no "
            "Nesterov"
        )
    if not 0 <= c.f_real < c.nb_workers:
        raise ValueError(
            f"--nb-real-byz {c.f_real} Byzantine nodes of {c.nb_workers}: leave at least one "
            "honest node"
        )
    if c.f_real and not (
        attack.name == "dissensus" or attack_moments(attack.name, attack.params) is not None
    ):
        raise ValueError(
            f"--attack {c.attack} on a graph: each Byzantine node sends each neighbour its own "
            "vector, defined here for little and empire with a fixed factor (e.g. "
            "--attack-args factor:1.5) and dissensus; fix: one of those"
        )
    if c.mixing == "rule":
        if rule.needs_reference:
            raise ValueError(
                f"--gar {c.gar} weighs the inputs by a server's own gradient, and a graph has no "
                "server; fix: another rule or --mixing gossip"
            )
        topology.check_neighbourhoods(
            network.graph, network.byzantine, rule.check, c.nb_decl_byz, f"--gar {c.gar}"
        )
