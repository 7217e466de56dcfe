"""Secure aggregation in whole rounds of 8 nodes over real mutual-TLS gRPC on 127.0.0.1
(issue 18 point 5, docs/secure-aggregation.md#in-a-round): no node's plain update (as
float32 or as its fixed-point encoding) is in any byte another node receives; the merged
model is the plain weighted mean within the fixed-point bound, the same digest on every
node; a node dying in the middle of the reduce-scatter is dropped and the survivors still
end on one digest, every reveal any node gave covering the same inputs wherever ranges
overlap, so no difference of two revealed sums is anyone's update; a node signing two
masked roots is voted out with nobody revealing for it; an opening that reached half the
nodes is relayed to the rest and the round ends in its first attempt."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from swarmnode.exceptions import PeerError
from swarmnode.identity import TlsIdentity
from swarmnode.ledger.base import Ledger
from swarmnode.ledger.memory import InMemoryChain
from swarmnode.ledger.types import RoundStatus
from swarmnode.merge import make_rule
from swarmnode.ownership import Owners
from swarmnode.p2p.errors import InvalidMessage
from swarmnode.p2p.faults import Fault, FaultyTransport, InjectedCrash
from swarmnode.p2p.grpc_transport import GrpcTransport, PeerServer
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.messages import SecAggKind, SecAggMessage
from swarmnode.p2p.roster import PeerRecord, Roster
from swarmnode.p2p.transport import Transport, WireCount
from swarmnode.round import Round, RoundResult, RoundSettings, _swarm_id
from swarmnode.rules import SecureAggregation, SwarmParams
from swarmnode.secagg import wire as secagg_wire
from swarmnode.secagg.errors import SumRefused
from swarmnode.secagg.fixedpoint import FixedPoint
from swarmnode.secagg.masking import RoundContext
from swarmnode.secagg.reveal import Reveal
from swarmnode.secagg.session import Prepared, Session
from swarmnode.secagg.shamir import Share
from swarmnode.secagg.signing import root_message
from swarmnode.secure_merge import SecureRound, SecureRouter
from swarmnode.simulation.local import LocalPeer, run_in_threads

N = 8
NUMEL = 3000  # 16-element chunks: 188 of them, about 23 a segment
SECURE = SecureAggregation(bound=4, fraction_bits=16, max_weight=64)
WINDOW = 32


class TapWire(WireCount):
    """A node's byte count that also keeps every message it received, as caller or server."""

    def __init__(self) -> None:
        super().__init__()
        self.taken: list[bytes] = []
        self._tap = threading.Lock()

    def received(self, message: bytes, parts: tuple[int, int] = (0, 0)) -> bytes:
        with self._tap:
            self.taken.append(bytes(message))
        return super().received(message, parts)


@dataclass
class Node:
    ledger: Ledger
    inbox: Inbox
    transport: Transport
    server: PeerServer
    wire: TapWire


@contextmanager
def grpc_swarm(transfer_deadline: int) -> Iterator[list[Node]]:
    """N nodes on the in-memory ledger (wall clock), each with its own gRPC server and
    transport sharing one tapped byte count; every server stopped at the end."""
    params = SwarmParams(
        min_peers=3,
        max_peers=N,
        join_window=30,
        transfer_deadline=transfer_deadline,
        round_deadline=60,
        secure_aggregation=SECURE,
    )
    chain = InMemoryChain(time.time)
    address = chain.deploy(params, chain.new_account())
    roster = Roster()
    nodes: list[Node] = []
    try:
        for _ in range(N):
            ledger = chain.ledger(address, chain.new_account())
            identity = TlsIdentity.generate(ledger.account)
            inbox = Inbox(ledger.account)
            wire = TapWire()
            server = PeerServer(
                ledger.account, identity.key_pem, identity.cert_pem, roster, inbox, wire=wire
            ).start()
            roster.upsert(PeerRecord(ledger.account, server.endpoint, identity.cert_der))
            transport = GrpcTransport(
                ledger.account, identity.key_pem, identity.cert_pem, roster, wire=wire
            )
            nodes.append(Node(ledger, inbox, transport, server, wire))
            ledger.register(server.endpoint, identity.cert_der)
        yield nodes
    finally:
        for node in nodes:
            node.transport.close()
            node.server.stop(0)


