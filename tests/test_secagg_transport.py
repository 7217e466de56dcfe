"""The p2p layer's part of secure aggregation, on both transports (gRPC with mutual TLS on
127.0.0.1, port 0, and in-memory): masked rows (4- or 8-byte words) travel the UPDATE path
bit-exact, and the SecAgg control call carries small request/reply messages to the
round's handler in the receiver's Inbox (docs/round-protocol.md#secure-aggregation-messages).

Built on tests/test_transport.py's Cluster: real identities, a roster, an Inbox each.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest

from swarmnode import canonical, merkle
from swarmnode.p2p import elements, peer_pb2
from swarmnode.p2p.errors import InvalidMessage, NotReady, Refused, Stale, Unauthorized
from swarmnode.p2p.frames import Frame, frame_chunks_for, frames_for, payload_array
from swarmnode.p2p.grpc_transport import GrpcTransport
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.messages import MAX_SECAGG_BODY, SecAggKind, SecAggMessage
from tests.test_transport import NUMEL, ROUND, SEGMENTS, Cluster, Node

WORDS = [np.dtype("<u4"), np.dtype("<u8")]


@pytest.fixture(params=["memory", "grpc"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    built = Cluster(request.param, 3)
    yield built
    built.stop()


def masked(seed: int, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """A masked vector's words: random bits, and in every chunk (16 elements here) bit
    patterns that are NaN or infinite as floats (a word is any bit pattern: nothing on the
    way may read them as floats)."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, np.iinfo(dtype).max, NUMEL, dtype=dtype, endpoint=True)
    as_floats = words.view(np.float32 if dtype.itemsize == 4 else np.float64)
    as_floats[::16], as_floats[1::16], as_floats[2::16] = np.nan, np.inf, -np.inf
    words[3::16] = np.iinfo(dtype).max
    words[4::16] = 0x7FC00001 if dtype.itemsize == 4 else 0x7FC000017FC00001  # NaN halves
    return words


def root_of(words: npt.NDArray[Any]) -> bytes:
    return merkle.root(elements.chunk_hashes(words))


def own_frames(words: npt.NDArray[Any], chunks: range, *, attempt: int = 1) -> list[Frame]:
    """Segment 1's UPDATE frames as a node sends its own masked row: one chunk a frame, each
    with the Merkle proof of its chunk against the masked root."""
    tree = merkle.Tree(elements.chunk_hashes(words))
    return list(
        frames_for(
            words,
            chunks,
            kind=peer_pb2.KIND_UPDATE,  # type: ignore[arg-type]
            round=ROUND,
            attempt=attempt,
            segment=1,
            sender="",
            prove=tree.proof,
            frame_chunks=1,
        )
    )


def expect_words(owner: Node, rows: dict[str, npt.NDArray[Any]], dtype: Any, **kw: Any) -> None:
    commitments = {account: root_of(words) for account, words in rows.items()}
    owner.inbox.expect_updates(ROUND, {1: SEGMENTS[1]}, NUMEL, commitments, dtype=dtype, **kw)


# ------------------------------------------------------------------ words on the wire


def test_word_chunk_hashes_are_blake3_of_little_endian_words() -> None:
    from blake3 import blake3

    for dtype in WORDS:
        words = masked(1, dtype)
        hashes = elements.chunk_hashes(words)
        first = words[:16].astype(dtype.newbyteorder("<")).tobytes()
        assert hashes[:32] == blake3(first).digest()
        assert len(hashes) == 32 * canonical.num_chunks(NUMEL)
    floats = np.random.default_rng(2).standard_normal(NUMEL).astype(np.float32)
    assert elements.chunk_hashes(floats) == canonical.chunk_hashes(floats)
    # a frame is about 2 MiB of payload whatever the element size: half the 8-byte words
    big = 1 << 22
    assert frame_chunks_for(big, 8) * 2 == frame_chunks_for(big, 4) == frame_chunks_for(big)


