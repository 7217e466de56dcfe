"""Bounded memory per peer: what a participant can make a node hold with partial sums.

A participant of a round owns a segment, so it may push partial sums; before these checks it
could push up to 2008 steps of 65,536 float64 under any rule, kept across attempts (~1 GiB per
sender per attempt). Now the Inbox takes partial sums only for the steps the round's rule
takes, for the step the node is at or the next, with that step's number of values, and
drops them with their attempt (docs/trust.md#checks-on-received-data). Every attack runs over
real mutual-TLS gRPC; the tests assert on the Inbox's own accounting and on tracemalloc (not
on RSS: glibc keeps freed arenas).

No rule exchanges partial sums any more (each owner decides from its own segment,
docs/round-protocol.md#partial-sums), so every rule's bound refuses them all; the step-bounded
Inbox path stays on the wire, and the tests of its bounds declare the bounds that Krum and the
geometric median had while they exchanged sums.
"""

from __future__ import annotations

import gc
import logging
import secrets
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import pytest
import torch

from swarmnode import canonical
from swarmnode.address import normalize
from swarmnode.allreduce import AllReduceResult, Attempt, all_reduce
from swarmnode.identity import TlsIdentity
from swarmnode.merge import NO_PARTIALS, PartialsBound, combine_partials, make_rule
from swarmnode.p2p.errors import InvalidMessage, NotReady, Stale
from swarmnode.p2p.grpc_transport import GrpcTransport, PeerServer
from swarmnode.p2p.inbox import MAX_PARTIALS, Inbox
from swarmnode.p2p.messages import Partials
from swarmnode.p2p.roster import PeerRecord, Roster
from swarmnode.rules import MergeRuleId, Rule

NUMEL = 6 * canonical.CHUNK_ELEMENTS + 99
ROUND = 3
PEERS = 3
SEGMENTS = canonical.segments(canonical.num_chunks(NUMEL), PEERS)
MEAN = Rule(MergeRuleId.MEAN)
KRUM = Rule(MergeRuleId.KRUM, (0, 0, 0, 0))
GEOMETRIC_MEDIAN = Rule(MergeRuleId.GEOMETRIC_MEDIAN, (1000, 20, 0, 0))
# The bounds Krum (one step of n x n) and the geometric median with a cap of 20 (two steps per
# iteration, of n + 1 or 1 values) had while they exchanged partial sums.
KRUM_STEPS = PartialsBound(1, frozenset({PEERS * PEERS}))
GEOMETRIC_MEDIAN_STEPS = PartialsBound(40, frozenset({PEERS + 1, 1}))
ATTACK_STEPS = 24  # of MAX_PARTIALS float64 each: 12 MiB held without the checks
SMALL = 2 << 20  # what the attacks may leave behind in the Inbox, in bytes
# tracemalloc sees the whole process, the attacking client included, whose last request (a
# 64 Ki-value tuple and its 512 KiB encoding, about 2.6 MB) may still be referenced by
# grpc's call objects: a third of the 12 MiB attack, far below what the unchecked inbox kept
TRACED = 4 << 20
TIMEOUT = 10.0


@dataclass
class Node:
    account: str
    inbox: Inbox
    transport: GrpcTransport
    server: PeerServer


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    roster = Roster()
    built: list[Node] = []
    for _ in range(PEERS):
        account = normalize("0x" + secrets.token_hex(20))
        identity = TlsIdentity.generate(account)
        inbox = Inbox(account)
        server = PeerServer(account, identity.key_pem, identity.cert_pem, roster, inbox)
        server.start()
        transport = GrpcTransport(account, identity.key_pem, identity.cert_pem, roster)
        roster.upsert(PeerRecord(account, server.endpoint, identity.cert_der))
        built.append(Node(account, inbox, transport, server))
    yield built
    for node in built:
        node.transport.close()
        node.server.stop(0)


def expect(
    receiver: Node, everyone: list[Node], rule: Rule | PartialsBound, attempt: int = 1
) -> None:
    """What the all-reduce declares at the start of an attempt (AllReduceRunner._expect), for a
    rule or for a bound given directly."""
    bound = (
        rule if isinstance(rule, PartialsBound) else make_rule(rule).partials_bound(len(everyone))
    )
    owners = {n.account: (j, SEGMENTS[j]) for j, n in enumerate(everyone) if n is not receiver}
    receiver.inbox.expect_merged(
        ROUND, attempt, owners, NUMEL, partial_steps=bound.steps, partial_sizes=bound.sizes
    )


def sums(sender: Node, step: int, size: int, attempt: int = 1) -> Partials:
    return Partials(ROUND, attempt, step, 0, tuple(float(i) for i in range(size)), sender.account)