def updates_for(seed: int) -> tuple[list[npt.NDArray[np.float32]], list[int]]:
    rng = np.random.default_rng(seed)
    updates = [rng.uniform(-4, 4, NUMEL).astype(np.float32) for _ in range(N)]
    return updates, [int(w) for w in rng.integers(1, 65, N)]


def play(
    nodes: Sequence[Node | LocalPeer],
    updates: Sequence[npt.NDArray[np.float32]],
    weights: Sequence[int],
    transports: Sequence[Transport] | None = None,
    frame_chunks: int = 2,
) -> tuple[list[RoundResult | None], list[Round]]:
    """Round 1 on every node at once; a node whose transport crashed on purpose stops its
    server (what a killed process leaves) and gives None."""
    rule = make_rule(nodes[0].ledger.params().merge_rule)
    rounds = [
        Round(
            ledger=node.ledger,
            transport=node.transport if transports is None else transports[i],
            inbox=node.inbox,
            rule=rule,
            vector=updates[i],
            weight=weights[i],
            val_loss=0.5,
            settings=RoundSettings(poll=0.02, frame_chunks=frame_chunks),
        )
        for i, node in enumerate(nodes)
    ]

    def run(i: int) -> RoundResult | None:
        try:
            return rounds[i].run()
        except InjectedCrash:
            server = nodes[i].server
            if server is not None:
                server.stop(0)
            return None

    return run_in_threads([lambda i=i: run(i) for i in range(len(nodes))], timeout=90), rounds


PIECE = 8  # a WINDOW-byte window of a secret holds WINDOW // PIECE - 1 whole aligned pieces