@pytest.mark.parametrize("dtype", WORDS, ids=["u4", "u8"])
def test_word_rows_travel_bit_exact_and_other_types_are_refused(
    cluster: Cluster, dtype: np.dtype[Any]
) -> None:
    a, owner, c = cluster.nodes
    rows = {a.account: masked(1, dtype), c.account: masked(2, dtype)}
    expect_words(owner, rows, dtype)
    span = canonical.element_range(SEGMENTS[1], NUMEL)
    frames = own_frames(rows[a.account], SEGMENTS[1])
    assert all(f.header.dtype == elements.wire_dtype(dtype) for f in frames)
    assert all(len(f.payload) == f.header.elements * dtype.itemsize for f in frames)

    # another element type is refused by name, before anything is stored
    other = WORDS[1] if dtype == WORDS[0] else WORDS[0]
    wrong = own_frames(rows[a.account].astype(other), SEGMENTS[1])
    with pytest.raises(InvalidMessage, match=rf"{other.name} \(dtype \d\).*rows are {dtype.name}"):
        a.transport.push(owner.account, lambda: wrong, timeout=10)
    as_floats = own_frames(rows[a.account].view(np.uint32)[:NUMEL].view(np.float32), SEGMENTS[1])
    with pytest.raises(InvalidMessage, match=r"float32 \(dtype 1\)"):
        a.transport.push(owner.account, lambda: as_floats, timeout=10)
    # a word flipped: its chunk no longer gives the masked root
    payload = bytearray(frames[1].payload)
    payload[0] ^= 0x01
    tampered = [frames[0], Frame(frames[1].header, memoryview(bytes(payload)))]
    with pytest.raises(InvalidMessage, match="give root"):
        a.transport.push(owner.account, lambda: tampered, timeout=10)

    for sender in (a, c):  # NaN-as-float32 bit patterns are fine words
        sent = own_frames(rows[sender.account], SEGMENTS[1])
        assert sender.transport.push(owner.account, lambda s=sent: s, timeout=10) == len(span)
        got = owner.inbox.update(ROUND, sender.account, 1, timeout=5)
        assert got is not None and got.dtype == dtype
        assert got.tobytes() == rows[sender.account][span.start : span.stop].tobytes()

    # merged data stays float32: words on the all-gather are refused by name
    owner.inbox.expect_merged(ROUND, 1, {0: (a.account, c.account, SEGMENTS[0])}, NUMEL)
    merged = list(
        frames_for(
            rows[a.account],
            SEGMENTS[0],
            kind=peer_pb2.KIND_MERGED,  # type: ignore[arg-type]
            round=ROUND,
            attempt=1,
            segment=0,
            sender="",
        )
    )
    with pytest.raises(InvalidMessage, match=rf"{dtype.name} \(dtype \d\) elements where float32"):
        a.transport.push(owner.account, lambda: merged, timeout=10)


def test_word_rows_carry_over_into_a_new_attempt_and_are_fetched(cluster: Cluster) -> None:
    """Chunks of a masked row checked in attempt 1 are carried into attempt 2's segments;
    the rest arrives for attempt 2, and FetchUpdate serves the row (from the owner that
    holds it and from the contributor itself) bit-exact, in words, with its proofs."""
    a, owner, c = cluster.nodes
    dtype = WORDS[1]
    row = masked(3, dtype)
    expect_words(owner, {a.account: row, c.account: masked(4, dtype)}, dtype)
    frames = own_frames(row, SEGMENTS[1])
    assert a.transport.push(owner.account, lambda: frames[:2], timeout=10) == 32
    # attempt 2: the owner's segment 1 now starts one chunk earlier
    moved = range(SEGMENTS[1].start - 1, SEGMENTS[1].stop)
    owner.inbox.expect_updates(
        ROUND, {1: moved}, NUMEL, {a.account: root_of(row), c.account: b"\0" * 32},
        attempt=2, dtype=dtype,
    )  # fmt: skip
    rest = own_frames(row, range(moved.start, moved.start + 1), attempt=2)
    rest += own_frames(row, range(SEGMENTS[1].start + 2, SEGMENTS[1].stop), attempt=2)
    assert a.transport.push(owner.account, lambda: rest, timeout=10) == 16 * 3
    got = owner.inbox.update(ROUND, a.account, 1, timeout=5)
    span = canonical.element_range(moved, NUMEL)
    assert got is not None and got.tobytes() == row[span.start : span.stop].tobytes()

    a.inbox.offer_update(ROUND, row, elements.chunk_hashes(row))
    a.inbox.expect_updates(ROUND, {}, NUMEL, {a.account: root_of(row), c.account: b"\0" * 32})
    for holder in (owner, a):
        values, hashes, proof = c.transport.fetch_update(
            holder.account, ROUND, a.account, moved, NUMEL, root_of(row), 10, dtype=dtype
        )
        assert values.dtype == dtype and values.tobytes() == row[span.start : span.stop].tobytes()
        merkle.verify_range(root_of(row), canonical.num_chunks(NUMEL), moved, hashes, proof)
    with pytest.raises(InvalidMessage, match=r"uint64 \(dtype 3\) elements where float32"):
        c.transport.fetch_update(owner.account, ROUND, a.account, moved, NUMEL, root_of(row), 10)


