"""The owner-check switch (SwarmParams.checked_merge, docs/trust.md#unchecked-merge), on the
in-memory transport and over gRPC with mutual TLS: with the checks on, two owners per
segment and the checker's hashes; off, one owner per segment, rows to it alone, its merged
data from it alone and no MERGED_HASHES, so each node moves about (2n-2)/n of the model
instead of (3n-4)/n. A silent merger is worked around in both modes (the node fetches the
rows and merges the segment itself); a lying merger is caught only with the checks on."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pytest

from swarmnode import canonical
from swarmnode.allreduce import AllReduceResult, AllReduceRunner, Attempt
from swarmnode.identity import TlsIdentity
from swarmnode.merge import make_rule
from swarmnode.ownership import Owners
from swarmnode.p2p.byzantine import Lies, LyingTransport
from swarmnode.p2p.grpc_transport import GrpcTransport, PeerServer
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.memory import MemoryNetwork, MemoryTransport
from swarmnode.p2p.roster import PeerRecord, Roster
from swarmnode.p2p.transport import Transport
from swarmnode.rules import MergeRuleId, Rule

NUMEL = 1 << 20  # 4 MB: chunks of 1024 elements, hashes under 1 % of the payload
N = 4
MEAN = Rule(MergeRuleId.MEAN)


@dataclass
class Swarm:
    """n in-process nodes on one transport kind, their inboxes and transports."""

    kind: str
    accounts: list[str]
    inboxes: list[Inbox]
    transports: list[Transport]
    servers: list[PeerServer] = field(default_factory=list)

    def close(self) -> None:
        for transport in self.transports:
            transport.close()
        for server in self.servers:
            server.stop(0)


def swarm(kind: str, n: int) -> Swarm:
    accounts = [f"0x{i:040x}" for i in range(1, n + 1)]
    inboxes = [Inbox(a) for a in accounts]
    roster = Roster()
    if kind == "memory":
        network = MemoryNetwork(roster)
        for a, inbox in zip(accounts, inboxes, strict=True):
            roster.upsert(PeerRecord(a, "memory", a.encode()))
            network.attach(inbox)
        return Swarm(kind, accounts, inboxes, [MemoryTransport(network, a) for a in accounts])
    built = Swarm(kind, accounts, inboxes, [])
    for a, inbox in zip(accounts, inboxes, strict=True):
        tls = TlsIdentity.generate(a)
        server = PeerServer(a, tls.key_pem, tls.cert_pem, roster, inbox).start()
        built.servers.append(server)
        roster.upsert(PeerRecord(a, server.endpoint, tls.cert_der))
        built.transports.append(GrpcTransport(a, tls.key_pem, tls.cert_pem, roster, server.wire))
    return built


@pytest.fixture(params=["memory", "grpc"])
def nodes(request: pytest.FixtureRequest) -> Iterator[Swarm]:
    built = swarm(request.param, N)
    yield built
    built.close()


Updates = list[npt.NDArray[np.float32]]


def run(
    built: Swarm,
    checked: bool,
    wrap: Callable[[int, Transport], Transport] = lambda i, t: t,
    timeout: float = 30.0,
) -> tuple[list[AllReduceResult], Updates, Attempt]:
    """One attempt on every node at once, each in its own thread."""
    n = len(built.accounts)
    rng = np.random.default_rng(7)
    updates = [rng.standard_normal(NUMEL).astype(np.float32) for _ in range(n)]
    hashes = [canonical.chunk_hashes(u) for u in updates]
    attempt = Attempt(
        round=1,
        attempt=1,
        participants=tuple(built.accounts),
        weights=tuple(10 + i for i in range(n)),
        commitments={
            a: canonical.digest_from_chunk_hashes(h)
            for a, h in zip(built.accounts, hashes, strict=True)
        },
        seed=b"\x05" * 32,
        checked=checked,
    )
    results: list[AllReduceResult | None] = [None] * n
    errors: list[BaseException] = []
    # counted from before any node starts, as the round layer counts from its join: a peer's
    # first frame may wait in a node's Inbox before that node runs (round-protocol#not-ready)
    marks = [t.wire.split() for t in built.transports]

    def node(i: int) -> None:
        try:
            results[i] = AllReduceRunner(
                me=built.accounts[i],
                attempt=attempt,
                update=updates[i],
                hashes=hashes[i],
                rule=make_rule(MEAN),
                transport=wrap(i, built.transports[i]),
                inbox=built.inboxes[i],
                timeout=timeout,
                counted_from=marks[i],
            ).run()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=node, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    done = [r for r in results if r is not None]
    assert len(done) == n
    return done, updates, attempt


def weighted_mean(updates: Updates, attempt: Attempt) -> npt.NDArray[np.float32]:
    w = np.array(attempt.weights, dtype=np.float64)
    mean = (np.stack(updates).astype(np.float64) * w[:, None]).sum(0) / w.sum()
    return np.asarray(mean, dtype=np.float32)


@pytest.mark.parametrize("checked", [True, False])
def test_both_modes_agree_bit_for_bit_and_move_what_the_protocol_says(
    nodes: Swarm, checked: bool
) -> None:
    results, updates, attempt = run(nodes, checked)
    assert len({r.digest for r in results}) == 1
    assert len({r.merged.tobytes() for r in results}) == 1
    np.testing.assert_allclose(results[0].merged, weighted_mean(updates, attempt), atol=1e-5)
    model = NUMEL * canonical.ELEMENT_BYTES
    # each node's payload: rows to both owners of every segment (2(n-1)/n), the merged
    # segment to all but its checker ((n-2)/n); unchecked rows to the one owner ((n-1)/n)
    # and the merged segment to all others ((n-1)/n); the same received
    expected = (3 * N - 4) / N if checked else (2 * N - 2) / N
    for r in results:
        assert r.accused == {} and r.checked == 0
        for split, total in (
            (r.traffic.sent_split, r.traffic.sent),
            (r.traffic.received_split, r.traffic.received),
        ):
            assert split.total == total
            assert expected - 0.01 <= split.payload / model <= expected + 0.01
            assert 0 < split.hashes < 0.01 * split.payload  # 32 B per 4 KiB chunk, and proofs
            assert 0 < split.framing < 0.002 * model
    owners = attempt.owners(NUMEL)
    for i, inbox in enumerate(nodes.inboxes):
        me = nodes.accounts[i]
        # unchecked: no MERGED_HASHES came from anyone; checked: from every checker
        for s in range(N):
            if s in owners.owned_by(me):
                continue
            got = inbox.merged_hashes(1, 1, s, timeout=0)
            assert (got is not None) == checked


@pytest.mark.parametrize("checked", [True, False])
def test_a_silent_merger_is_worked_around_by_fetching_the_rows(nodes: Swarm, checked: bool) -> None:
    """Node 0 sends its rows but never its merged segment: every other node fetches that
    segment's rows, merges it itself, keeps its own result and accuses node 0."""
    silent = nodes.accounts[0]

    def wrap(i: int, transport: Transport) -> Transport:
        return LyingTransport(transport, Lies(withhold_merged=True)) if i == 0 else transport

    results, updates, attempt = run(nodes, checked, wrap, timeout=6.0)
    others = results[1:]
    assert len({r.merged.tobytes() for r in others}) == 1
    np.testing.assert_allclose(others[0].merged, weighted_mean(updates, attempt), atol=1e-5)
    for r in others:
        assert silent in r.accused
        assert r.checked >= 1


