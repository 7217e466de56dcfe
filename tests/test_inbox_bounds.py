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

import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest
import torch

from swarmnode import canonical
from swarmnode.address import normalize
from swarmnode.allreduce import AllReduceResult, AllReduceRunner, Attempt
from swarmnode.identity import TlsIdentity
from swarmnode.merge import combine_partials, make_rule
from swarmnode.p2p.grpc_transport import GrpcTransport, PeerServer
from swarmnode.p2p.inbox import Inbox
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