def test_payload_array_reads_each_type_without_copying() -> None:
    for dtype in [np.dtype("<f4"), *WORDS]:
        values = np.arange(20, dtype=dtype)
        (frame,) = frames_for(
            values, range(2), kind=peer_pb2.KIND_UPDATE,  # type: ignore[arg-type]
            round=1, attempt=1, segment=0, sender="",
        )  # fmt: skip
        got = payload_array(frame, None)
        assert got.dtype == dtype and np.shares_memory(got, np.frombuffer(frame.payload, "u1"))
        assert got.tolist() == values.tolist()


# ------------------------------------------------------------------ the SecAgg call


def message(body: bytes = b"hello", kind: SecAggKind = SecAggKind.ANNOUNCE) -> SecAggMessage:
    return SecAggMessage(ROUND, 2, kind, body)


def echo(caller: str, got: SecAggMessage, deadline: float) -> bytes:
    return f"{caller}|{got.kind.name}|{got.attempt}|".encode() + got.body[::-1]


def test_a_secagg_message_reaches_the_round_handler_and_its_reply_comes_back(
    cluster: Cluster,
) -> None:
    a, b, _ = cluster.nodes
    b.inbox.serve_secagg(ROUND, echo)
    sent_before, _ = a.transport.wire.totals()
    reply = a.transport.secagg(b.account, message(b"\x00\xffbody"), timeout=10)
    assert reply == f"{a.account}|ANNOUNCE|2|".encode() + b"ydob\xff\x00"
    assert a.transport.wire.totals()[0] - sent_before >= len(b"\x00\xffbody") + 5  # counted
    for kind in SecAggKind:
        assert a.transport.secagg(b.account, message(b"", kind), timeout=10).endswith(
            f"|{kind.name}|2|".encode()
        )


def test_a_message_that_comes_before_its_handler_waits_for_it(cluster: Cluster) -> None:
    a, b, _ = cluster.nodes
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(a.transport.secagg, b.account, message(b"early"), 20)
        assert b.inbox.early_frames(1, timeout=10), "the message never waited in b's inbox"
        b.inbox.serve_secagg(ROUND, echo)
        assert pending.result(timeout=20).endswith(b"ylrae")


def test_no_handler_in_time_is_not_ready_and_a_finished_round_is_stale(cluster: Cluster) -> None:
    a, b, _ = cluster.nodes
    b.inbox.serve_secagg(ROUND + 1, echo)  # a first call sets up the channel, whatever it costs
    assert a.transport.secagg(b.account, SecAggMessage(ROUND + 1, 1, SecAggKind.REVEAL, b""), 10)
    b.inbox.ready_wait = 0.05
    with pytest.raises(NotReady, match="no secure-aggregation ANNOUNCE taken for round"):
        a.transport.secagg(b.account, message(), timeout=1.0)
    b.inbox.serve_secagg(ROUND, echo)
    b.inbox.finish_round(ROUND)
    with pytest.raises(Stale, match=f"round {ROUND} is over"):
        a.transport.secagg(b.account, message(), timeout=10)
    b.inbox.serve_secagg(ROUND, echo)  # too late: the round stays over
    with pytest.raises(Stale):
        a.transport.secagg(b.account, message(), timeout=10)