def test_a_lying_merger_is_caught_only_with_the_checks_on() -> None:
    """What the switch gives up (docs/trust.md#unchecked-merge): with one owner per segment, a
    merger that shifts its segment for one victim goes unseen there."""
    accounts = [f"0x{i:040x}" for i in range(1, N + 1)]
    owners = Owners.of(accounts, b"\x05" * 32, 1, NUMEL)
    liar = 0
    # a node the liar sends its merged segment to with the checks on (not that one's checker)
    checker = owners.checker(owners.merged_by(accounts[liar]))
    victim = next(i for i in range(1, N) if accounts[i] != checker)
    outcomes = {}
    for checked in (True, False):
        built = swarm("memory", N)
        try:
            lies = Lies(tamper_merged_to=frozenset({built.accounts[victim]}))

            def wrap(i: int, transport: Transport, lies: Lies = lies) -> Transport:
                return LyingTransport(transport, lies) if i == liar else transport

            results, _, _ = run(built, checked, wrap, timeout=6.0)
        finally:
            built.close()
        honest = [r for i, r in enumerate(results) if i not in (liar, victim)]
        outcomes[checked] = (results[victim], honest[0])
    victim_result, honest_result = outcomes[True]
    assert victim_result.digest == honest_result.digest
    assert f"0x{liar + 1:040x}" in victim_result.accused
    victim_result, honest_result = outcomes[False]
    assert victim_result.digest != honest_result.digest
    assert victim_result.accused == {}


@pytest.mark.parametrize("checked", [True, False])
def test_memory_and_grpc_count_the_same_bytes_for_the_same_round(checked: bool) -> None:
    """The memory transport counts what gRPC counts, message for message, over a whole
    attempt: so round_benchmark's rows at n = 32 and 64, taken on the memory transport,
    compare with its gRPC rows (tests/test_wire_bytes.py checks gRPC's against a proxy)."""
    counts = {}
    for kind in ("memory", "grpc"):
        built = swarm(kind, N)
        try:
            run(built, checked)
            # once every node has finished, each push's Ack has been counted at both ends
            # (an attempt's own Traffic may end before the last Ack it serves is written)
            counts[kind] = [t.wire.split() for t in built.transports]
        finally:
            built.close()
    assert counts["memory"] == counts["grpc"]