class Secrets:
    """The byte strings no other node may receive WINDOW bytes of, indexed by their aligned
    8-byte pieces: a window starting at offset o holds the piece at the next multiple of 8,
    so searching every offset of the received bytes for the pieces (vectorized) and growing
    each hit byte by byte finds every window, at any alignment, quickly."""

    def __init__(self, secrets: dict[int, list[bytes]]) -> None:
        self.data = [(owner, data) for owner, items in secrets.items() for data in items]
        self.where: dict[int, list[tuple[int, int]]] = {}  # piece -> (data index, offset)
        for i, (_, data) in enumerate(self.data):
            pieces = np.frombuffer(data, dtype="<u8", count=len(data) // PIECE)
            for k, piece in enumerate(pieces.tolist()):
                self.where.setdefault(piece, []).append((i, k * PIECE))
        self.keys = np.sort(np.fromiter(self.where, dtype=np.uint64))

    def leaked(self, node: int, taken: Sequence[bytes]) -> list[int]:
        """The other nodes one of whose windows is in what `node` received."""
        blob = b"".join(taken)
        found: set[int] = set()
        for shift in range(PIECE):
            count = (len(blob) - shift) // PIECE
            if count <= 0:
                continue
            words = np.frombuffer(blob, dtype="<u8", count=count, offset=shift)
            spot = np.minimum(np.searchsorted(self.keys, words), len(self.keys) - 1)
            for hit in np.flatnonzero(self.keys[spot] == words).tolist():
                at = shift + hit * PIECE
                for i, offset in self.where[int(words[hit])]:
                    owner, data = self.data[i]
                    if owner != node and _common(blob, at, data, offset) >= WINDOW:
                        found.add(owner)
        return sorted(found)


def _common(blob: bytes, at: int, data: bytes, offset: int) -> int:
    """How many bytes around blob[at] and data[offset] agree (a run through both)."""
    left = 0
    while at - left > 0 and offset - left > 0 and blob[at - left - 1] == data[offset - left - 1]:
        left += 1
    right = 0
    while at + right < len(blob) and offset + right < len(data):
        if blob[at + right] != data[offset + right]:
            break
        right += 1
    return left + right


def test_no_plain_update_travels_and_the_mean_is_exact_within_the_bound() -> None:
    updates, weights = updates_for(18)
    fixed = FixedPoint(N, SECURE.max_weight, float(SECURE.bound), SECURE.fraction_bits)
    with grpc_swarm(transfer_deadline=20) as nodes:  # a loaded machine must not drop anyone
        results, _ = play(nodes, updates, weights)
        state = nodes[0].ledger.round(1)
        assert state.status == RoundStatus.FINAL and state.attempt == 1
        assert all(r is not None and r.status == "final" for r in results)
        assert {r.digest for r in results if r is not None} == {state.final_digest}
        merged = results[0].merged if results[0] is not None else None
        assert merged is not None
        total = sum(weights)
        exact = sum(w * u.astype(np.float64) for w, u in zip(weights, updates, strict=True))
        exact /= total
        slack = fixed.error_bound(N, total) + float(np.spacing(np.float32(SECURE.bound)))
        assert float(np.max(np.abs(merged - exact))) <= slack
        secrets = Secrets(
            {i: [u.tobytes(), fixed.encode(weights[i], u).tobytes()] for i, u in enumerate(updates)}
        )
        # the search can fail: WINDOW bytes of node 1's update, at any alignment, are found
        for start in range(101, 109):
            planted = b"\x00" * 7 + updates[1].tobytes()[start : start + WINDOW] + b"\x01"
            assert secrets.leaked(0, [b"\x02" * 5, planted]) == [1]
            assert secrets.leaked(0, [planted[:-2]]) == []  # WINDOW - 1 bytes are not enough
        for i, node in enumerate(nodes):
            assert node.wire.taken, f"node {i} received nothing"
            assert secrets.leaked(i, node.wire.taken) == [], f"node {i} saw a plain update"


def test_a_drop_in_the_middle_of_the_reduce_scatter_ends_on_one_digest_revealing_no_update() -> (
    None
):
    updates, weights = updates_for(7)
    with grpc_swarm(transfer_deadline=5) as nodes:
        # a frame holds a whole run (an owner's two segments): the victim's rows reach three
        # owners whole and the other four not at all
        victim = FaultyTransport(nodes[-1].transport)
        victim.arm(Fault.parse("reduce_scatter:after_frames=3"))
        transports = [*(n.transport for n in nodes[:-1]), victim]
        results, rounds = play(nodes, updates, weights, transports, frame_chunks=64)
        state = nodes[0].ledger.round(1)
        assert results[-1] is None, "the victim did not die"
        assert state.status == RoundStatus.FINAL and state.attempt == 2
        assert nodes[-1].ledger.account not in state.live_participants
        survivors = results[:-1]
        assert all(r is not None and r.status == "final" for r in survivors)
        assert {r.digest for r in survivors if r is not None} == {state.final_digest}
        live = N - 1
        total = sum(weights[:live])
        exact = sum(w * u.astype(np.float64) for w, u in zip(weights, updates[:live], strict=False))
        merged = survivors[0].merged if survivors[0] is not None else None
        assert merged is not None
        assert float(np.max(np.abs(merged - exact / total))) < 1e-3
        # every reveal given anywhere: sums over overlapping elements have the same inputs,
        # so the difference of any two is zero there, never one node's update
        given = [
            (elements, inputs)
            for r in rounds[:-1]
            if r._secure is not None
            for elements, inputs in r._secure.session.revealer.history()
        ]
        assert given, "no reveal was recorded"
        # and through the failed attempt and the next one, no plain update travelled
        fixed = FixedPoint(N, SECURE.max_weight, float(SECURE.bound), SECURE.fraction_bits)
        secrets = Secrets(
            {i: [u.tobytes(), fixed.encode(weights[i], u).tobytes()] for i, u in enumerate(updates)}
        )
        for i, node in enumerate(nodes[:-1]):
            assert secrets.leaked(i, node.wire.taken) == [], f"node {i} saw a plain update"
        assert all(len(inputs) == live for _, inputs in given)
        for (a, ia), (b, ib) in itertools.combinations(given, 2):
            if max(a.start, b.start) < min(a.stop, b.stop):
                assert ia == ib, f"two sums over overlapping elements differ in {ia ^ ib}"


class Equivocating(FaultyTransport):
    """X's transport as X would make it to equivocate: its masked root reaches the nodes in
    `fooled` as another root, which X signs as well."""

    def __init__(self, node: Node, fooled: set[str]) -> None:
        super().__init__(node.transport)
        self.ledger, self.fooled = node.ledger, fooled

    def _secagg_once(self, peer: str, message: SecAggMessage, timeout: float) -> bytes:
        if message.kind == SecAggKind.MASKED_ROOT and peer in self.fooled:
            root, _ = secagg_wire.decode_masked_root(message.body)
            other = bytes(b ^ 0xFF for b in root)
            signed = self.ledger.sign(root_message(_swarm_id(self.ledger), message.round, other))
            body = secagg_wire.encode_masked_root(other, signed)
            message = replace(message, body=body)
        return super()._secagg_once(peer, message, timeout)


class Withholding(FaultyTransport):
    """X's transport with its openings (ANNOUNCE) reaching only the nodes in `reached`."""

    def __init__(self, node: Node, reached: set[str]) -> None:
        super().__init__(node.transport)
        self.reached = reached

    def _secagg_once(self, peer: str, message: SecAggMessage, timeout: float) -> bytes:
        if message.kind == SecAggKind.ANNOUNCE and peer not in self.reached:
            raise PeerError(f"the test keeps X's opening from {peer}")
        return super()._secagg_once(peer, message, timeout)


def test_a_node_signing_two_masked_roots_is_voted_out_and_nobody_reveals_for_it() -> None:
    """X sends half the nodes another signed masked root than the rest: an owner's
    rows-complete notice (carrying the signed roots it checked against) and its reply show
    both, every honest node holds the proof, nobody reveals for a set with X, X is voted
    out and the others end on one digest, the mean of their updates."""
    updates, weights = updates_for(11)
    with grpc_swarm(transfer_deadline=5) as nodes:
        x = nodes[-1].ledger.account
        fooled = {n.ledger.account for n in nodes[4:-1]}
        transports = [*(n.transport for n in nodes[:-1]), Equivocating(nodes[-1], fooled)]
        results, rounds = play(nodes, updates, weights, transports)
        state = nodes[0].ledger.round(1)
        assert state.status == RoundStatus.FINAL and state.attempt == 2
        assert x not in state.live_participants
        honest = results[:-1]
        assert all(r is not None and r.status == "final" for r in honest)
        assert {r.digest for r in honest if r is not None} == {state.final_digest}
        for r in rounds[:-1]:
            assert r._secure is not None and x in r._secure.session.equivocators
        for r in rounds:  # X included: no reveal anywhere has X among its inputs
            assert r._secure is not None
            assert all(x not in inputs for _, inputs in r._secure.session.revealer.history())
        total = sum(weights[:-1])
        exact = sum(w * u.astype(np.float64) for w, u in zip(weights, updates[:-1], strict=False))
        merged = honest[0].merged if honest[0] is not None else None
        assert merged is not None
        assert float(np.max(np.abs(merged - exact / total))) < 1e-3


def test_an_opening_that_reached_half_the_nodes_is_relayed_and_the_round_ends() -> None:
    """X's opening reaches four of the seven others: the other three take X's announcement
    from them (checked against X's join commitment), mask with it and, holding no share of
    X's secrets, refuse every reveal; the five holders (t = 5) answer, and all eight end on
    one digest in the first attempt."""
    updates, weights = updates_for(12)
    with grpc_swarm(transfer_deadline=20) as nodes:
        reached = {n.ledger.account for n in nodes[:4]}
        transports = [*(n.transport for n in nodes[:-1]), Withholding(nodes[-1], reached)]
        results, rounds = play(nodes, updates, weights, transports)
        state = nodes[0].ledger.round(1)
        assert state.status == RoundStatus.FINAL and state.attempt == 1
        assert all(r is not None and r.status == "final" for r in results)
        assert {r.digest for r in results if r is not None} == {state.final_digest}
        for r in rounds[4:-1]:  # masked with a relayed announcement, no shares: no reveal
            assert r._secure is not None and r._secure.session.masked is not None
            assert r._secure.session.revealer.history() == []
        total = sum(weights)
        exact = sum(w * u.astype(np.float64) for w, u in zip(weights, updates, strict=True))
        merged = results[0].merged if results[0] is not None else None
        assert merged is not None
        assert float(np.max(np.abs(merged - exact / total))) < 1e-3


def test_an_owner_refuses_a_sum_with_a_row_left_out_and_unmasks_around_a_liar() -> None:
    """Sessions set up over gRPC by hand (no all-reduce): a masked root whose signature is
    not its sender's is refused by name; the same owner's sum of all rows decodes to the
    mean, its sum with one row skipped is refused, never merged; and a revealer lying about
    a share is left out by name, the others' shares decoding the sum."""
    updates, weights = updates_for(5)
    with grpc_swarm(transfer_deadline=10) as nodes:
        accounts = [n.ledger.account for n in nodes]
        fixed = FixedPoint(N, SECURE.max_weight, float(SECURE.bound), SECURE.fraction_bits)
        context = RoundContext.of(_swarm_id(nodes[0].ledger), 1, accounts, fixed)
        prepared = [Prepared(context.swarm, 1, a, bytes(32)) for a in accounts]
        joins = {a: p.commitment for a, p in zip(accounts, prepared, strict=True)}
        secure = [
            SecureRound(
                Session(
                    p,
                    context,
                    joins,
                    dict(zip(accounts, weights, strict=True)),
                    sign=n.ledger.sign,
                ),
                n.transport,
                1,
            )
            for p, n in zip(prepared, nodes, strict=True)
        ]
        for node, mine in zip(nodes, secure, strict=True):
            router = SecureRouter()
            router.use(mine)
            node.inbox.serve_secagg(1, router)
        deadline = time.monotonic() + 30
        lacking = run_in_threads(
            [lambda i=i: secure[i].exchange(updates[i], deadline) for i in range(N)], timeout=60
        )
        assert lacking == [[]] * N
        # a masked root in node 0's name signed by node 2's key is refused by name
        root = secure[0].session.roots[accounts[0]]
        forged = nodes[2].ledger.sign(root_message(context.swarm, 1, root))
        message = SecAggMessage(
            1, 1, SecAggKind.MASKED_ROOT, secagg_wire.encode_masked_root(root, forged)
        )
        with pytest.raises(InvalidMessage, match=f"{accounts[0]}'s masked root is not signed by"):
            nodes[0].transport.secagg(accounts[1], message, 10)
        owners = Owners.of(accounts, b"\x01" * 32, 1, NUMEL, True)
        for mine in secure:
            mine.begin(1, accounts, owners)
        run_in_threads(
            [lambda s=s: s.rows_complete(1, accounts, deadline) for s in secure], timeout=60
        )
        elements = range(0, 160)
        rows = [s.session.masked[elements.start : elements.stop] for s in secure]
        with pytest.raises(SumRefused, match="a mask left out"):
            secure[0].merge(1, elements, rows[:-1], deadline)
        mean = secure[0].merge(1, elements, rows, deadline)
        exact = sum(w * u[:160].astype(np.float64) for w, u in zip(weights, updates, strict=True))
        assert float(np.max(np.abs(mean - exact / sum(weights)))) < 1e-4
        # node 1, among the first t asked, now lies about one seed share: the owners ask
        # the others too, leave it out and decode the same bits
        honest = secure[1].session.answer_reveal

        def lying(*args: Any) -> Reveal:
            answer = honest(*args)
            share = answer.seeds[accounts[5]]
            return replace(answer, seeds={**answer.seeds, accounts[5]: Share(share.x, share.y + 1)})

        secure[1].session.answer_reveal = lying  # type: ignore[method-assign]
        elements = range(160, 320)
        rows = [s.session.masked[elements.start : elements.stop] for s in secure]
        merged = [secure[i].merge(1, elements, rows, deadline) for i in (0, 2)]
        assert merged[0].tobytes() == merged[1].tobytes()
        exact = sum(
            w * u[160:320].astype(np.float64) for w, u in zip(weights, updates, strict=True)
        )
        assert float(np.max(np.abs(merged[0] - exact / sum(weights)))) < 1e-4


@pytest.mark.chain
def test_a_secure_round_on_the_embedded_chain_joins_with_the_salted_commitment() -> None:
    """The contract's side (weights capped at join, commitments as given): 3 nodes on the
    embedded chain over gRPC end on one digest, the plain weighted mean within the bound,
    and what each joined with on chain is its salted commitment, not its plain digest."""
    from swarmnode import canonical
    from swarmnode.simulation.local import grpc_swarm as chain_swarm

    params = SwarmParams(
        min_peers=3,
        max_peers=3,
        join_window=30,
        transfer_deadline=20,
        round_deadline=120,
        secure_aggregation=SECURE,
    )
    updates, weights = updates_for(3)
    swarm = chain_swarm(params, 3)
    try:
        results, rounds = play(swarm.peers, updates, weights)
        state = swarm.peers[0].ledger.round(1)
        assert state.status == RoundStatus.FINAL
        assert {r.digest for r in results} == {state.final_digest}
        plain = {canonical.digest_from_chunk_hashes(canonical.chunk_hashes(u)) for u in updates}
        joined = {s.commitment for s in state.seats}
        assert joined == {r._prepared.commitment for r in rounds if r._prepared is not None}
        assert not joined & plain
        total = sum(weights[:3])
        exact = sum(w * u.astype(np.float64) for w, u in zip(weights[:3], updates[:3], strict=True))
        assert results[0].merged is not None
        assert float(np.max(np.abs(results[0].merged - exact / total))) < 1e-4
    finally:
        swarm.close()