def refusals(push: Callable[[int], None], count: int) -> tuple[list[str], int]:
    """Runs push(0..count-1), returns the refusals' kinds and tracemalloc's growth after.

    The server's refusal warnings stay out of pytest's log capture here: it keeps every
    record, and a record's exception argument keeps the refused message alive through its
    traceback, which a daemon's handlers (format, write, drop) do not."""
    gc.collect()
    refusal_log = logging.getLogger("swarmnode.p2p.grpc_transport")
    old_level = refusal_log.level
    refusal_log.setLevel(logging.ERROR)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kinds = []
        for i in range(count):
            try:
                push(i)
                kinds.append("accepted")
            except (InvalidMessage, NotReady, Stale) as exc:
                kinds.append(type(exc).__name__)
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        refusal_log.setLevel(old_level)
    return kinds, growth


def test_partial_sums_under_the_mean_rule_are_refused_and_cost_nothing(nodes: list[Node]) -> None:
    attacker, receiver = nodes[0], nodes[1]
    expect(receiver, nodes, MEAN)
    big = sums(attacker, 0, MAX_PARTIALS)

    def push(step: int) -> None:
        attacker.transport.push_partials(receiver.account, replace(big, step=step), TIMEOUT)

    kinds, growth = refusals(push, ATTACK_STEPS)
    held = receiver.inbox.held_bytes(attacker.account)
    print(f"mean rule, {ATTACK_STEPS} steps: held {held} bytes, tracemalloc +{growth} bytes")
    assert set(kinds) == {"InvalidMessage"}
    assert held == 0 and receiver.inbox.held_bytes() == 0
    assert growth < TRACED
    with pytest.raises(InvalidMessage, match="takes no steps"):
        push(0)


def test_far_future_steps_are_refused_and_a_peer_holds_at_most_two(nodes: list[Node]) -> None:
    attacker, receiver = nodes[0], nodes[1]
    expect(receiver, nodes, GEOMETRIC_MEDIAN_STEPS)  # 40 steps of 4 or 1 values
    attacker.transport.push_partials(receiver.account, sums(attacker, 0, PEERS + 1), TIMEOUT)
    attacker.transport.push_partials(receiver.account, sums(attacker, 1, 1), TIMEOUT)
    held = receiver.inbox.held_bytes(attacker.account)
    assert held == (PEERS + 2) * 8

    def push(i: int) -> None:
        message = sums(attacker, 2 + i, PEERS + 1)
        attacker.transport.push_partials(receiver.account, message, TIMEOUT)

    kinds, growth = refusals(push, ATTACK_STEPS)
    assert set(kinds) == {"InvalidMessage"}
    assert receiver.inbox.held_bytes(attacker.account) == held
    assert growth < TRACED
    with pytest.raises(InvalidMessage, match="more than one step ahead"):
        push(0)
    with pytest.raises(InvalidMessage, match="rule takes 40 steps"):
        attacker.transport.push_partials(receiver.account, sums(attacker, 40, 1), TIMEOUT)
    # the node moves on: step 0 is used up and dropped, step 2 is now the next one
    receiver.inbox.partials_step(ROUND, 1, 1, 1)
    assert receiver.inbox.held_bytes(attacker.account) == 8
    with pytest.raises(Stale):
        attacker.transport.push_partials(receiver.account, sums(attacker, 0, PEERS + 1), TIMEOUT)
    attacker.transport.push_partials(receiver.account, sums(attacker, 2, PEERS + 1), TIMEOUT)


def test_vectors_of_the_wrong_size_are_refused(nodes: list[Node]) -> None:
    attacker, receiver = nodes[0], nodes[1]
    expect(receiver, nodes, KRUM_STEPS)  # one step of n x n = 9 values
    sizes = [MAX_PARTIALS, MAX_PARTIALS + 1, 10, 8, 1]

    def push(i: int) -> None:
        message = sums(attacker, 0, sizes[i % len(sizes)])
        attacker.transport.push_partials(receiver.account, message, TIMEOUT)

    kinds, growth = refusals(push, 2 * len(sizes))
    assert set(kinds) == {"InvalidMessage"}
    assert receiver.inbox.held_bytes() == 0
    assert growth < TRACED
    with pytest.raises(InvalidMessage, match="the rule's step has 9"):
        push(0)
    attacker.transport.push_partials(receiver.account, sums(attacker, 0, PEERS**2), TIMEOUT)
    assert receiver.inbox.held_bytes(attacker.account) == PEERS**2 * 8


def test_partial_sums_are_freed_with_their_attempt_and_round(nodes: list[Node]) -> None:
    attacker, receiver = nodes[0], nodes[1]
    expect(receiver, nodes, GEOMETRIC_MEDIAN_STEPS, attempt=1)
    attacker.transport.push_partials(receiver.account, sums(attacker, 0, PEERS + 1), TIMEOUT)
    assert receiver.inbox.held_bytes(attacker.account) > 0
    expect(receiver, nodes, GEOMETRIC_MEDIAN_STEPS, attempt=2)
    assert receiver.inbox.held_bytes() == 0  # the old attempt's sums are gone
    with pytest.raises(Stale):
        attacker.transport.push_partials(receiver.account, sums(attacker, 1, 1), TIMEOUT)
    attacker.transport.push_partials(receiver.account, sums(attacker, 0, 1, attempt=2), TIMEOUT)
    assert receiver.inbox.held_bytes(attacker.account) == 8
    receiver.inbox.finish_round(ROUND)
    assert receiver.inbox.held_bytes() == 0
    with pytest.raises(Stale):
        attacker.transport.push_partials(receiver.account, sums(attacker, 1, 1, 2), TIMEOUT)


