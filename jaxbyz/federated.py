"""Federated rounds: local steps (``--nb-local-steps K``) and partial participation
(``--clients-per-round M``), as one vectorised program.

A round ``t`` with learning rate ``γ_t`` (the run's schedule, one step per round):

1. ``M`` of the ``n`` clients take part: all of them, or ``M`` drawn uniformly without
   replacement from the run's key. Byzantine identities are fixed for the run (the last ``f``
   clients), so the number of Byzantine clients among the sampled varies from round to round.
2. Each participating client starts from the server's model ``θ`` and takes ``K`` steps of its
   local optimiser on its own data: ``d_k = W(clip(∇ℓ(θ_k; batch_k)))``,
   ``θ_{k+1} = θ_k - γ_t d_k``, where ``W`` is the worker-side optax stage of the momentum placement
   (:func:`jaxbyz.momentum.compose`: worker momentum for ``worker``, the identity for ``update``,
   the previous aggregate mixed in for ``server``). Its state (the worker momentum) is kept
   across rounds (``--local-state keep``) or restarted each round (``reset``); a client that does
   not take part keeps its state untouched: states are gathered for the sampled clients and
   scattered back, never recomputed.
3. Each client sends its model change in gradient units ``u_i = Σ_k d_k = (θ - θ_K^i) / γ_t``;
   Byzantine clients send the attack's vectors computed from the honest ones.
4. The server aggregates ``a_t = F(u_1..u_M)`` with the rule (told ``--nb-decl-byz`` Byzantine
   rows, or with partial participation ``--round-decl-byz``, by default the worst case
   ``min(--nb-decl-byz, M)``) and applies its optax stage (server momentum for ``update``, weight
   decay, the server optimiser at ``--server-learning-rate`` x ``γ_t``):
   ``θ ← θ - η γ_t a_t`` for SGD. With the average, ``η = 1`` and SGD this is FedAvg
   (McMahan et al. 2017): ``θ ← mean_i θ_K^i``; another server optimiser is FedOpt (Reddi et al.,
   ICLR 2021).

``K = 1`` with full participation is exactly :class:`jaxbyz.simulator.Simulation`'s step (the
first local step is that step's computation). The paper's code has the ``--nb-local-steps`` flag
but refuses values above 1.

With partial participation the honest rows of a round vary in number while the program's
shapes are static: every sampled client computes its rows (a Byzantine client computes what it
would honestly send), and the attack reads the honest ones through a mask. Only attacks defined
by masked statistics are allowed there: the moment family ``mu + a sigma + b mu`` (``little``,
``empire`` with a fixed factor) on the sampled honest rows, and data poisoning (the Byzantine
clients' local steps run on poisoned batches). The study's statistics are then taken over the
``M`` sampled clients' own (honest-computed) rows, and ``byzantine_participants`` records the
Byzantine clients of each round.
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

from jaxbyz import data as data_lib
from jaxbyz import metrics as metrics_lib
from jaxbyz import transforms
from jaxbyz.attacks.statistics import masked_mean_std
from jaxbyz.config import HyperParams
from jaxbyz.rows import row_mean
from jaxbyz.simulator import Data, Simulation, Stages, State, Submissions, moment_row

Array = jax.Array


class FederatedSimulation(Simulation):
    """A :class:`jaxbyz.simulator.Simulation` whose step is a federated round (module doc)."""

    @property
    def local_steps(self) -> int:
        return self.config.nb_local_steps

    @property
    def partial(self) -> bool:
        """Whether only some of the clients take part in each round."""
        return self.config.participants < self.config.nb_workers

    @property
    def worker_rows(self) -> int:
        """Rows of the workers' stage in a round: the honest workers, or the ``M`` sampled."""
        return self.config.participants if self.partial else self.honest

    # ------------------------------------------------------------------------------------------ #
    # State

    def init(self, key: Array) -> State:
        """As the synchronous simulation's; with partial participation every one of the ``n``
        clients has its own worker-stage state (leaves ``[n, ...]``)."""
        state = super().init(key)
        if not self.partial:
            return state
        n = self.config.nb_workers
        clients = jax.tree.map(
            lambda leaf: jnp.broadcast_to(leaf[0], (n, *leaf.shape[1:])), state.worker_state
        )
        return state.replace(worker_state=clients)

    def _start_state(self, stage: Any, theta: Array, rows: int, current: Any) -> Any:
        """The state of a per-worker ``stage`` a round starts from for ``rows`` workers: kept, or
        fresh (``--local-state reset``)."""
        if self.config.local_state == "keep" or rows == 0:
            return current
        fresh = stage.init(theta)
        return jax.tree.map(lambda leaf: jnp.broadcast_to(leaf[0], (rows, *leaf.shape[1:])), fresh)

    # ------------------------------------------------------------------------------------------ #
    # Full participation

    def step(self, state: State, hp: HyperParams, data: Data) -> tuple[State, dict[str, Array]]:
        """One federated round; returns the new state and the study metrics."""
        if self.partial:
            return self._partial_round(state, hp, data)
        return super().step(state, hp, data)

    def _submissions(
        self, state: State, stages: Stages, hp: HyperParams, data: Data, key: Array
    ) -> Submissions:
        """The first local step is the synchronous step's computation (so ``K = 1`` is that step
        exactly); the other ``K - 1`` run as a ``lax.scan`` from each row's own model."""
        h, poisoners = self.honest, self.grad_workers - self.sampled
        state = state.replace(
            worker_state=self._start_state(
                stages.composition.worker, state.theta, h, state.worker_state
            ),
            poisoner_state=self._start_state(
                stages.poisoner, state.theta, poisoners, state.poisoner_state
            ),
        )
        first = super()._submissions(state, stages, hp, data, key)
        if self.local_steps == 1:
            return first
        lr = stages.schedule(state.step)
        previous = {"previous_aggregate": state.aggregator_state.previous}
        extra = jnp.zeros((self.study_extra, self.dim), state.theta.dtype)
        total = jnp.concatenate([first.honest, extra, first.poisoned])
        points = state.theta - lr * total  # the study-only rows stay at θ

        def local(carry, local_key):
            points, total, worker_state, poisoner_state = carry
            grads, _, _ = self._gradients(state, points, local_key, hp, data)
            grads, _ = stages.clip.update(grads, stages.clip.init(state.theta))
            grads = self.layout.rows(grads)
            sent, worker_state = stages.composition.worker.update(
                grads[:h], worker_state, state.theta, **previous
            )
            poisoned, poisoner_state = stages.poisoner.update(
                grads[self.sampled :], poisoner_state, state.theta, **previous
            )
            direction = jnp.concatenate([sent, extra, poisoned])
            return (points - lr * direction, total + direction, worker_state, poisoner_state), None

        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(1, self.local_steps))
        carry = (points, total, first.worker_state, first.poisoner_state)
        (_, total, worker_state, poisoner_state), _ = jax.lax.scan(local, carry, keys)
        return first._replace(
            honest=total[:h],
            poisoned=total[self.sampled :],
            worker_state=worker_state,
            poisoner_state=poisoner_state,
        )

    # ------------------------------------------------------------------------------------------ #
    # Partial participation

    def _partial_round(
        self, state: State, hp: HyperParams, data: Data
    ) -> tuple[State, dict[str, Array]]:
        """A round of ``M`` sampled clients (module doc)."""
        c = self.config
        m = c.participants
        key, k_sample, k_grad, k_rule = jax.random.split(state.key, 4)
        _, reference = self._rule_and_reference(state, hp, data, k_rule)
        stages = self.stages(hp)
        clients = sample_clients(k_sample, c.nb_workers, m)
        byzantine = clients >= self.honest
        start = jax.tree.map(lambda leaf: leaf[clients], state.worker_state)
        start = self._start_state(stages.composition.worker, state.theta, m, start)
        sampled, loss, sent, worker_state, model_updates = self._client_updates(
            state, stages, hp, data, k_grad, clients, byzantine, start
        )
        # the study's attack row: the moment attack's, or a poisoned client's (if one took part)
        received, attack_rows = sent, sent[:0]
        if self.byzantine and not self.poisoning:
            row = self._masked_attack(sent, ~byzantine, hp)
            received, attack_rows = jnp.where(byzantine[:, None], row, sent), row[None]
        elif self.poisoning:
            attack_rows = sent[jnp.argmax(byzantine)][None]
        aggregate, aggregator_state = stages.aggregator.update(
            received, state.aggregator_state, key=k_rule, reference=reference
        )
        aggregator_state = aggregator_state._replace(previous=aggregate)
        update, server_state = stages.composition.server.update(
            aggregate, state.server_state, state.theta
        )
        study, past = metrics_lib.study(
            sampled=sampled,
            honest=sent,
            byzantine=attack_rows,
            aggregate=aggregate,
            accepted=None,
            loss=loss,
            l2_from_origin=jnp.linalg.norm(state.theta - state.theta0),
            learning_rate=stages.schedule(state.step),
            past=state.past,
            step=state.step,
            momentum=hp.momentum,
            byzantine_participants=jnp.sum(byzantine),
        )
        scattered = jax.tree.map(
            lambda table, rows: table.at[clients].set(rows), state.worker_state, worker_state
        )
        new_state = state.replace(
            theta=optax.apply_updates(state.theta, update),
            model_state={**state.model_state, **model_updates},
            worker_state=scattered,
            aggregator_state=aggregator_state,
            server_state=server_state,
            past=past,
            step=state.step + 1,
            key=key,
        )
        return new_state, study

    def _client_updates(
        self,
        state: State,
        stages: Stages,
        hp: HyperParams,
        data: Data,
        key: Array,
        clients: Array,
        byzantine: Array,
        worker_state: Any,
    ) -> tuple[Array, Array, Array, Any, Any]:
        """The ``K`` local steps of the sampled clients: (first-step gradients ``[M, d]``, their
        mean loss, the sent model changes ``Σ_k d_k`` ``[M, d]``, the new worker states, the
        model-state updates)."""
        m = self.config.participants
        lr = stages.schedule(state.step)
        previous = {"previous_aggregate": state.aggregator_state.previous}
        raw = self.poisoning and not self.attack.params.get("momentum", True)
        grad_fn = jax.vmap(jax.grad(self._loss, has_aux=True), in_axes=(0, None, 0, 0, 0, None))
        clip = transforms.per_worker(self._clip(), m)

        def local(carry, local_key):
            points, total, worker_state = carry
            x, y, drop = self._client_batches(local_key, clients, byzantine, data)
            grads, (losses_, updates) = grad_fn(points, state.model_state, x, y, drop, hp)
            grads, _ = clip.update(grads, clip.init(state.theta))
            direction, worker_state = stages.composition.worker.update(
                grads, worker_state, state.theta, **previous
            )
            if raw:  # poisoning attackers that send raw gradients (attack momentum:False)
                direction = jnp.where(byzantine[:, None], grads, direction)
            carry = (points - lr * direction, total + direction, worker_state)
            return carry, (grads, losses_, updates)

        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(self.local_steps))
        points = jnp.broadcast_to(state.theta, (m, self.dim))
        carry = (points, jnp.zeros((m, self.dim), state.theta.dtype), worker_state)
        (_, total, worker_state), (grads, losses_, updates) = jax.lax.scan(local, carry, keys)
        chex.assert_shape(total, (m, self.dim))
        # BatchNorm statistics: the sampled clients' mean at their last local step
        updates = jax.tree.map(lambda u: jnp.mean(u[-1], axis=0), updates)
        return grads[0], row_mean(losses_[0][:, None])[0], total, worker_state, updates

    def _client_batches(
        self, key: Array, clients: Array, byzantine: Array, data: Data
    ) -> tuple[Array, Array, Array]:
        """The sampled clients' batches ``[M, b, ...]``: an honest client draws from its own
        partition when the data is split, a Byzantine client from the whole training set; the
        Byzantine clients' batches poisoned when the attack poisons data."""
        m, batch = self.config.participants, self.config.batch_size
        k_idx, k_flip, k_drop, k_poison = jax.random.split(key, 4)
        num_train = data["train_y"].shape[0]
        indices = data_lib.sample_indices(k_idx, m, batch, num_train)
        if "partition_table" in data:
            own = jnp.minimum(clients, self.honest - 1)
            partition = (data["partition_table"][own], data["partition_lengths"][own])
            shares = data_lib.sample_indices(
                jax.random.fold_in(k_idx, 1), m, batch, num_train, partition
            )
            indices = jnp.where(byzantine[:, None], indices, shares)
        x, y = data_lib.gather_batches(
            k_flip, data["train_x"], data["train_y"], indices, self.dataset, self.flip
        )
        if self.poisoning:
            px, py = self.attack.poison(
                x, y, key=k_poison, num_classes=self.dataset.num_classes, **self.attack.params
            )
            mask = byzantine.reshape(m, *([1] * (x.ndim - 1)))
            x, y = jnp.where(mask, px, x), jnp.where(byzantine[:, None], py, y)
        return x, y, jax.random.split(k_drop, m)

    def _masked_attack(self, sent: Array, honest: Array, hp: HyperParams) -> Array:
        """The moment family's row ``mu + a sigma + b mu`` on the honest rows of ``sent``
        (``honest`` ``[M]`` bool), ``a``, ``b`` from the attack (traced when the sweep traces
        the attack)."""
        a, b = self._moment_coefficients(hp)
        mu, sigma = masked_mean_std(sent, honest)
        return moment_row(mu, sigma, a, b)


def sample_clients(key: Array, n: int, m: int) -> Array:
    """``m`` of the clients ``0..n-1`` drawn uniformly without replacement: the first ``m`` of a
    uniform random permutation (each client takes part with probability ``m / n``)."""
    return jax.random.permutation(key, n)[:m]