def test_a_handler_refusal_reaches_the_caller_by_type_with_its_reason(cluster: Cluster) -> None:
    a, b, _ = cluster.nodes
    calls: list[SecAggKind] = []
    ready = threading.Event()

    def handler(caller: str, got: SecAggMessage, deadline: float) -> bytes:
        calls.append(got.kind)
        if got.kind == SecAggKind.REVEAL:
            raise Refused("revealing both shares of 0xabc would unmask its update")
        if got.kind == SecAggKind.MASKED_ROOT:
            raise InvalidMessage("a masked root of 31 bytes")
        if not ready.is_set():  # ROWS_COMPLETE: not yet, then yes
            ready.set()
            raise NotReady("rows of attempt 2 not complete here")
        return b"ok"

    b.inbox.serve_secagg(ROUND, handler)
    with pytest.raises(Refused, match=f"{b.account} refused: revealing both shares of 0xabc"):
        a.transport.secagg(b.account, message(kind=SecAggKind.REVEAL), timeout=10)
    with pytest.raises(InvalidMessage, match="a masked root of 31 bytes"):
        a.transport.secagg(b.account, message(kind=SecAggKind.MASKED_ROOT), timeout=10)
    assert a.transport.secagg(b.account, message(kind=SecAggKind.ROWS_COMPLETE), 10) == b"ok"
    assert calls.count(SecAggKind.ROWS_COMPLETE) == 2  # asked again after NotReady
    assert calls.count(SecAggKind.REVEAL) == 1  # a refusal is not retried


def test_oversized_bodies_and_callers_off_the_roster_are_refused(cluster: Cluster) -> None:
    a, b, _ = cluster.nodes
    b.inbox.serve_secagg(ROUND, echo)
    with pytest.raises(InvalidMessage, match=f"exceeds the limit of {MAX_SECAGG_BODY}"):
        message(b"\0" * (MAX_SECAGG_BODY + 1))
    assert len(a.transport.secagg(b.account, message(b"\1" * MAX_SECAGG_BODY), 20)) > (
        MAX_SECAGG_BODY
    )
    stranger = cluster.make_node()
    try:  # on the roster long enough to connect, then off it: refused on the call itself
        cluster.roster.upsert(stranger.record)
        assert stranger.transport.secagg(b.account, message(b"hi"), timeout=10).endswith(b"ih")
        cluster.roster.remove(stranger.account)
        with pytest.raises(Unauthorized):
            stranger.transport.secagg(b.account, message(), timeout=10)
        if cluster.kind == "grpc":  # a raw oversized request: refused before it is parsed
            assert isinstance(a.transport, GrpcTransport)
            raw = a.transport._channel(b.account).unary_unary(
                "/swarmnode.p2p.Peer/SecAgg",
                request_serializer=lambda data: data,
                response_deserializer=lambda data: data,
            )
            big = peer_pb2.SecAggRequest(round=ROUND, kind=1, body=b"\0" * (MAX_SECAGG_BODY + 1))
            with pytest.raises(grpc.RpcError) as refused:
                raw(big.SerializeToString(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "exceeds the limit" in (refused.value.details() or "")
    finally:
        stranger.transport.close()
        if stranger.server is not None:
            stranger.server.stop(0)


def test_an_inbox_alone_routes_by_round() -> None:
    """Two rounds' handlers side by side; finishing one leaves the other serving."""
    inbox = Inbox("0x" + "11" * 20, ready_wait=0.0)
    inbox.serve_secagg(ROUND, lambda caller, got, deadline: b"seven")
    inbox.serve_secagg(ROUND + 1, lambda caller, got, deadline: b"eight")
    caller = "0x" + "22" * 20
    assert inbox.secagg(caller, message(), 0.0, 0.0) == b"seven"
    inbox.finish_round(ROUND)
    with pytest.raises(Stale):
        inbox.secagg(caller, message(), 0.0, 0.0)
    later = SecAggMessage(ROUND + 1, 1, SecAggKind.REVEAL, b"")
    assert inbox.secagg(caller, later, 0.0, 0.0) == b"eight"
