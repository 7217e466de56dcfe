"""Bounded memory per peer: what a participant can make a node hold.

A participant of a round owns a segment; it used to be able to push partial sums too, up to
~1 GiB per sender per attempt before the Inbox bounded them by the rule's steps. No rule
exchanges partial sums any more (each owner decides from its own segment), so the message is
gone from the wire (docs/round-protocol.md#partial-sums) and a push of one is refused as an
unknown method (tests/test_transport_fuzz.py). What stays here: an honest round over real
mutual-TLS gRPC under the robust rules, with the Inbox's own accounting of what it holds
(docs/trust.md#checks-on-received-data), and every rule's merge needing nothing but its
own rows.
"""

from __future__ import annotations

import gc
import secrets
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest
import torch

from swarmnode import canonical, merkle
from swarmnode.address import normalize
from swarmnode.allreduce import AllReduceResult, AllReduceRunner, Attempt
from swarmnode.identity import TlsIdentity
from swarmnode.merge import combine_partials, make_rule
from swarmnode.p2p.errors import InvalidMessage, Unauthorized
from swarmnode.p2p.frames import Frame, frames_for_row, merged_hashes_frame
from swarmnode.p2p.grpc_transport import GrpcTransport, PeerServer
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.messages import Kind
from swarmnode.p2p.roster import PeerRecord, Roster
from swarmnode.rules import MergeRuleId, Rule

NUMEL = 6 * canonical.CHUNK_ELEMENTS + 99
ROUND = 3
PEERS = 3
SEGMENTS = canonical.segments(canonical.num_chunks(NUMEL), PEERS)
MEAN = Rule(MergeRuleId.MEAN)
KRUM = Rule(MergeRuleId.KRUM, (0, 0, 0, 0))
GEOMETRIC_MEDIAN = Rule(MergeRuleId.GEOMETRIC_MEDIAN, (1000, 20, 0, 0))
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
            results[i] = AllReduceRunner(
                me=nodes[i].account,
                attempt=attempt,
                update=updates[i],
                hashes=hashes[i],
                rule=merge,
                transport=nodes[i].transport,
                inbox=nodes[i].inbox,
                timeout=30,
                frame_chunks=2,
            ).run()
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
    """An owner's merge needs no partial sums from anyone: it steps
    on its own segment's sums alone, the geometric median's Vardi-Zhang steps included (a
    contribution between the others in every coordinate puts the start on it)."""
    n = 5
    rng = np.random.default_rng(9)
    x = rng.standard_normal((n, 300)).astype(np.float32)
    if on_a_contribution:
        x[2] = np.median(x, axis=0)
    merge = make_rule(rule)
    rows, ref = torch.from_numpy(x), torch.zeros(300)
    state = merge.begin(rows, [1.0] * n, ref)
    while not state.done:
        state.advance(combine_partials([state.partials()]))
    assert torch.equal(state.result(), merge.merge_segment(rows, [1.0] * n, ref))


