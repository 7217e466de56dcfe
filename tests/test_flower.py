"""FlowerNode and the swarm's sync policy: one fit() call is the policy's unit, the adaptive
policy moves on from the losses of the clients' own evaluate, and what a step reports is the
client's evaluate of the merged model, metrics included.

Real flwr NumPyClients on the in-memory ledger and transport; every node runs in its own
thread, as separate nodes would."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from flwr.client import NumPyClient

from swarmnode import canonical
from swarmnode.exceptions import ConfigError
from swarmnode.flower import FlowerNode, FlowerRound
from swarmnode.round import RoundSettings
from swarmnode.rules import PPM, Rule, SwarmParams, SyncPolicyId
from swarmnode.simulation.local import memory_swarm, run_in_threads
from swarmnode.sync import loss_to_int, replay

Arrays = list[npt.NDArray[Any]]
TRUE_W = np.array([1.0, -2.0, 0.5], dtype=np.float32)


class RecordingClient(NumPyClient):
    """An ordinary Flower client (least squares on its own data) that records every call."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        # each client's data has its own offset: the merged model is nobody's local model
        self.x = rng.standard_normal((50, 3)).astype(np.float32)
        self.y = self.x @ TRUE_W + np.float32(0.5 * seed)
        self.calls: list[tuple[str, Arrays]] = []
        self.fit_returns: list[Arrays] = []

    def get_parameters(self, config: dict[str, Any]) -> Arrays:
        return [np.zeros(3, np.float32), np.zeros(1, np.float32), np.zeros(1, np.int64)]

    def fit(self, parameters: Arrays, config: dict[str, Any]) -> tuple[Arrays, int, dict[str, Any]]:
        self.calls.append(("fit", [np.array(p) for p in parameters]))
        w, b, steps = (np.array(p) for p in parameters)
        error = self.x @ w + b - self.y
        w = (w - 0.1 * self.x.T @ error / len(self.x)).astype(np.float32)
        b = (b - 0.1 * error.mean(keepdims=True)).astype(np.float32)
        fitted = [w, b, steps + 1]  # the integer array counts this client's own fits
        self.fit_returns.append([np.array(p) for p in fitted])
        return fitted, len(self.x), {"fit": len(self.fit_returns)}

    def evaluate(
        self, parameters: Arrays, config: dict[str, Any]
    ) -> tuple[float, int, dict[str, Any]]:
        self.calls.append(("evaluate", [np.array(p) for p in parameters]))
        return self.score(parameters)

    def score(self, parameters: Arrays) -> tuple[float, int, dict[str, Any]]:
        w, b, _ = parameters
        error = self.x @ w + b - self.y
        close = float(np.mean(np.abs(error) < 1.0))
        return float(np.mean(error**2)), len(self.x), {"accuracy": close, "seen": len(self.x)}


def digest_of(parameters: Arrays) -> bytes:
    return canonical.digest(canonical.flatten(FlowerNode._state(parameters)).numpy())


def flower_swarm(
    clients: list[RecordingClient], policy: Rule, *, evaluate: bool = True
) -> list[FlowerNode]:
    params = SwarmParams(
        min_peers=2,
        max_peers=len(clients),
        sync_policy=policy,
        initial_model_digest=digest_of(clients[0].get_parameters({})),
    )
    return [
        FlowerNode(
            client,
            ledger=peer.ledger,
            transport=peer.transport,
            inbox=peer.inbox,
            evaluate=evaluate,
            settings=RoundSettings(poll=0.01),
        )
        for client, peer in zip(clients, memory_swarm(params, len(clients)).peers, strict=True)
    ]


def step_all(nodes: list[FlowerNode]) -> list[FlowerRound]:
    jobs: list[Callable[[], FlowerRound]] = [node.step for node in nodes]
    rounds = run_in_threads(jobs, timeout=60)
    assert {r.result.status for r in rounds} == {"final"}
    return rounds


def assert_one_model(nodes: list[FlowerNode], rounds: list[FlowerRound]) -> None:
    """Every node ended the round on the digest the chain agreed on, and holds it."""
    digests = {r.result.digest for r in rounds}
    assert len(digests) == 1
    (digest,) = digests
    assert nodes[0].syncer.ledger.latest_model() == (rounds[0].result.round, digest)
    assert {digest_of(node.parameters) for node in nodes} == {digest}