def test_the_caps_per_peer_and_in_all_hold_back_what_the_steps_allow(nodes: list[Node]) -> None:
    attacker, honest, receiver = nodes
    receiver.inbox.max_partial_bytes_per_peer = 5 * 8
    receiver.inbox.max_partial_bytes = 8 * 8
    expect(receiver, nodes, GEOMETRIC_MEDIAN_STEPS)
    attacker.transport.push_partials(receiver.account, sums(attacker, 0, PEERS + 1), TIMEOUT)
    with pytest.raises(NotReady, match="over the cap of 40"):
        attacker.transport.push_partials(receiver.account, sums(attacker, 1, PEERS + 1), 0.3)
    attacker.transport.push_partials(receiver.account, sums(attacker, 1, 1), TIMEOUT)
    honest_sums = Partials(ROUND, 1, 0, 1, (1.0,) * (PEERS + 1), honest.account)
    with pytest.raises(NotReady, match="over the cap of 64"):
        honest.transport.push_partials(receiver.account, honest_sums, 0.3)
    assert receiver.inbox.held_bytes() == 5 * 8


def merge_over_grpc(nodes: list[Node], rule: Rule) -> list[AllReduceResult]:
    rng = np.random.default_rng(5)
    updates = [rng.standard_normal(NUMEL).astype(np.float32) for _ in nodes]
    hashes = [canonical.chunk_hashes(u) for u in updates]
    attempt = Attempt(
        round=ROUND,
        attempt=1,
        participants=tuple(n.account for n in nodes),
        weights=(10, 20, 30),
        commitments={
            n.account: canonical.digest_from_chunk_hashes(h)
            for n, h in zip(nodes, hashes, strict=True)
        },
    )
    merge = make_rule(rule)
    results: list[AllReduceResult | None] = [None] * len(nodes)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = all_reduce(
                me=nodes[i].account,
                attempt=attempt,
                update=updates[i],
                hashes=hashes[i],
                rule=merge,
                transport=nodes[i].transport,
                inbox=nodes[i].inbox,
                timeout=30,
                frame_chunks=2,
            )
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(nodes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    stacked = torch.from_numpy(np.stack(updates))
    spans = [canonical.element_range(s, NUMEL) for s in SEGMENTS]
    pieces = [stacked[:, span.start : span.stop] for span in spans]
    want: npt.NDArray[np.float32] = torch.cat(merge.merge_segments(pieces, attempt.weights)).numpy()
    done = [r for r in results if r is not None]
    assert len(done) == len(nodes)
    assert all(np.allclose(r.merged, want, rtol=1e-5, atol=1e-6) for r in done)
    assert len({r.digest for r in done}) == 1
    return done


@pytest.mark.parametrize("rule", [KRUM, GEOMETRIC_MEDIAN], ids=["krum", "geometric_median"])
def test_an_honest_round_under_robust_rules_still_merges(nodes: list[Node], rule: Rule) -> None:
    merge_over_grpc(nodes, rule)
    for node in nodes:
        assert node.inbox.held_bytes() > 0  # the round's segments, until it is finished
        node.inbox.finish_round(ROUND)
        assert node.inbox.held_bytes() == 0


@pytest.mark.parametrize(
    "rule",
    [
        MEAN,
        Rule(MergeRuleId.MEDIAN),
        KRUM,
        Rule(MergeRuleId.KRUM, (1, 3, 0, 0)),
        GEOMETRIC_MEDIAN,
        Rule(MergeRuleId.GEOMETRIC_MEDIAN, (1, 3, 0, 0)),  # runs to its cap
        Rule(MergeRuleId.CENTERED_CLIP, (500_000, 4, 0, 0)),
    ],
    ids=str,
)
@pytest.mark.parametrize("on_a_contribution", [False, True])
def test_no_rule_exchanges_partial_sums(rule: Rule, on_a_contribution: bool) -> None:
    """Every rule's bound refuses all partial sums, and an owner's merge needs none: it steps
    on its own segment's sums alone, the geometric median's Vardi-Zhang steps included (a
    contribution between the others in every coordinate puts the start on it)."""
    n = 5
    rng = np.random.default_rng(9)
    x = rng.standard_normal((n, 300)).astype(np.float32)
    if on_a_contribution:
        x[2] = np.median(x, axis=0)
    merge = make_rule(rule)
    assert merge.partials_bound(n) == NO_PARTIALS
    rows, ref = torch.from_numpy(x), torch.zeros(300)
    state = merge.begin(rows, [1.0] * n, ref)
    while not state.done:
        state.advance(combine_partials([state.partials()]))
    assert torch.equal(state.result(), merge.merge_segment(rows, [1.0] * n, ref))