def test_unexpected_checks_and_relays_make_the_inbox_hold_nothing(nodes: list[Node]) -> None:
    """What a participant can push beyond its own update and merged segment: MERGED_HASHES of
    the wrong length or for a segment it does not check, and UPDATE frames relayed in
    another's name (a non-participant's, or a participant's with a forged hash list or
    proof). Every one is refused before a buffer exists: held_bytes stays 0, and nothing of
    the 4 MiB messages stays allocated. The checker's honest digest is then held: 32 bytes."""
    receiver, attacker, merger = nodes
    big = secrets.token_bytes(4 << 20)  # a 4 MiB "hash list"
    vectors = {
        n.account: np.random.default_rng(i).standard_normal(NUMEL).astype(np.float32)
        for i, n in enumerate(nodes)
    }
    commitments = {account: canonical.digest(v) for account, v in vectors.items()}
    receiver.inbox.expect_updates(ROUND, {1: SEGMENTS[1]}, NUMEL, commitments)
    expected = {0: (merger.account, attacker.account, SEGMENTS[0])}  # the attacker checks 0
    receiver.inbox.expect_merged(ROUND, 1, expected, NUMEL)

    def hashes(segment: int, data: bytes, sender: str = attacker.account) -> list[Frame]:
        return [
            merged_hashes_frame(
                round=ROUND,
                attempt=1,
                segment=segment,
                sender=sender,
                chunk_hashes=data,
                numel=NUMEL,
            )
        ]

    def relayed(
        contributor: str, vector: npt.NDArray[np.float32], list_of: bytes, proof: bytes = b""
    ) -> list[Frame]:
        span = canonical.element_range(SEGMENTS[1], NUMEL)
        return list(
            frames_for_row(
                vector[span.start : span.stop].copy(),
                SEGMENTS[1],
                NUMEL,
                kind=Kind.UPDATE,
                round=ROUND,
                attempt=1,
                segment=1,
                sender=contributor,
                chunk_hashes=list_of,
                proof=proof,
            )
        )

    stranger = normalize("0x" + secrets.token_hex(20))
    forged = np.random.default_rng(99).standard_normal(NUMEL).astype(np.float32)
    tree = merkle.Tree(canonical.chunk_hashes(forged))  # the forged vector's own segment proof
    own = (tree.leaves(SEGMENTS[1]), tree.proof(SEGMENTS[1]))
    attacks: list[tuple[list[Frame], type[Exception]]] = [
        (hashes(0, big), InvalidMessage),  # wrong length
        (hashes(0, big[: 32 * len(SEGMENTS[0])]), InvalidMessage),  # a hash list: no more
        (hashes(0, big[:64]), InvalidMessage),
        (hashes(1, big), InvalidMessage),  # a segment nobody expects from it
        (hashes(7, big), InvalidMessage),
        (relayed(stranger, forged, *own), Unauthorized),
        (relayed(merger.account, forged, *own), InvalidMessage),  # not the merger's commitment
        (relayed(merger.account, forged, canonical.chunk_hashes(forged)), InvalidMessage),
        (relayed(merger.account, forged, big), InvalidMessage),
        (relayed(merger.account, forged, own[0], big), InvalidMessage),  # a 4 MiB "proof"
        (relayed(merger.account, forged, b"", big), InvalidMessage),  # as frames are sent
    ]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(5):
            for frames, refusal in attacks:
                with pytest.raises(refusal):
                    attacker.transport.push(receiver.account, lambda f=frames: f, TIMEOUT)
        assert receiver.inbox.held_bytes() == 0
        # a refusal's traceback cycle frees its frame only when collected, and the server's
        # handler thread may still be unwinding the last refusal when the caller has its
        # answer: look again until it is freed, for at most 10 s
        deadline = time.monotonic() + 10
        while True:
            gc.collect()
            retained = tracemalloc.get_traced_memory()[0] - before
            if retained < (1 << 20) or time.monotonic() > deadline:
                break
            threading.Event().wait(0.05)
    finally:
        tracemalloc.stop()
    assert retained < (1 << 20), f"{retained} bytes still allocated after the refusals"

    span = canonical.element_range(SEGMENTS[0], NUMEL)
    leaves = canonical.chunk_hashes(vectors[merger.account][span.start : span.stop], numel=NUMEL)
    honest = merkle.root(leaves)  # the checker's digest of its merge of the segment
    assert attacker.transport.push(receiver.account, lambda: hashes(0, honest), TIMEOUT) == 0
    assert receiver.inbox.merged_hashes(ROUND, 1, 0, timeout=TIMEOUT) == honest
    assert receiver.inbox.held_bytes() == receiver.inbox.held_bytes(attacker.account)
    assert receiver.inbox.held_bytes() == canonical.HASH_BYTES
    receiver.inbox.finish_round(ROUND)
    assert receiver.inbox.held_bytes() == 0