def test_every_n_fits_then_one_merge() -> None:
    clients = [RecordingClient(seed) for seed in range(3)]
    nodes = flower_swarm(clients, Rule(SyncPolicyId.EVERY_N_BATCHES, (3, 0, 0, 0)))
    merged: list[bytes] = []
    for number in (1, 2):
        rounds = step_all(nodes)
        assert [r.fits for r in rounds] == [3, 3, 3]
        assert [r.result.round for r in rounds] == [number] * 3
        assert_one_model(nodes, rounds)
        merged.append(rounds[0].result.digest or b"")
        for r in rounds:
            assert r.fit_metrics == [{"fit": k} for k in range(3 * number - 2, 3 * number + 1)]
    for client, node in zip(clients, nodes, strict=True):
        fits = [params for kind, params in client.calls if kind == "fit"]
        assert len(fits) == 6  # 3 per round, 2 rounds
        # each fit starts where the one before ended, within a round
        for k in (1, 2, 4, 5):
            assert digest_of(fits[k]) == digest_of(client.fit_returns[k - 1])
        # the first fit of round 2 starts from round 1's merged model (its own integer count)
        assert digest_of(fits[3]) == merged[0]
        assert int(fits[3][2][0]) == 3
        assert int(node.parameters[2][0]) == 6  # integer arrays are never merged
        assert len(node.rounds) == 2


def test_the_adaptive_policy_moves_on_from_the_clients_evaluate_losses() -> None:
    clients = [RecordingClient(seed) for seed in range(3)]
    rule = Rule(SyncPolicyId.ADAPTIVE, (1, 1, 4, 2 * PPM))  # start at 1 fit, double to 4
    nodes = flower_swarm(clients, rule)
    history: list[list[int]] = []  # each round's join losses, as read from chain
    fits: list[int] = []
    for _ in range(4):
        expected = replay(rule, history).interval
        rounds = step_all(nodes)
        assert {r.fits for r in rounds} == {expected}
        fits.append(expected)
        assert_one_model(nodes, rounds)
        seats = {s.account: s for s in nodes[0].syncer.ledger.round(rounds[0].result.round).seats}
        for client, node, r in zip(clients, nodes, rounds, strict=True):
            contributed = client.fit_returns[-1]
            loss, _, _ = client.score(contributed)  # its evaluate of what it contributed
            assert r.join_loss == loss
            assert seats[node.syncer.ledger.account].val_loss == loss_to_int(loss)
        history.append([s.val_loss for s in seats.values()])
        assert [n.syncer.policy.interval for n in nodes] == [replay(rule, history).interval] * 3
    # the losses fell round after round: the interval stays once (nothing to compare with in
    # the first round), then grows
    assert fits == [1, 1, 2, 4]


def test_a_step_reports_the_clients_evaluate_of_the_merged_model() -> None:
    clients = [RecordingClient(seed) for seed in range(3)]
    nodes = flower_swarm(clients, Rule(SyncPolicyId.EVERY_N_BATCHES, (2, 0, 0, 0)))
    for _ in range(2):
        rounds = step_all(nodes)
        assert_one_model(nodes, rounds)
        for client, node, r in zip(clients, nodes, rounds, strict=True):
            kind, seen = client.calls[-1]
            assert kind == "evaluate"
            assert digest_of(seen) == r.result.digest  # evaluate saw the merged parameters
            loss, _, metrics = client.score(node.parameters)
            assert (r.loss, r.metrics) == (loss, metrics)
            assert set(r.metrics) == {"accuracy", "seen"}
            # the merged model is not the local one: reporting the local loss would differ
            assert r.loss != r.join_loss
            assert [m["fit"] for m in r.fit_metrics] == [
                len(client.fit_returns) - 1,
                len(client.fit_returns),
            ]
        assert nodes[0].rounds[-1] is rounds[0]
    # per step: two fits, evaluate of the contribution (the join loss), evaluate of the merge
    assert [kind for kind, _ in clients[0].calls[:4]] == ["fit", "fit", "evaluate", "evaluate"]


def test_without_evaluate() -> None:
    clients = [RecordingClient(seed) for seed in range(2)]
    nodes = flower_swarm(clients, Rule(SyncPolicyId.EVERY_N_BATCHES, (1, 0, 0, 0)), evaluate=False)
    rounds = step_all(nodes)
    assert_one_model(nodes, rounds)
    assert [(r.loss, r.metrics, r.join_loss) for r in rounds] == [(None, {}, 0.0)] * 2
    assert {kind for client in clients for kind, _ in client.calls} == {"fit"}
    with pytest.raises(ConfigError, match="adaptive"):
        flower_swarm(
            [RecordingClient(0), RecordingClient(1)],
            Rule(SyncPolicyId.ADAPTIVE, (1, 1, 4, 2 * PPM)),
            evaluate=False,
        )


def test_a_finished_flower_node_is_not_waited_for() -> None:
    """One client stops after a round and says so (finish()); the other's next step ends at
    once with no_peers instead of waiting for a round that cannot fill."""
    clients = [RecordingClient(seed) for seed in range(2)]
    nodes = flower_swarm(clients, Rule(SyncPolicyId.EVERY_N_BATCHES, (1, 0, 0, 0)))
    step_all(nodes)
    assert nodes[0].finish()
    assert nodes[1].step().result.status == "no_peers"
    assert not nodes[0].finish()  # counted out already
