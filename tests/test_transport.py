"""One behaviour suite for both peer transports: gRPC with mutual TLS, and in-memory.

Each test builds a few nodes with real identities, a roster, an Inbox each, and a transport;
the gRPC variant starts a real server per node on 127.0.0.1, port 0, and stops it after.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from swarmnode import canonical, merkle
from swarmnode.address import normalize
from swarmnode.identity import TlsIdentity
from swarmnode.p2p import peer_pb2
from swarmnode.p2p.errors import InvalidMessage, NotFound, NotReady, Stale, Unauthorized
from swarmnode.p2p.frames import Frame, frames_for, frames_for_row, merged_hashes_frame
from swarmnode.p2p.grpc_transport import GrpcTransport, PeerServer
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.memory import MemoryNetwork, MemoryTransport
from swarmnode.p2p.messages import Kind, PeerInfo
from swarmnode.p2p.roster import PeerRecord, Roster
from swarmnode.p2p.transport import FrameSource, Transport

CHUNK = 16  # a vector this small has chunks of 16 elements
NUMEL = 10 * CHUNK + 7  # 11 chunks, the last one short
ROUND = 7


@dataclass
class Node:
    account: str
    identity: TlsIdentity
    inbox: Inbox
    transport: Transport
    server: PeerServer | None = None

    @property
    def record(self) -> PeerRecord:
        endpoint = self.server.endpoint if self.server else "memory"
        return PeerRecord(self.account, endpoint, self.identity.cert_der)


class Cluster:
    def __init__(self, kind: str, size: int, **inbox_limits: int) -> None:
        self.kind = kind
        self.roster = Roster()
        self.network = MemoryNetwork(self.roster)
        self.nodes = [self.make_node(**inbox_limits) for _ in range(size)]
        for node in self.nodes:
            self.roster.upsert(node.record)

    def make_node(self, **inbox_limits: int) -> Node:
        account = normalize("0x" + secrets.token_hex(20))  # as a ledger or roster gives it
        identity = TlsIdentity.generate(account)
        inbox = Inbox(account, **inbox_limits)
        if self.kind == "memory":
            self.network.attach(inbox)
            return Node(account, identity, inbox, MemoryTransport(self.network, account))
        server = PeerServer(account, identity.key_pem, identity.cert_pem, self.roster, inbox)
        server.start()
        transport = GrpcTransport(account, identity.key_pem, identity.cert_pem, self.roster)
        return Node(account, identity, inbox, transport, server)

    def stop(self, extra: list[Node] | None = None) -> None:
        for node in self.nodes + (extra or []):
            node.transport.close()
            if node.server is not None:
                node.server.stop(0)


@pytest.fixture(params=["memory", "grpc"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    built = Cluster(request.param, 3)
    yield built
    built.stop()


def model(seed: int) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).standard_normal(NUMEL).astype(np.float32)


def proved(vector: npt.NDArray[np.float32], chunks: range) -> tuple[bytes, bytes]:
    """The chunk hashes of `chunks` of `vector` and their Merkle proof."""
    tree = merkle.Tree(canonical.chunk_hashes(vector))
    return tree.leaves(chunks), tree.proof(chunks)


def own_frames(vector: npt.NDArray[np.float32]) -> list[Frame]:
    """Segment 1's UPDATE frames as a node sends its own update: a chunk a frame, each with
    the Merkle proof of its chunk and no chunk hashes, and no sender (the caller's)."""
    tree = merkle.Tree(canonical.chunk_hashes(vector))
    return list(
        frames_for(
            vector,
            SEGMENTS[1],
            kind=peer_pb2.KIND_UPDATE,
            round=ROUND,
            attempt=1,
            segment=1,
            sender="",
            prove=tree.proof,
            frame_chunks=1,
        )
    )


def flipped(frame: Frame) -> Frame:
    """`frame` with its payload's first byte flipped: its chunk no longer matches its proof."""
    payload = bytearray(frame.payload)
    payload[0] ^= 0x01
    return Frame(frame.header, memoryview(bytes(payload)))


def update_frames(
    node: Node,
    vector: npt.NDArray[np.float32],
    chunks: range,
    *,
    segment: int = 1,
    claim: str | None = None,
    hashes_of: npt.NDArray[np.float32] | None = None,
) -> list[Frame]:
    """The UPDATE frames `node` sends for `chunks` of `vector` (two chunks per frame), with
    the chunks' hashes and proof (of `hashes_of`'s, when given: a wrong list)."""
    hashes, proof = proved(vector if hashes_of is None else hashes_of, chunks)
    return list(
        frames_for(
            vector,
            chunks,
            kind=peer_pb2.KIND_UPDATE,
            round=ROUND,
            attempt=1,
            segment=segment,
            sender=claim or node.account,
            chunk_hashes=hashes,
            proof=proof,
            frame_chunks=2,
        )
    )


SEGMENTS = canonical.segments(canonical.num_chunks(NUMEL), 3)  # 4, 4, 3 chunks


def expect_segment_one(cluster: Cluster, vectors: dict[str, npt.NDArray[np.float32]]) -> Node:
    owner = cluster.nodes[1]
    commitments = {account: canonical.digest(v) for account, v in vectors.items()}
    owner.inbox.expect_updates(ROUND, {1: SEGMENTS[1]}, NUMEL, commitments)
    return owner


def test_reduce_scatter_delivers_every_segment_intact(cluster: Cluster) -> None:
    a, owner, c = cluster.nodes
    vectors = {n.account: model(i) for i, n in enumerate(cluster.nodes)}
    expect_segment_one(cluster, vectors)
    span = canonical.element_range(SEGMENTS[1], NUMEL)
    for sender in (a, c):
        frames = update_frames(sender, vectors[sender.account], SEGMENTS[1])
        assert len(frames) == 2  # 4 chunks, 2 per frame
        sent = sender.transport.push(owner.account, lambda f=frames: f, timeout=10)
        assert sent == len(span)
        got = owner.inbox.update(ROUND, sender.account, 1, timeout=5)
        assert got is not None
        np.testing.assert_array_equal(got, vectors[sender.account][span.start : span.stop])


def test_the_last_short_chunk_and_an_empty_segment_travel(cluster: Cluster) -> None:
    a, owner, _ = cluster.nodes
    vector = model(3)
    last = range(10, 11)  # the short chunk
    owner.inbox.expect_updates(ROUND, {2: last}, NUMEL, {a.account: canonical.digest(vector)})
    frames = update_frames(a, vector, last, segment=2)
    assert a.transport.push(owner.account, lambda: frames, timeout=10) == 7
    got = owner.inbox.update(ROUND, a.account, 2, timeout=5)
    assert got is not None and got.tolist() == vector[-7:].tolist()


def test_a_segment_sent_before_the_receiver_is_ready_is_not_ready_then_accepted(
    cluster: Cluster,
) -> None:
    a, owner, _ = cluster.nodes
    vectors = {a.account: model(1)}
    frames = update_frames(a, vectors[a.account], SEGMENTS[1])
    owner.inbox.ready_wait = 0.2  # the answer comes long before the caller's deadline
    with pytest.raises(NotReady):
        a.transport.push(owner.account, lambda: frames, timeout=2)
    expect_segment_one(cluster, vectors)
    assert a.transport.push(owner.account, lambda: frames, timeout=10) > 0
    assert owner.inbox.update(ROUND, a.account, 1, timeout=5) is not None


def test_bad_updates_are_refused_by_name_and_never_reach_the_buffer(cluster: Cluster) -> None:
    a, owner, c = cluster.nodes
    honest = model(1)
    vectors = {a.account: honest, c.account: model(2)}
    expect_segment_one(cluster, vectors)

    tampered = update_frames(a, honest, SEGMENTS[1])
    flipped = bytearray(tampered[1].payload)
    flipped[5] ^= 0xFF
    tampered[1] = Frame(tampered[1].header, memoryview(bytes(flipped)))
    with pytest.raises(InvalidMessage, match=r"chunk 6 .* does not match"):
        a.transport.push(owner.account, lambda: tampered, timeout=10)

    other = model(99)  # hashes that do not give the commitment on record
    with pytest.raises(InvalidMessage, match=r"chunk hashes: .* give root"):
        a.transport.push(
            owner.account,
            lambda: update_frames(a, honest, SEGMENTS[1], hashes_of=other),
            timeout=10,
        )
    assert owner.inbox.update(ROUND, a.account, 1, timeout=0.05) is None

    # the receiver keeps serving: the honest update still goes through, intact
    assert a.transport.push(owner.account, lambda: update_frames(a, honest, SEGMENTS[1]), 10)
    got = owner.inbox.update(ROUND, a.account, 1, timeout=5)
    span = canonical.element_range(SEGMENTS[1], NUMEL)
    assert got is not None and np.array_equal(got, honest[span.start : span.stop])
    assert owner.inbox.refused >= 1


def test_a_stream_of_one_frame_leaves_its_hashes_to_the_receiver(cluster: Cluster) -> None:
    """One frame holds every chunk of the stream: it carries the proof but not the hashes,
    which the owner computes from the payload and checks with the proof; a wrong payload
    then gives another root, and a first frame without hashes that is not the whole stream
    is refused."""
    a, owner, _ = cluster.nodes
    vector = model(1)
    expect_segment_one(cluster, {a.account: vector})
    leaves, proof = proved(vector, SEGMENTS[1])

    def stream(frame_chunks: int) -> list[Frame]:
        return list(
            frames_for(
                vector,
                SEGMENTS[1],
                kind=peer_pb2.KIND_UPDATE,
                round=ROUND,
                attempt=1,
                segment=1,
                sender=a.account,
                chunk_hashes=leaves,
                proof=proof,
                frame_chunks=frame_chunks,
            )
        )

    one = stream(len(SEGMENTS[1]))
    assert len(one) == 1 and one[0].header.chunk_hashes == b"" and one[0].header.proof == proof
    flipped = bytearray(one[0].payload)
    flipped[3] ^= 0x01
    wrong = [Frame(one[0].header, memoryview(bytes(flipped)))]
    with pytest.raises(InvalidMessage, match="give root"):
        a.transport.push(owner.account, lambda: wrong, timeout=10)
    two = stream(2)
    assert two[0].header.chunk_hashes == leaves  # two frames: the hashes travel
    stripped = [Frame(_header(two[0], chunk_hashes=b""), two[0].payload), two[1]]
    with pytest.raises(InvalidMessage, match=r"give root|proof is"):
        a.transport.push(owner.account, lambda: stripped, timeout=10)
    span = canonical.element_range(SEGMENTS[1], NUMEL)
    assert a.transport.push(owner.account, lambda: one, timeout=10) == len(span)
    got = owner.inbox.update(ROUND, a.account, 1, timeout=5)
    assert got is not None and np.array_equal(got, vector[span.start : span.stop])


def test_every_update_frame_proves_its_own_chunks_and_is_kept_once_checked(
    cluster: Cluster,
) -> None:
    """As nodes send them, UPDATE frames carry no chunk hashes, only the Merkle proof of
    their own chunks: the owner hashes each frame's chunks and checks that frame alone
    against the contributor's commitment before storing it. A wrong frame in the middle is
    refused and the frames before it stay; after a new attempt, the rest completes the row."""
    a, owner, _ = cluster.nodes
    vector = model(3)
    expect_segment_one(cluster, {a.account: vector})
    tree = merkle.Tree(canonical.chunk_hashes(vector))
    frames = own_frames(vector)
    assert len(frames) == len(SEGMENTS[1]) == 4
    for i, frame in enumerate(frames):
        own = range(SEGMENTS[1].start + i, SEGMENTS[1].start + i + 1)
        assert frame.header.chunk_hashes == b"" and frame.header.proof == tree.proof(own)
        assert frame.header.sender == ""
    cut = [*frames[:2], flipped(frames[2]), frames[3]]
    with pytest.raises(InvalidMessage, match="give root"):
        a.transport.push(owner.account, lambda: cut, timeout=10)
    kept = range(SEGMENTS[1].start, SEGMENTS[1].start + 2)
    held = owner.inbox.serve_update(ROUND, a.account, kept)
    span = canonical.element_range(kept, NUMEL)
    assert held is not None and np.array_equal(held[0], vector[span.start : span.stop])
    assert owner.inbox.serve_update(ROUND, a.account, SEGMENTS[1]) is None  # not the rest
    # a new attempt with the same segment: the checked frames carry over, the rest is sent
    commitments = {a.account: canonical.digest(vector)}
    owner.inbox.expect_updates(ROUND, {1: SEGMENTS[1]}, NUMEL, commitments, attempt=2)
    rest = [Frame(_header(f, attempt=2), f.payload) for f in frames[2:]]
    assert a.transport.push(owner.account, lambda: rest, timeout=10) == 2 * CHUNK
    got = owner.inbox.update(ROUND, a.account, 1, timeout=5)
    whole = canonical.element_range(SEGMENTS[1], NUMEL)
    assert got is not None and np.array_equal(got, vector[whole.start : whole.stop])


def test_non_finite_values_are_refused_even_when_committed_to(cluster: Cluster) -> None:
    a, owner, _ = cluster.nodes
    poisoned = model(1)
    span = canonical.element_range(SEGMENTS[1], NUMEL)
    poisoned[span.start + 10] = np.nan
    expect_segment_one(cluster, {a.account: poisoned})
    with pytest.raises(InvalidMessage, match="non-finite"):
        a.transport.push(owner.account, lambda: update_frames(a, poisoned, SEGMENTS[1]), 10)


def test_frames_outside_the_owned_segment_or_for_another_owner_are_refused(
    cluster: Cluster,
) -> None:
    a, owner, _ = cluster.nodes
    vector = model(1)
    expect_segment_one(cluster, {a.account: vector})
    with pytest.raises(InvalidMessage, match="outside the segment"):
        a.transport.push(owner.account, lambda: update_frames(a, vector, SEGMENTS[0]), 10)
    with pytest.raises(InvalidMessage, match="owner of segment 1"):
        a.transport.push(
            owner.account, lambda: update_frames(a, vector, SEGMENTS[1], segment=0), 10
        )


def test_a_sender_cannot_speak_for_another_account(cluster: Cluster) -> None:
    a, owner, c = cluster.nodes
    vectors = {c.account: model(2)}
    expect_segment_one(cluster, vectors)
    forged = update_frames(a, vectors[c.account], SEGMENTS[1], claim=c.account)
    with pytest.raises(Unauthorized, match="claims sender"):
        a.transport.push(owner.account, lambda: forged, timeout=10)


def test_merged_segments_follow_attempts(cluster: Cluster) -> None:
    a, b, _ = cluster.nodes
    merged = model(5)
    c = cluster.nodes[2]
    segments = {0: (a.account, c.account, SEGMENTS[0]), 1: (c.account, a.account, SEGMENTS[1])}
    b.inbox.expect_merged(ROUND, 2, segments, NUMEL)

    def frames(attempt: int, segment: int = 0) -> list[Frame]:
        return list(
            frames_for(
                merged,
                SEGMENTS[segment],
                kind=peer_pb2.KIND_MERGED,
                round=ROUND,
                attempt=attempt,
                segment=segment,
                sender=a.account,
                frame_chunks=3,
            )
        )

    with pytest.raises(Stale):
        a.transport.push(b.account, lambda: frames(1), timeout=5)
    b.inbox.ready_wait = 0.2  # the answer comes long before the caller's deadline
    with pytest.raises(NotReady):
        a.transport.push(b.account, lambda: frames(3), timeout=2)
    with pytest.raises(InvalidMessage, match="does not own segment 1"):
        a.transport.push(b.account, lambda: frames(2, segment=1), timeout=5)
    assert a.transport.push(b.account, lambda: frames(2), timeout=5) > 0
    got = b.inbox.merged(ROUND, 2, 0, timeout=5)
    span = canonical.element_range(SEGMENTS[0], NUMEL)
    assert got is not None and np.array_equal(got, merged[span.start : span.stop])
    b.inbox.finish_round(ROUND)
    with pytest.raises(Stale):
        a.transport.push(b.account, lambda: frames(2), timeout=5)


def test_catch_up_fetches_a_final_model_checked_against_its_digest(cluster: Cluster) -> None:
    a, b, _ = cluster.nodes
    final = model(8)
    b.inbox.publish_model(ROUND, final, canonical.chunk_hashes(final))
    got = a.transport.fetch_model(b.account, ROUND, canonical.digest(final), NUMEL, timeout=10)
    assert np.array_equal(got, final)
    # no hash list travels: every frame carries the proof of its own chunks (the whole
    # vector in one frame here: an empty proof) and the fetcher hashes the chunks itself
    raw = list(a.transport._fetch_frames(b.account, ROUND, 10))
    assert [bytes(f.header.chunk_hashes) for f in raw] == [b""] * len(raw)
    tree = merkle.Tree(canonical.chunk_hashes(final))
    for f in raw:
        first = f.header.first_chunk
        assert f.header.proof == tree.proof(range(first, first + -(-f.header.elements // CHUNK)))
    # each frame proves its chunks against the digest asked for: another digest refuses it
    with pytest.raises(InvalidMessage, match="give root"):
        a.transport.fetch_model(b.account, ROUND, hashlib.sha256(b"x").digest(), NUMEL, 10)
    # a round whose model the peer does not hold (yet): NotFound, which catch-up asks again
    with pytest.raises(NotFound, match="NOT_FOUND"):
        a.transport.fetch_model(b.account, ROUND + 1, canonical.digest(final), NUMEL, 10)


def test_size_limits_are_enforced() -> None:
    for kind in ("memory", "grpc"):
        small = Cluster(kind, 2, max_frame_elements=2 * CHUNK)
        try:
            a, owner = small.nodes
            vector = model(1)
            owner.inbox.expect_updates(
                ROUND, {1: SEGMENTS[1]}, NUMEL, {a.account: canonical.digest(vector)}
            )
            big = list(
                frames_for(
                    vector,
                    SEGMENTS[1],
                    kind=peer_pb2.KIND_UPDATE,
                    round=ROUND,
                    attempt=1,
                    segment=1,
                    sender=a.account,
                    chunk_hashes=proved(vector, SEGMENTS[1])[0],
                    proof=proved(vector, SEGMENTS[1])[1],
                    frame_chunks=4,
                )
            )
            with pytest.raises(InvalidMessage, match="exceeds the limit"):
                a.transport.push(owner.account, lambda f=big: f, timeout=5)
        finally:
            small.stop()


def test_peers_off_the_roster_are_refused_before_any_data_moves(cluster: Cluster) -> None:
    a, owner, _ = cluster.nodes
    outsider = cluster.make_node()
    try:
        cluster.roster.upsert(outsider.record)  # so that it can dial, but then it leaves
        vectors = {a.account: model(1), outsider.account: model(2)}
        expect_segment_one(cluster, vectors)
        assert outsider.transport.info(owner.account, timeout=5).account == owner.account
        cluster.roster.remove(outsider.account)
        frames = update_frames(outsider, vectors[outsider.account], SEGMENTS[1])
        with pytest.raises(Unauthorized):
            outsider.transport.push(owner.account, lambda: frames, timeout=5)
        assert owner.inbox.update(ROUND, outsider.account, 1, timeout=0.05) is None
        with pytest.raises(Unauthorized):
            a.transport.push(outsider.account, lambda: frames, timeout=5)
    finally:
        outsider.transport.close()
        if outsider.server is not None:
            outsider.server.stop(0)


# ------------------------------------------------------------------ relays, checks, fetches


def participants(cluster: Cluster, *nodes: Node) -> dict[str, npt.NDArray[np.float32]]:
    """An update per node, keyed by account: the round's participants."""
    return {n.account: model(10 + cluster.nodes.index(n)) for n in nodes}


def relay_frames(
    vector: npt.NDArray[np.float32], chunks: range, contributor: str, segment: int = 1
) -> list[Frame]:
    """What a relay streams of a contributor's row it holds alone (two chunks per frame)."""
    span = canonical.element_range(chunks, NUMEL)
    hashes, proof = proved(vector, chunks)
    return list(
        frames_for_row(
            vector[span.start : span.stop].copy(),
            chunks,
            NUMEL,
            kind=Kind.UPDATE,
            round=ROUND,
            attempt=1,
            segment=segment,
            sender=contributor,
            chunk_hashes=hashes,
            proof=proof,
            frame_chunks=2,
        )
    )


def test_a_relayed_update_is_stored_under_its_contributor(cluster: Cluster) -> None:
    a, owner, c = cluster.nodes
    vectors = participants(cluster, a, owner, c)
    expect_segment_one(cluster, vectors)
    frames = relay_frames(vectors[a.account], SEGMENTS[1], a.account)
    span = canonical.element_range(SEGMENTS[1], NUMEL)
    assert c.transport.push(owner.account, lambda: frames, timeout=10) == len(span)
    got = owner.inbox.update(ROUND, a.account, 1, timeout=5)
    assert got is not None and np.array_equal(got, vectors[a.account][span.start : span.stop])
    assert owner.inbox.update(ROUND, c.account, 1, timeout=0.05) is None  # not c's row
    assert owner.inbox.held_bytes(a.account) == 4 * len(span)
    assert owner.inbox.waiting_for(ROUND) == [c.account]


def test_a_relay_by_a_non_participant_or_for_one_is_refused(cluster: Cluster) -> None:
    a, owner, c = cluster.nodes
    vectors = participants(cluster, a, owner)  # c takes no part in this round
    expect_segment_one(cluster, vectors)
    frames = relay_frames(vectors[a.account], SEGMENTS[1], a.account)
    with pytest.raises(Unauthorized, match="claims sender"):
        c.transport.push(owner.account, lambda: frames, timeout=10)
    stranger = relay_frames(model(77), SEGMENTS[1], c.account)  # a relays a non-participant
    with pytest.raises(Unauthorized, match="must name a participant"):
        a.transport.push(owner.account, lambda: stranger, timeout=10)
    assert owner.inbox.held_bytes() == 0  # nothing allocated for a refused relay
    assert owner.inbox.update(ROUND, a.account, 1, timeout=0.05) is None


def test_a_relayed_update_is_checked_against_its_contributors_commitment(
    cluster: Cluster,
) -> None:
    a, owner, c = cluster.nodes
    vectors = participants(cluster, a, owner, c)
    expect_segment_one(cluster, vectors)
    forged = relay_frames(vectors[c.account], SEGMENTS[1], a.account)  # c's data as a's
    with pytest.raises(InvalidMessage, match="give root"):
        c.transport.push(owner.account, lambda: forged, timeout=10)
    assert owner.inbox.held_bytes() == 0


def hashes_frame(node: Node, segment: int, hashes: bytes, attempt: int = 1) -> Frame:
    return merged_hashes_frame(
        round=ROUND,
        attempt=attempt,
        segment=segment,
        sender=node.account,
        chunk_hashes=hashes,
        numel=NUMEL,
    )


def _hashes_unnamed(digest: bytes) -> Frame:
    """A MERGED_HASHES frame of segment 0 without a sender: the caller's."""
    return merged_hashes_frame(
        round=ROUND, attempt=1, segment=0, sender="", chunk_hashes=digest, numel=NUMEL
    )


def test_merged_hashes_come_from_the_checker_only_as_one_digest(
    cluster: Cluster,
) -> None:
    """MERGED_HASHES is one 32-byte digest of the checker's merge of its segment (the Merkle
    root of the segment's chunk hashes as a tree of their own), from the checker only; an
    empty sender names the caller, another's name is refused."""
    merger, receiver, checker = cluster.nodes
    merged = model(5)
    segment = SEGMENTS[0]
    receiver.inbox.expect_merged(ROUND, 1, {0: (merger.account, checker.account, segment)}, NUMEL)
    span = canonical.element_range(segment, NUMEL)
    leaves = canonical.chunk_hashes(merged[span.start : span.stop])
    hashes = merkle.root(leaves)
    assert len(hashes) == canonical.HASH_BYTES
    assert receiver.inbox.merged_hashes(ROUND, 1, 0, timeout=0) is None

    with pytest.raises(InvalidMessage, match="does not check segment 0"):
        merger.transport.push(receiver.account, lambda: [hashes_frame(merger, 0, hashes)], 5)
    for wrong in (hashes[:-1], leaves, hashes + hashes, b""):  # the old hash list too
        with pytest.raises(InvalidMessage, match="bytes of hashes for segment 0"):
            checker.transport.push(
                receiver.account, lambda w=wrong: [hashes_frame(checker, 0, w)], 5
            )
    with pytest.raises(InvalidMessage, match="not expected"):
        checker.transport.push(receiver.account, lambda: [hashes_frame(checker, 1, hashes)], 5)
    with pytest.raises(Unauthorized, match="claims sender"):  # the merger cannot speak for it
        forged = hashes_frame(checker, 0, hashes)
        merger.transport.push(receiver.account, lambda: [forged], 5)
    with pytest.raises(InvalidMessage, match="does not check segment 0"):  # empty: the caller
        unnamed = _hashes_unnamed(hashes)
        merger.transport.push(receiver.account, lambda: [unnamed], 5)
    assert receiver.inbox.held_bytes() == 0

    sent = checker.transport.push(receiver.account, lambda: [_hashes_unnamed(hashes)], 5)
    assert sent == 0  # no elements: the digest is the message
    assert receiver.inbox.merged_hashes(ROUND, 1, 0, timeout=5) == hashes
    assert receiver.inbox.held_bytes(checker.account) == len(hashes)
    with pytest.raises(InvalidMessage, match="does not own segment 0"):  # data: merger only
        data = list(
            frames_for(
                merged,
                segment,
                kind=Kind.MERGED,
                round=ROUND,
                attempt=1,
                segment=0,
                sender=checker.account,
            )
        )
        checker.transport.push(receiver.account, lambda: data, 5)


def fetch_setup(cluster: Cluster) -> tuple[Node, Node, Node, dict[str, npt.NDArray[np.float32]]]:
    """`owner` owns segment 1, offers its own update and holds a's row (pushed by a)."""
    a, owner, c = cluster.nodes
    vectors = participants(cluster, a, owner, c)
    expect_segment_one(cluster, vectors)
    mine = vectors[owner.account]
    owner.inbox.offer_update(ROUND, mine, canonical.chunk_hashes(mine))
    frames = update_frames(a, vectors[a.account], SEGMENTS[1])
    assert a.transport.push(owner.account, lambda: frames, timeout=10)
    return a, owner, c, vectors


def test_fetch_update_serves_its_own_update_and_rows_it_holds(cluster: Cluster) -> None:
    a, owner, c, vectors = fetch_setup(cluster)
    commit = {account: canonical.digest(v) for account, v in vectors.items()}
    everything = range(canonical.num_chunks(NUMEL))
    for sender, chunks in ((owner, everything), (owner, range(10, 11)), (a, SEGMENTS[1])):
        for frames_from in (range(0, 0), chunks):  # an empty request too
            values, hashes, proof = c.transport.fetch_update(
                owner.account,
                ROUND,
                sender.account,
                frames_from,
                NUMEL,
                commit[sender.account],
                timeout=10,
            )
            span = canonical.element_range(frames_from, NUMEL)
            assert np.array_equal(values, vectors[sender.account][span.start : span.stop])
            # the hashes of exactly those chunks, and their proof (for a's row, derived from
            # what a's segment proof proved at the owner)
            assert (hashes, proof) == proved(vectors[sender.account], frames_from)
    part = range(SEGMENTS[1].start + 1, SEGMENTS[1].stop - 1)
    values, hashes, proof = c.transport.fetch_update(
        owner.account, ROUND, a.account, part, NUMEL, commit[a.account], timeout=10
    )
    span = canonical.element_range(part, NUMEL)
    assert np.array_equal(values, vectors[a.account][span.start : span.stop])
    assert (hashes, proof) == proved(vectors[a.account], part)


def test_fetch_update_is_not_found_unless_held_and_refused_to_strangers(
    cluster: Cluster,
) -> None:
    a, owner, c, vectors = fetch_setup(cluster)
    commit = {account: canonical.digest(v) for account, v in vectors.items()}
    for sender, chunks in (
        (c, SEGMENTS[1]),  # never received
        (a, SEGMENTS[0]),  # not a segment it owns
        (a, range(SEGMENTS[1].start, SEGMENTS[1].stop + 1)),  # one chunk more than held
    ):
        with pytest.raises(NotFound, match="NOT_FOUND"):
            c.transport.fetch_update(
                owner.account, ROUND, sender.account, chunks, NUMEL, commit[sender.account], 10
            )
    with pytest.raises(NotReady):  # a round it knows nothing of yet
        c.transport.fetch_update(
            owner.account, ROUND + 1, a.account, SEGMENTS[1], NUMEL, commit[a.account], 10
        )
    outsider = cluster.make_node()
    try:
        cluster.roster.upsert(outsider.record)
        with pytest.raises(Unauthorized, match="not a participant"):
            outsider.transport.fetch_update(
                owner.account, ROUND, a.account, SEGMENTS[1], NUMEL, commit[a.account], 10
            )
    finally:
        outsider.transport.close()
        if outsider.server is not None:
            outsider.server.stop(0)
    owner.inbox.finish_round(ROUND)
    with pytest.raises(Stale):
        c.transport.fetch_update(
            owner.account, ROUND, owner.account, SEGMENTS[1], NUMEL, commit[owner.account], 10
        )


class Tamper(Transport):
    """A client whose FetchUpdate answers pass through `mangle` before they are checked:
    what a dishonest server could send, over the real transport below."""

    def __init__(self, inner: Transport, mangle: Callable[[list[Frame]], list[Frame]]) -> None:
        self.account = inner.account
        self.inner = inner
        self.wire = inner.wire
        self.mangle = mangle

    def _push_once(self, peer: str, frames: FrameSource, timeout: float) -> int:
        return self.inner._push_once(peer, frames, timeout)

    def _fetch_frames(self, peer: str, round: int, timeout: float) -> Iterable[Frame]:
        return self.inner._fetch_frames(peer, round, timeout)

    def _fetch_update_frames(
        self, peer: str, round: int, sender: str, chunks: range, timeout: float
    ) -> Iterable[Frame]:
        got = list(self.inner._fetch_update_frames(peer, round, sender, chunks, timeout))
        return self.mangle(got)

    def info(self, peer: str, timeout: float, round: int = 0) -> PeerInfo:
        return self.inner.info(peer, timeout, round)

    def close(self) -> None:
        """The inner transport is the cluster's."""


def _header(frame: Frame, **changes: Any) -> peer_pb2.FrameHeader:
    header = peer_pb2.FrameHeader()
    header.CopyFrom(frame.header)
    for name, value in changes.items():
        setattr(header, name, value)
    return header


def _forged(frames: list[Frame]) -> list[Frame]:
    flipped = bytearray(frames[-1].payload)
    flipped[7] ^= 0x10
    return [*frames[:-1], Frame(frames[-1].header, memoryview(bytes(flipped)))]


def _wrong_list(frames: list[Frame]) -> list[Frame]:
    other = proved(model(1234), SEGMENTS[1])[0]  # another vector's hashes, the honest proof
    return [Frame(_header(frames[0], chunk_hashes=other), frames[0].payload), *frames[1:]]


def _wrong_proof(frames: list[Frame]) -> list[Frame]:
    other = proved(model(1234), SEGMENTS[1])[1]
    return [Frame(_header(frames[0], proof=other), frames[0].payload), *frames[1:]]


def _outside(frames: list[Frame]) -> list[Frame]:
    moved = _header(frames[-1], first_chunk=frames[-1].header.first_chunk + 4)
    return [*frames, Frame(moved, frames[-1].payload)]


def _as_someone_else(frames: list[Frame]) -> list[Frame]:
    return [Frame(_header(f, sender="0x" + "11" * 20), f.payload) for f in frames]


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (_forged, "(does not match|give root)"),  # one frame: its hashes give another root
        (_wrong_list, "give root"),
        (_wrong_proof, "give root"),
        (lambda frames: [frames[0], *frames], "twice"),
        (lambda frames: frames[:-1], "missing"),
        (_outside, "(outside the chunks asked for|not every chunk)"),
        (_as_someone_else, "sent frames of"),
    ],
    ids=[
        "forged chunk",
        "wrong hashes",
        "wrong proof",
        "duplicate chunk",
        "missing chunk",
        "outside",
        "who",
    ],
)
def test_fetch_update_refuses_a_dishonest_answer(
    cluster: Cluster, mangle: Callable[[list[Frame]], list[Frame]], reason: str
) -> None:
    a, owner, c, vectors = fetch_setup(cluster)
    client = Tamper(c.transport, mangle)
    with pytest.raises(InvalidMessage, match=f"{owner.account}: update of .*{reason}"):
        client.fetch_update(
            owner.account,
            ROUND,
            a.account,
            SEGMENTS[1],
            NUMEL,
            canonical.digest(vectors[a.account]),
            timeout=10,
        )
    honest = Tamper(c.transport, lambda frames: frames)  # the same stream, untouched
    values, _, _ = honest.fetch_update(
        owner.account,
        ROUND,
        a.account,
        SEGMENTS[1],
        NUMEL,
        canonical.digest(vectors[a.account]),
        10,
    )
    span = canonical.element_range(SEGMENTS[1], NUMEL)
    assert np.array_equal(values, vectors[a.account][span.start : span.stop])


def test_rows_carry_over_into_the_next_attempts_segments_where_they_overlap(
    cluster: Cluster,
) -> None:
    a, owner, c = cluster.nodes
    vectors = participants(cluster, a, owner, c)
    commitments = {account: canonical.digest(v) for account, v in vectors.items()}
    owner.inbox.expect_updates(ROUND, {1: range(4, 8)}, NUMEL, commitments, attempt=1)
    frames = update_frames(a, vectors[a.account], range(4, 8))
    assert a.transport.push(owner.account, lambda: frames, timeout=10)
    # attempt 2: it merges chunks 2..5 and checks chunks 7..10
    owner.inbox.expect_updates(ROUND, {0: range(2, 6), 2: range(7, 11)}, NUMEL, commitments, 2)
    assert sorted(owner.inbox.waiting_for(ROUND)) == sorted([a.account, c.account])
    both = (canonical.element_range(r, NUMEL) for r in (range(2, 6), range(7, 11)))
    assert owner.inbox.held_bytes(a.account) == 4 * sum(len(span) for span in both)
    rest = [
        (0, range(2, 4)),
        (2, range(8, 11)),
    ]
    for segment, chunks in rest:

        def again(s: int = segment, ch: range = chunks) -> list[Frame]:
            sent = update_frames(a, vectors[a.account], ch, segment=s)
            return [Frame(_header(f, attempt=2), f.payload) for f in sent]

        assert a.transport.push(owner.account, again, timeout=10)
    for segment, chunks in ((0, range(2, 6)), (2, range(7, 11))):
        got = owner.inbox.update(ROUND, a.account, segment, timeout=5)
        span = canonical.element_range(chunks, NUMEL)
        assert got is not None and np.array_equal(got, vectors[a.account][span.start : span.stop])
    assert owner.inbox.waiting_for(ROUND) == [c.account]
