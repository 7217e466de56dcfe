"""Fuzzing a running PeerServer: whatever a roster member throws at it, the server answers with
the documented status, keeps serving, and nothing but honest data reaches its buffers.

One receiver R serves a real gRPC PeerServer over mutual TLS on 127.0.0.1 (port 0) for the
whole module. The attacker A is a legitimate roster member, so its messages get through TLS
and the roster gate and reach the Inbox checks; H is a second, honest member. A opens its own
channel with the credentials GrpcTransport uses and sends raw bytes, bypassing the client's
serializer. Every family is a hypothesis strategy (derandomize=True, no deadline) or a
deterministic enumeration. After every case the buffers are compared bit for bit with the
honest data; at the end H and A push honestly through GrpcTransport while A floods bad
messages from several threads.

What R expects (set up in the module fixture):
- round 7, attempt 1, UPDATE: R owns segment 2 (chunks 5 and 6, the last one short); A and
  H committed to honest vectors. A's stream is filled honestly before the fuzzing starts;
  H's stays empty until the end, except for H's own genuine frames relayed by A (a relay
  between participants is accepted: checked against H's commitment), so a forged frame
  that slipped in would show.
- round 7, attempt 2, MERGED: A merges segment 0 (H checks it), H merges segment 1 (A checks
  it); filled the same way.
- R offers its own update of round 7 for FetchUpdate, and serves A's row it holds.
- rounds below 5 are over here (stale); round 8 expects an update from A whose commitment
  covers NaN/Inf values (the non-finite family); a final model of round 4 is published.
- Inbox limits are low (2 chunks per frame, 8 chunks per vector), so oversized frames are
  cheap to build.

Status families: INVALID_ARGUMENT for bad data, FAILED_PRECONDITION for stale, UNAVAILABLE
with details starting "not ready" for future rounds and attempts, PERMISSION_DENIED for a
forged sender; INTERNAL or UNKNOWN would mean an unhandled exception and always fails.

UPDATE streams carry in their first frame the chunk hashes of the stream's chunks and their
Merkle proof, checked against the contributor's commitment; the sender is named in the first
frame only, later frames inherit it (an empty sender after a named one is no forgery).

MERGED segments carry no hash list: their owner is trusted to merge them
(docs/trust.md#threat-model),
so a MERGED frame moved to another chunk inside the owner's own segment is accepted by
design. The header mutations never move a MERGED frame inside its segment, which keeps the
"buffers hold exactly the honest data" check exact.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from google.protobuf.message import DecodeError, Message
from hypothesis import HealthCheck, currently_in_test_context, given, note, settings
from hypothesis import strategies as st

from swarmnode import __version__, canonical, merkle
from swarmnode.address import normalize
from swarmnode.identity import TlsIdentity
from swarmnode.p2p import frames as codec
from swarmnode.p2p import peer_pb2
from swarmnode.p2p.errors import InvalidMessage
from swarmnode.p2p.frames import MAX_HEADER_BYTES, Frame, frames_for
from swarmnode.p2p.grpc_transport import (
    MESSAGE_LIMIT,
    NOT_READY,
    SERVICE,
    GrpcTransport,
    PeerServer,
)
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.roster import PeerRecord, Roster

pytestmark = pytest.mark.slow

CHUNK = 16  # a vector this small has chunks of 16 elements
NUMEL = 6 * CHUNK + 7  # 7 chunks, the last one short
SEGMENTS = canonical.segments(canonical.num_chunks(NUMEL), 3)  # chunks 0..2, 3..4, 5..6
UPDATE_CHUNKS = SEGMENTS[2]  # R owns segment 2
MERGED_CHUNKS = SEGMENTS[0]  # A owns segment 0 in the all-gather
H_MERGED_CHUNKS = SEGMENTS[1]  # H owns segment 1
UPDATE_SPAN = canonical.element_range(UPDATE_CHUNKS, NUMEL)
MERGED_SPAN = canonical.element_range(MERGED_CHUNKS, NUMEL)
H_MERGED_SPAN = canonical.element_range(H_MERGED_CHUNKS, NUMEL)
MAX_FRAME = 2 * CHUNK
MAX_VECTOR = 8 * CHUNK
FLOOR = 5  # rounds below this are over at R
ROUND = 7
NAN_ROUND = 8
MODEL_ROUND = 4
UPDATE_ATTEMPT = 1  # the receiver's current attempt for UPDATE frames of round 7
ATTEMPT = 2  # ... and for MERGED frames
TIMEOUT = 10.0
U64 = 2**64 - 1
U32 = 2**32 - 1
I32 = (-(2**31), 2**31 - 1)


def account(name: str) -> str:
    return "0x" + hashlib.sha256(name.encode()).hexdigest()[:40]


R = normalize(account("receiver"))  # as its Info reply names it
A = account("attacker")
H = account("honest")

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
STALE = grpc.StatusCode.FAILED_PRECONDITION
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE  # only ever with a "not ready" detail
DENIED = grpc.StatusCode.PERMISSION_DENIED
NOT_FOUND = grpc.StatusCode.NOT_FOUND
TOO_BIG = grpc.StatusCode.RESOURCE_EXHAUSTED
REFUSALS = frozenset({INVALID, STALE, UNAVAILABLE, DENIED})
CRASHES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})

CASES: Counter[str] = Counter()  # RPCs sent per family, printed once at the end
SERVER_ERRORS: list[str] = []  # ERROR log records from grpc or swarmnode while fuzzing
THREAD_ERRORS: list[str] = []  # exceptions that killed a thread


def model(seed: int) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).standard_normal(NUMEL).astype(np.float32)


A_UPDATE = model(1)
H_UPDATE = model(2)
A_MERGED = model(3)
H_MERGED = model(4)
FINAL = model(5)
R_UPDATE = model(6)
A_HASHES = canonical.chunk_hashes(A_UPDATE)
H_HASHES = canonical.chunk_hashes(H_UPDATE)
assert canonical.chunk_elements(NUMEL) == CHUNK and canonical.num_chunks(NUMEL) == 7


def proved(hashes: bytes, chunks: range = UPDATE_CHUNKS) -> tuple[bytes, bytes]:
    """The chunk hashes of `chunks` and their Merkle proof: what an UPDATE stream carries."""
    tree = merkle.Tree(hashes)
    return tree.leaves(chunks), tree.proof(chunks)


A_SEGMENT, A_PROOF = proved(A_HASHES)
H_SEGMENT, H_PROOF = proved(H_HASHES)


def owned(frames: Iterator[Frame], sender: str) -> list[Frame]:
    """Frames whose payloads are their own bytes (not views of a vector), each naming its
    sender (frames_for names it in the first only): every frame here may be sent alone."""
    out = [Frame(f.header, memoryview(bytes(f.payload))) for f in frames]
    for frame in out:
        frame.header.sender = sender
    return out


def update_frames(
    vector: npt.NDArray[np.float32],
    *,
    sender: str = A,
    round: int = ROUND,
    hashes: bytes | None = None,
    proof: bytes | None = None,
    frame_chunks: int = 1,
) -> list[Frame]:
    own, own_proof = proved(canonical.chunk_hashes(vector))
    return owned(
        frames_for(
            vector,
            UPDATE_CHUNKS,
            kind=peer_pb2.KIND_UPDATE,
            round=round,
            attempt=UPDATE_ATTEMPT,
            segment=2,
            sender=sender,
            chunk_hashes=own if hashes is None else hashes,
            proof=own_proof if proof is None else proof,
            frame_chunks=frame_chunks,
        ),
        sender,
    )


def merged_frames(
    vector: npt.NDArray[np.float32],
    chunks: range = MERGED_CHUNKS,
    *,
    sender: str = A,
    segment: int = 0,
    frame_chunks: int = 1,
) -> list[Frame]:
    return owned(
        frames_for(
            vector,
            chunks,
            kind=peer_pb2.KIND_MERGED,
            round=ROUND,
            attempt=ATTEMPT,
            segment=segment,
            sender=sender,
            frame_chunks=frame_chunks,
        ),
        sender,
    )


UPDATE_FRAMES = update_frames(A_UPDATE)  # chunk 5 (with the hashes and proof), chunk 6 (7)
MERGED_FRAMES = merged_frames(A_MERGED)  # chunks 0, 1, 2
BASES = UPDATE_FRAMES + MERGED_FRAMES
H_UPDATE_FRAMES = update_frames(H_UPDATE, sender=H, frame_chunks=2)  # the whole segment at once
H_MERGED_FRAMES = merged_frames(H_MERGED, H_MERGED_CHUNKS, sender=H, segment=1, frame_chunks=2)
assert len(UPDATE_FRAMES) == 2 and len(MERGED_FRAMES) == 3
assert len(H_UPDATE_FRAMES) == 1 and len(H_MERGED_FRAMES) == 1


def wire(frame: Frame) -> bytes:
    return codec.encode(frame)


def with_header(frame: Frame, **changes: Any) -> Frame:
    header = peer_pb2.FrameHeader()
    header.CopyFrom(frame.header)
    for name, value in changes.items():
        setattr(header, name, value)
    return Frame(header, frame.payload)


def method_for(frame: Frame) -> str:
    return "PushUpdate" if frame.header.kind == peer_pb2.KIND_UPDATE else "PushMerged"


KIND_OF = {"PushUpdate": peer_pb2.KIND_UPDATE, "PushMerged": peer_pb2.KIND_MERGED}


def honest_of(method: str) -> list[Frame]:
    return UPDATE_FRAMES if method == "PushUpdate" else MERGED_FRAMES


def elements(frames: Sequence[Frame]) -> int:
    return sum(f.header.elements for f in frames)


# ------------------------------------------------------------------------------- the server


def _raw(data: bytes) -> bytes:
    return data


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    details: str
    elements: int | None = None  # the Ack's count, for an accepted push


class RawPeer:
    """A's own channel to R: GrpcTransport's credentials and name check, raw bytes on the wire.
    Its send limit is raised so that R's own receive limit is what gets tested."""

    def __init__(self, identity: TlsIdentity, record: PeerRecord) -> None:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=record.certificate_pem,
            private_key=identity.key_pem,
            certificate_chain=identity.cert_pem,
        )
        options = [
            ("grpc.max_receive_message_length", MESSAGE_LIMIT),
            ("grpc.max_send_message_length", 4 * MESSAGE_LIMIT),
            ("grpc.ssl_target_name_override", record.tls_name),
        ]
        self.channel = grpc.secure_channel(record.endpoint, credentials, options=options)

    @staticmethod
    def _failed(exc: grpc.RpcError) -> Outcome:
        assert isinstance(exc, grpc.Call)
        return Outcome(exc.code(), exc.details() or "")

    def push(self, method: str, messages: Sequence[bytes]) -> Outcome:
        call = self.channel.stream_unary(
            f"/{SERVICE}/{method}",
            request_serializer=_raw,
            response_deserializer=peer_pb2.Ack.FromString,
        )
        try:
            ack = call(iter(messages), timeout=TIMEOUT)
        except grpc.RpcError as exc:
            return self._failed(exc)
        return Outcome(OK, "", int(ack.elements))

    def push_frames(self, method: str, frames: Sequence[Frame]) -> Outcome:
        return self.push(method, [wire(f) for f in frames])

    def unary(self, method: str, data: bytes) -> Outcome:
        """Info, or any other method name (the server does not know it: UNIMPLEMENTED)."""
        reply: Callable[[bytes], Any] = peer_pb2.InfoReply.FromString if method == "Info" else _raw
        call = self.channel.unary_unary(
            f"/{SERVICE}/{method}", request_serializer=_raw, response_deserializer=reply
        )
        try:
            call(data, timeout=TIMEOUT)
        except grpc.RpcError as exc:
            return self._failed(exc)
        return Outcome(OK, "")

    def fetch(self, data: bytes, method: str = "FetchModel") -> tuple[Outcome, list[bytes]]:
        call = self.channel.unary_stream(
            f"/{SERVICE}/{method}", request_serializer=_raw, response_deserializer=_raw
        )
        try:
            replies = list(call(data, timeout=TIMEOUT))
        except grpc.RpcError as exc:
            return self._failed(exc), []
        return Outcome(OK, ""), replies

    def close(self) -> None:
        self.channel.close()


@dataclass
class Swarm:
    inbox: Inbox
    server: PeerServer
    raw: RawPeer  # A, bypassing the client's serializer
    attacker: GrpcTransport  # A, as a normal client
    honest: GrpcTransport  # H


class _ErrorRecords(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("grpc", "swarmnode")):
            SERVER_ERRORS.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture(scope="module")
def swarm(request: pytest.FixtureRequest) -> Iterator[Swarm]:
    started = time.monotonic()
    # the refusals are logged as warnings by design: thousands of them here, so keep them out
    # of the report, but record every ERROR (grpc logs unhandled handler exceptions there)
    refusal_log = logging.getLogger("swarmnode.p2p.grpc_transport")
    old_level = refusal_log.level
    refusal_log.setLevel(logging.ERROR)
    errors = _ErrorRecords(logging.ERROR)
    logging.getLogger().addHandler(errors)
    old_hook = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        THREAD_ERRORS.append(f"{args.thread}: {args.exc_type.__name__}: {args.exc_value}")
        old_hook(args)

    threading.excepthook = hook

    ids = {name: TlsIdentity.generate(name) for name in (R, A, H)}
    # ready_wait=0: a frame for a round not declared here is NotReady at once, as the fuzz
    # expects of every such case (a wait would only slow thousands of them)
    inbox = Inbox(R, max_frame_elements=MAX_FRAME, max_vector_elements=MAX_VECTOR, ready_wait=0)
    inbox.finish_round(FLOOR - 1)
    commitments = {A: canonical.digest(A_UPDATE), H: canonical.digest(H_UPDATE)}
    inbox.expect_updates(ROUND, {2: UPDATE_CHUNKS}, NUMEL, commitments, attempt=UPDATE_ATTEMPT)
    segments = {0: (A, H, MERGED_CHUNKS), 1: (H, A, H_MERGED_CHUNKS)}
    inbox.expect_merged(ROUND, ATTEMPT, segments, NUMEL)
    inbox.offer_update(ROUND, R_UPDATE, canonical.chunk_hashes(R_UPDATE))
    inbox.publish_model(MODEL_ROUND, FINAL, canonical.chunk_hashes(FINAL))
    roster = Roster()
    server = PeerServer(R, ids[R].key_pem, ids[R].cert_pem, roster, inbox)
    roster.upsert(PeerRecord(R, server.endpoint, ids[R].cert_der))
    for name in (A, H):  # they dial R but run no server of their own
        roster.upsert(PeerRecord(name, "127.0.0.1:9", ids[name].cert_der))
    server.start()
    record = roster.get(R)
    assert record is not None
    built = Swarm(
        inbox=inbox,
        server=server,
        raw=RawPeer(ids[A], record),
        attacker=GrpcTransport(A, ids[A].key_pem, ids[A].cert_pem, roster),
        honest=GrpcTransport(H, ids[H].key_pem, ids[H].cert_pem, roster),
    )
    try:
        # A's honest contributions are in place before the fuzzing starts
        assert built.attacker.push(R, lambda: UPDATE_FRAMES, TIMEOUT) == len(UPDATE_SPAN)
        assert built.attacker.push(R, lambda: MERGED_FRAMES, TIMEOUT) == len(MERGED_SPAN)
        assert_buffers_hold_only_honest_data(inbox)
        yield built
    finally:
        built.raw.close()
        built.attacker.close()
        built.honest.close()
        server.stop(0)
        threading.excepthook = old_hook
        logging.getLogger().removeHandler(errors)
        refusal_log.setLevel(old_level)
        summary = ", ".join(f"{name}={count}" for name, count in sorted(CASES.items()))
        line = (
            f"transport fuzz: {sum(CASES.values())} cases in "
            f"{time.monotonic() - started:.1f} s ({summary})"
        )
        plugins = request.config.pluginmanager
        reporter = plugins.get_plugin("terminalreporter")
        capture = plugins.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():  # shown with or without -s
                reporter.write("\n")
                reporter.write_line(line)


# ------------------------------------------------------------------------------- checks


def check(family: str, outcome: Outcome, allowed: AbstractSet[grpc.StatusCode]) -> None:
    CASES[family] += 1
    if currently_in_test_context():
        note(f"{family}: {outcome}")
    assert outcome.code not in CRASHES, (
        f"{family}: the server failed with {outcome.code.name}: {outcome.details}"
    )
    assert outcome.code in allowed, (
        f"{family}: {outcome.code.name} ({outcome.details}), "
        f"expected {sorted(code.name for code in allowed)}"
    )
    if outcome.code == UNAVAILABLE:
        assert outcome.details.startswith(NOT_READY), outcome.details
    if outcome.code == STALE:
        assert outcome.details.startswith("stale"), outcome.details


def assert_buffers_hold_only_honest_data(inbox: Inbox) -> None:
    """A's segments are exactly its honest ones, bit for bit; H's have not been touched, or
    hold exactly H's honest update (its genuine frames, relayed by A)."""
    got = inbox.update(ROUND, A, 2, timeout=0)
    assert got is not None, "A's update segment is no longer complete"
    assert got.tobytes() == A_UPDATE[UPDATE_SPAN.start : UPDATE_SPAN.stop].tobytes()
    got = inbox.merged(ROUND, ATTEMPT, 0, timeout=0)
    assert got is not None, "A's merged segment is no longer complete"
    assert got.tobytes() == A_MERGED[MERGED_SPAN.start : MERGED_SPAN.stop].tobytes()
    got = inbox.update(ROUND, H, 2, timeout=0)
    assert got is None or got.tobytes() == H_UPDATE[UPDATE_SPAN.start : UPDATE_SPAN.stop].tobytes()
    assert inbox.merged(ROUND, ATTEMPT, 1, timeout=0) is None, "H's segment arrived without H"


def assert_quiet() -> None:
    """No handler crashed (grpc logs those at ERROR) and no thread died."""
    errors, SERVER_ERRORS[:] = SERVER_ERRORS[:], []
    assert not errors, errors[:5]
    assert not THREAD_ERRORS, THREAD_ERRORS[:5]


def fuzz(max_examples: int) -> settings:
    return settings(
        derandomize=True,
        deadline=None,
        max_examples=max_examples,
        database=None,
        print_blob=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


# ------------------------------------------------------------------------------- strategies

PUSH_METHODS = ("PushUpdate", "PushMerged")
STALE_ROUNDS = st.integers(0, FLOOR - 1)
FUTURE_ROUNDS = st.one_of(st.integers(FLOOR, ROUND + 3), st.integers(FLOOR, U64)).filter(
    lambda r: r not in (ROUND, NAN_ROUND)  # round 8 is known here (the non-finite family)
)
ROUNDS = st.one_of(STALE_ROUNDS, st.just(ROUND), FUTURE_ROUNDS)
SPOOFS = st.one_of(
    st.sampled_from([H, R, A + "0", A[:-1], " " + A, A.removeprefix("0x")]),
    st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex()),
    st.text(max_size=50),
).filter(lambda s: s.lower() != A and s != "")  # empty: inherited (test_the_sender_...)
SENDERS = st.one_of(st.sampled_from([A, A.upper(), "0x" + A[2:].upper()]), SPOOFS)


def _flip(data: bytes, index: int) -> bytes:
    index %= len(data)
    return data[:index] + bytes((data[index] ^ 0x01,)) + data[index + 1 :]


HASH_LISTS = st.one_of(
    st.sampled_from(
        [b"", A_SEGMENT, A_SEGMENT[:-32], A_SEGMENT + bytes(32), H_SEGMENT, A_HASHES, H_HASHES]
    ),
    st.integers(0, len(A_SEGMENT) - 1).map(lambda i: _flip(A_SEGMENT, i)),
    st.binary(max_size=300),
)
PROOFS = st.one_of(
    st.sampled_from([b"", A_PROOF, A_PROOF[:-32], A_PROOF + bytes(32), H_PROOF]),
    st.integers(0, len(A_PROOF) - 1).map(lambda i: _flip(A_PROOF, i)),
    st.binary(max_size=200),
)
WIDE_U64 = st.one_of(st.integers(0, 8), st.integers(0, U64))
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "kind": st.one_of(st.sampled_from([0, 1, 2, 3]), st.integers(*I32)),
    "round": ROUNDS,
    "attempt": st.one_of(st.integers(0, 4), st.integers(0, U32)),
    "segment": st.one_of(st.integers(0, 4), st.integers(0, U32)),
    "first_chunk": WIDE_U64,
    "elements": st.one_of(
        st.sampled_from([0, 1, 6, 7, 8, CHUNK - 1, CHUNK, CHUNK + 1, MAX_FRAME + 1]),
        st.integers(0, U64),
    ),
    "vector_elements": st.one_of(
        st.sampled_from([0, 1, NUMEL - 1, NUMEL, NUMEL + 1, 5 * CHUNK, MAX_VECTOR + 1]),
        st.integers(0, U64),
    ),
    "dtype": st.one_of(st.sampled_from([0, 1, 2]), st.integers(*I32)),
    "sender": SENDERS,
    "chunk_hashes": HASH_LISTS,
    "proof": PROOFS,
    "rpc": st.sampled_from(PUSH_METHODS),  # not a header field: the call the frame goes on
}


def expected_for(base: Frame, name: str, value: Any, frame: Frame | None = None) -> grpc.StatusCode:
    """What R must answer when field `name` of the honest frame `base` becomes `value`
    (`frame`: the whole mutated frame, for the fields judged together)."""
    header = base.header
    update = header.kind == peer_pb2.KIND_UPDATE
    if name == "rpc":
        return OK if value == method_for(base) else INVALID
    if name == "round":
        return STALE if value < FLOOR else OK if value == ROUND else UNAVAILABLE
    if name == "attempt":
        current = header.attempt  # the receiver's current attempt for this kind
        return STALE if value < current else OK if value == current else UNAVAILABLE
    if name == "sender":  # accounts compare case-insensitively
        if value.lower() == A:
            return OK
        # an UPDATE naming H is a relay between participants: A's data fails H's commitment
        return INVALID if update and value.lower() == H else DENIED
    if name in ("chunk_hashes", "proof"):  # UPDATE only: the segment's hashes and proof
        # together, or neither (a later frame: the hashes already on record)
        final = (frame or with_header(base, **{name: value})).header
        pair = (final.chunk_hashes, final.proof)
        return OK if not update or pair in ((A_SEGMENT, A_PROOF), (b"", b"")) else INVALID
    return OK if value == getattr(header, name) else INVALID


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _layout(frame: Frame) -> tuple[bytes, int, int]:
    """The encoded frame, where its payload tag sits and where its payload bytes start."""
    encoded = wire(frame)
    header = len(frame.header.SerializeToString())
    return encoded, 1 + len(_varint(header)) + header, len(encoded) - len(frame.payload)


def _nonfinite(sign: bool, mantissa: int) -> int:
    """float32 bits with an all-ones exponent: +-Inf for mantissa 0, a NaN otherwise."""
    return (int(sign) << 31) | (0xFF << 23) | mantissa


NONFINITE_BITS = st.builds(_nonfinite, st.booleans(), st.integers(0, 2**23 - 1))


def poison(payload: bytes, hits: dict[int, int]) -> bytes:
    words = np.frombuffer(bytearray(payload), dtype="<u4")
    for index, bits in hits.items():
        words[index % len(words)] = bits
    return words.tobytes()


# ------------------------------------------------------------------------------- families


def test_random_bytes_are_refused(swarm: Swarm) -> None:
    def framed(header: bytes, payload: bytes) -> bytes:
        # protobuf-shaped: random bytes where the header and the payload go
        return b"\x0a" + _varint(len(header)) + header + b"\x12" + _varint(len(payload)) + payload

    def random_frame(header: peer_pb2.FrameHeader, payload: bytes) -> bytes:
        return wire(Frame(header, memoryview(payload)))

    headers = st.builds(
        peer_pb2.FrameHeader,
        kind=st.sampled_from([0, 1, 2, 3]),
        round=ROUNDS,
        attempt=st.integers(0, U32),
        segment=st.integers(0, 3),
        first_chunk=st.integers(0, 9),
        elements=st.integers(0, 200),
        dtype=st.integers(0, 2),
        vector_elements=st.sampled_from([0, NUMEL, MAX_VECTOR + 1]),
        chunk_hashes=HASH_LISTS,
        proof=PROOFS,
        sender=SENDERS,
    )
    messages = st.one_of(
        st.binary(max_size=64),
        st.binary(min_size=1, max_size=600),
        st.binary(max_size=64).map(lambda b: b"\x0a" + b),
        st.builds(framed, st.binary(max_size=80), st.binary(max_size=64)),
        st.builds(random_frame, headers, st.binary(max_size=600)),  # payloads < 1 chunk
    )

    @fuzz(500)
    @given(method=st.sampled_from(PUSH_METHODS), stream=st.lists(messages, min_size=1, max_size=3))
    def case(method: str, stream: list[bytes]) -> None:
        outcome = swarm.raw.push(method, stream)
        first = codec.decode_lenient(stream[0])
        allowed = {INVALID} if isinstance(first, InvalidMessage) else REFUSALS | {OK}
        check("random", outcome, allowed)
        assert_buffers_hold_only_honest_data(swarm.inbox)

    case()
    assert CASES["random"] > 0
    assert_quiet()


def test_random_well_formed_unary_requests_are_answered(swarm: Swarm) -> None:
    """Random bytes that parse as the request message (malformed ones: see the test below)."""

    def parses(message: type[Message]) -> Callable[[bytes], bool]:
        def ok(data: bytes) -> bool:
            try:
                message.FromString(data)
            except DecodeError:
                return False
            return True

        return ok

    requests = st.one_of(
        st.tuples(
            st.just("FetchModel"), st.binary(max_size=40).filter(parses(peer_pb2.ModelRequest))
        ),
        st.tuples(st.just("Info"), st.binary(max_size=20).filter(parses(peer_pb2.InfoRequest))),
        st.tuples(
            st.just("FetchUpdate"), st.binary(max_size=60).filter(parses(peer_pb2.UpdateRequest))
        ),
    )

    @fuzz(200)
    @given(request=requests)
    def case(request: tuple[str, bytes]) -> None:
        method, data = request
        allowed: AbstractSet[grpc.StatusCode]
        if method == "FetchModel":
            outcome, _ = swarm.raw.fetch(data)
            allowed = {OK, NOT_FOUND}
        elif method == "FetchUpdate":
            outcome, _ = swarm.raw.fetch(data, method)
            allowed = {OK, NOT_FOUND, INVALID, STALE, UNAVAILABLE}
        else:
            outcome = swarm.raw.unary(method, data)
            allowed = {OK}
        check("random unary", outcome, allowed)
        assert_buffers_hold_only_honest_data(swarm.inbox)

    case()
    assert CASES["random unary"] > 0
    assert_quiet()


def test_truncated_frames_are_refused(swarm: Swarm) -> None:
    # every cut through the framing and the header, for every honest frame ...
    for base in BASES:
        data, payload_tag, payload_start = _layout(base)
        assert data[payload_tag] == 0x12
        cuts = [*range(payload_start + 2), *range(len(data) - 3, len(data))]
        for cut in cuts:
            outcome = swarm.raw.push(method_for(base), [data[:cut]])
            check("truncated", outcome, {INVALID})
    assert_buffers_hold_only_honest_data(swarm.inbox)

    # ... and cuts anywhere, chosen by region, after an honest prefix of replays
    regions = ("framing", "header", "payload framing", "payload", "last bytes")

    @fuzz(200)
    @given(base=st.sampled_from(BASES), region=st.sampled_from(regions), data=st.data())
    def case(base: Frame, region: str, data: st.DataObject) -> None:
        encoded, payload_tag, payload_start = _layout(base)
        bounds = {
            "framing": (0, 3),
            "header": (3, payload_tag),
            "payload framing": (payload_tag, payload_start + 1),
            "payload": (payload_start + 1, len(encoded) - 1),
            "last bytes": (len(encoded) - 8, len(encoded) - 1),
        }[region]
        cut = data.draw(st.integers(*bounds), label="cut")
        method = method_for(base)
        prefix = data.draw(st.lists(st.sampled_from(honest_of(method)), max_size=2), label="prefix")
        outcome = swarm.raw.push(method, [*(wire(f) for f in prefix), encoded[:cut]])
        check("truncated", outcome, {INVALID})
        assert_buffers_hold_only_honest_data(swarm.inbox)

    case()
    assert CASES["truncated"] > 0
    assert_quiet()


def test_mutated_headers_get_the_status_of_the_field_they_break(swarm: Swarm) -> None:
    @fuzz(1000)
    @given(
        base=st.sampled_from(BASES),
        names=st.sets(st.sampled_from(sorted(FIELD_VALUES)), min_size=1, max_size=3),
        data=st.data(),
    )
    def case(base: Frame, names: set[str], data: st.DataObject) -> None:
        changes: dict[str, Any] = {}
        for name in sorted(names):
            values = FIELD_VALUES[name]
            if name == "first_chunk" and base.header.kind == peer_pb2.KIND_MERGED:
                # not moved inside A's own segment: see the module docstring
                values = values.filter(
                    lambda v: v == base.header.first_chunk or v not in MERGED_CHUNKS
                )
            changes[name] = data.draw(values, label=name)
        method = changes.pop("rpc", method_for(base))
        frame = with_header(base, **changes)
        expected = {expected_for(base, name, value, frame) for name, value in changes.items()}
        expected.add(expected_for(base, "rpc", method))
        allowed: AbstractSet[grpc.StatusCode] = (expected - {OK}) or {OK}
        if method != method_for(base) and frame.header.kind == KIND_OF[method]:
            allowed = REFUSALS  # the frame became one of the other kind: refused, whichever way
        prefix = data.draw(st.lists(st.sampled_from(honest_of(method)), max_size=2), label="prefix")
        suffix = data.draw(st.lists(st.sampled_from(honest_of(method)), max_size=2), label="suffix")
        outcome = swarm.raw.push_frames(method, [*prefix, frame, *suffix])
        check("mutated header", outcome, allowed)
        if outcome.code == OK:
            assert outcome.elements == elements([*prefix, frame, *suffix])
        assert_buffers_hold_only_honest_data(swarm.inbox)

    case()
    assert CASES["mutated header"] > 0
    assert_quiet()


def test_oversized_frames_are_refused(swarm: Swarm) -> None:
    variants = (
        "header claims too many elements",
        "payload of too many chunks",
        "vector beyond the limit",
        "header beyond MAX_HEADER_BYTES",
        "message beyond the gRPC limit",
    )

    @fuzz(80)
    @given(variant=st.sampled_from(variants), base=st.sampled_from(BASES), data=st.data())
    def case(variant: str, base: Frame, data: st.DataObject) -> None:
        method = method_for(base)
        detail = "exceeds the limit"
        allowed = {INVALID}
        if variant == "header claims too many elements":
            frame = with_header(base, elements=data.draw(st.integers(MAX_FRAME + 1, U64)))
        elif variant == "payload of too many chunks":
            count = data.draw(st.integers(3, 7), label="chunks")
            chunks = range(0, count)
            if method == "PushUpdate":
                frame = owned(
                    frames_for(
                        A_UPDATE,
                        chunks,
                        kind=peer_pb2.KIND_UPDATE,
                        round=ROUND,
                        attempt=UPDATE_ATTEMPT,
                        segment=2,
                        sender=A,
                        chunk_hashes=A_HASHES[: 32 * count],
                        frame_chunks=count,
                    ),
                    A,
                )[0]
            else:
                frame = merged_frames(A_MERGED, chunks, frame_chunks=count)[0]
            assert frame.header.elements > MAX_FRAME
        elif variant == "vector beyond the limit":
            frame = with_header(base, vector_elements=data.draw(st.integers(MAX_VECTOR + 1, U64)))
        elif variant == "header beyond MAX_HEADER_BYTES":
            extra = data.draw(st.integers(1, 64), label="extra")
            frame = with_header(base, chunk_hashes=bytes(MAX_HEADER_BYTES + extra))
            detail = "does not fit"
        else:
            extra = data.draw(st.integers(1, 4096), label="extra")
            payload = memoryview(bytes(MESSAGE_LIMIT + 4 * extra))
            frame = Frame(with_header(base, elements=len(payload) // 4).header, payload)
            allowed, detail = {TOO_BIG}, ""
        outcome = swarm.raw.push_frames(method, [frame])
        check("oversized", outcome, allowed)
        assert detail in outcome.details
        assert_buffers_hold_only_honest_data(swarm.inbox)

    case()
    assert CASES["oversized"] > 0
    assert_quiet()


def test_tampered_update_payloads_are_refused_by_their_chunk_hash(swarm: Swarm) -> None:
    """The honest header with other data: flipped bits, a sign flip, H's chunk, scaled values.
    (MERGED payloads are not hash-checked: the owner is trusted with its segment.)"""
    tamperings = ("flipped bits", "sign flip", "another sender's chunk", "scaled")

    @fuzz(200)
    @given(
        index=st.integers(0, len(UPDATE_FRAMES) - 1),
        how=st.sampled_from(tamperings),
        bits=st.lists(st.integers(0, 8 * CHUNK * 4 - 1), min_size=1, max_size=4, unique=True),
        scale=st.floats(0.5, 2.0).filter(lambda x: x != 1.0),
        replays=st.integers(0, 1),
    )
    def case(index: int, how: str, bits: list[int], scale: float, replays: int) -> None:
        base = UPDATE_FRAMES[index]
        payload = bytearray(base.payload)
        if how == "flipped bits":
            for bit in bits:
                bit %= 8 * len(payload)
                payload[bit // 8] ^= 1 << (bit % 8)
        elif how == "sign flip":
            payload = bytearray((-np.frombuffer(payload, dtype="<f4")).tobytes())
        elif how == "another sender's chunk":
            start = base.header.first_chunk * CHUNK
            payload = bytearray(H_UPDATE[start : start + base.header.elements].tobytes())
        else:
            payload = bytearray((np.frombuffer(payload, dtype="<f4") * np.float32(scale)).tobytes())
        assert bytes(payload) != bytes(base.payload)
        frame = Frame(base.header, memoryview(bytes(payload)))
        outcome = swarm.raw.push_frames("PushUpdate", [*UPDATE_FRAMES[:replays], frame])
        check("tampered payload", outcome, {INVALID})
        assert "does not match" in outcome.details
        assert_buffers_hold_only_honest_data(swarm.inbox)

    case()
    assert CASES["tampered payload"] > 0
    assert_quiet()


def test_wrong_dtypes_are_refused_by_name(swarm: Swarm) -> None:
    @fuzz(150)
    @given(
        base=st.sampled_from(BASES),
        dtype=st.one_of(st.sampled_from([0, 2]), st.integers(*I32)).filter(
            lambda d: d != peer_pb2.DTYPE_FLOAT32
        ),
        replays=st.integers(0, 2),
    )
    def case(base: Frame, dtype: int, replays: int) -> None:
        method = method_for(base)
        prefix = honest_of(method)[:replays]
        outcome = swarm.raw.push_frames(method, [*prefix, with_header(base, dtype=dtype)])
        check("wrong dtype", outcome, {INVALID})
        assert f"dtype {dtype}" in outcome.details
        assert_buffers_hold_only_honest_data(swarm.inbox)

    case()
    assert CASES["wrong dtype"] > 0
    assert_quiet()


def test_non_finite_values_are_refused_even_when_the_hashes_match(swarm: Swarm) -> None:
    positions = st.dictionaries(st.integers(0, 2 * CHUNK), NONFINITE_BITS, min_size=1, max_size=3)

    @fuzz(150)
    @given(kind=st.sampled_from(PUSH_METHODS), hits=positions, seed=st.integers(100, 10_000))
    def case(kind: str, hits: dict[int, int], seed: int) -> None:
        if kind == "PushUpdate":
            # A commits to the poisoned vector in round 8, so the hash list and every chunk
            # match: only the finite check stands between the NaN and the buffer
            poisoned = model(seed)
            words = poisoned.view(np.uint32)
            for index, bits in hits.items():
                words[UPDATE_SPAN.start + index % len(UPDATE_SPAN)] = bits
            commitment = {A: canonical.digest(poisoned)}
            swarm.inbox.expect_updates(NAN_ROUND, {2: UPDATE_CHUNKS}, NUMEL, commitment)
            frames = update_frames(poisoned, round=NAN_ROUND)
            outcome = swarm.raw.push_frames(kind, frames)
            check("non-finite", outcome, {INVALID})
            assert "non-finite" in outcome.details
            assert swarm.inbox.update(NAN_ROUND, A, 2, timeout=0) is None
        else:
            # MERGED data has no hash list: the finite check is all there is
            target = MERGED_FRAMES[seed % len(MERGED_FRAMES)]
            bad = Frame(target.header, memoryview(poison(bytes(target.payload), hits)))
            prefix = [f for f in MERGED_FRAMES if f is not target][: seed % 3]
            outcome = swarm.raw.push_frames(kind, [*prefix, bad])
            check("non-finite", outcome, {INVALID})
            assert "non-finite" in outcome.details
        assert_buffers_hold_only_honest_data(swarm.inbox)

    case()
    assert CASES["non-finite"] > 0
    assert_quiet()


def test_wrong_rounds_and_attempts_are_stale_or_not_ready(swarm: Swarm) -> None:
    @fuzz(200)
    @given(
        base=st.sampled_from(BASES),
        which=st.sampled_from(["past round", "future round", "past attempt", "future attempt"]),
        data=st.data(),
    )
    def case(base: Frame, which: str, data: st.DataObject) -> None:
        if which == "past round":
            frame, expected = with_header(base, round=data.draw(STALE_ROUNDS)), STALE
        elif which == "future round":
            frame, expected = with_header(base, round=data.draw(FUTURE_ROUNDS)), UNAVAILABLE
        elif which == "past attempt":
            attempt = data.draw(st.integers(0, base.header.attempt - 1))
            frame, expected = with_header(base, attempt=attempt), STALE
        else:
            later = base.header.attempt + 1
            attempt = data.draw(st.one_of(st.integers(later, later + 2), st.integers(later, U32)))
            frame, expected = with_header(base, attempt=attempt), UNAVAILABLE
        method = method_for(base)
        outcome = swarm.raw.push_frames(method, [frame])
        check("wrong round", outcome, {expected})
        assert_buffers_hold_only_honest_data(swarm.inbox)

    case()
    assert CASES["wrong round"] > 0
    assert_quiet()


def test_replayed_frames_are_idempotent(swarm: Swarm) -> None:
    stripped = [with_header(f, chunk_hashes=b"", proof=b"") for f in UPDATE_FRAMES]

    @fuzz(150)
    @given(
        method=st.sampled_from(PUSH_METHODS),
        picks=st.lists(st.integers(0, 4), min_size=1, max_size=12),
    )
    def case(method: str, picks: list[int]) -> None:
        pool = [*UPDATE_FRAMES, *stripped] if method == "PushUpdate" else MERGED_FRAMES
        stream = [pool[i % len(pool)] for i in picks]
        outcome = swarm.raw.push_frames(method, stream)
        check("replayed", outcome, {OK})
        assert outcome.elements == elements(stream)
        assert_buffers_hold_only_honest_data(swarm.inbox)

    case()
    assert CASES["replayed"] > 0
    assert_quiet()


def test_a_forged_sender_is_denied(swarm: Swarm) -> None:
    @fuzz(200)
    @given(
        which=st.sampled_from(["H's own update", "H's own segment", "A's data"]),
        base=st.sampled_from(BASES),
        spoof=SPOOFS,
        replays=st.integers(0, 2),
    )
    def case(which: str, base: Frame, spoof: str, replays: int) -> None:
        # H's genuine frames, replayed over A's connection, would pass every other check;
        # an update is the one exception: A and H are participants, so A may relay it
        if which == "H's own update":
            frame = H_UPDATE_FRAMES[0]
        elif which == "H's own segment":
            frame = H_MERGED_FRAMES[0]
        else:
            frame = with_header(base, sender=spoof)
        method = method_for(frame)
        stream = [*honest_of(method)[:replays], frame]
        outcome = swarm.raw.push_frames(method, stream)
        if which == "H's own update":
            check("forged sender", outcome, {OK})
            assert outcome.elements == elements(stream)
            got = swarm.inbox.update(ROUND, H, 2, timeout=0)  # stored under H, not A
            assert got is not None
            assert got.tobytes() == H_UPDATE[UPDATE_SPAN.start : UPDATE_SPAN.stop].tobytes()
        elif method == "PushUpdate" and spoof.lower() == H:
            check("forged sender", outcome, {INVALID})  # a relay: A's data is not H's
        else:
            check("forged sender", outcome, {DENIED})
            assert "claims sender" in outcome.details
        assert_buffers_hold_only_honest_data(swarm.inbox)

    case()
    assert CASES["forged sender"] > 0
    assert_quiet()


def test_the_sender_is_named_in_the_first_frame_and_inherited(swarm: Swarm) -> None:
    """frames_for names the sender in a stream's first frame only and later frames take it
    (the TLS identity already says who calls); a stream that names nobody is the caller's,
    as senders of their own data send it."""
    plain = list(
        frames_for(
            A_MERGED,
            MERGED_CHUNKS,
            kind=peer_pb2.KIND_MERGED,
            round=ROUND,
            attempt=ATTEMPT,
            segment=0,
            sender=A,
            frame_chunks=1,
        )
    )
    assert [f.header.sender for f in plain] == [A, "", ""]
    for method, honest in (("PushUpdate", UPDATE_FRAMES), ("PushMerged", MERGED_FRAMES)):
        inherited = [honest[0], *(with_header(f, sender="") for f in honest[1:])]
        outcome = swarm.raw.push_frames(method, inherited)
        check("inherited sender", outcome, {OK})
        assert outcome.elements == elements(inherited)
        nobody = [with_header(f, sender="") for f in honest]
        outcome = swarm.raw.push_frames(method, nobody)
        check("unnamed sender", outcome, {OK})
        assert outcome.elements == elements(nobody)
    assert_buffers_hold_only_honest_data(swarm.inbox)
    assert_quiet()


# The removed PushPartials call, with a message as its old encoding wrote one (round 7,
# attempt 2, step 0, segment 0, two sums, sender A): no rule exchanges partial sums, so the
# server no longer knows the method (docs/round-protocol.md#partial-sums).
OLD_PARTIALS = (
    b"\x08\x07\x10\x02\x18\x00\x20\x00\x2a\x10"
    + np.array([0.5, -2.0], dtype="<f8").tobytes()
    + b"\x32\x2a"
    + A.encode()
)


def test_the_removed_partial_sums_call_is_unimplemented(swarm: Swarm) -> None:
    held = swarm.inbox.held_bytes(A)
    outcome = swarm.raw.unary("PushPartials", OLD_PARTIALS)
    check("removed call", outcome, {grpc.StatusCode.UNIMPLEMENTED})
    assert swarm.inbox.held_bytes(A) == held  # nothing kept for A
    assert_buffers_hold_only_honest_data(swarm.inbox)
    assert_quiet()


def test_fetch_model_answers_only_the_published_round(swarm: Swarm) -> None:
    @fuzz(40)
    @given(round=st.one_of(st.just(MODEL_ROUND), st.integers(0, 9), st.integers(0, U64)))
    def case(round: int) -> None:
        outcome, replies = swarm.raw.fetch(peer_pb2.ModelRequest(round=round).SerializeToString())
        check("fetch model", outcome, {OK} if round == MODEL_ROUND else {NOT_FOUND})
        if outcome.code == OK:
            frames = [codec.decode(reply) for reply in replies]
            # no hash list: every frame with the proof of its own chunks (the final digest)
            tree = merkle.Tree(canonical.chunk_hashes(FINAL))
            for f in frames:
                count = -(-f.header.elements // canonical.chunk_elements(NUMEL))
                own = range(f.header.first_chunk, f.header.first_chunk + count)
                assert f.header.chunk_hashes == b"" and f.header.proof == tree.proof(own)
            got = b"".join(bytes(f.payload) for f in frames)
            assert got == FINAL.tobytes()

    case()
    assert CASES["fetch model"] > 0
    assert_quiet()


def slice_of(vector: npt.NDArray[np.float32], chunks: range) -> bytes:
    span = canonical.element_range(chunks, NUMEL)
    return vector[span.start : span.stop].tobytes()


def test_fetch_update_answers_only_what_is_held_and_refuses_the_rest(swarm: Swarm) -> None:
    """FetchUpdate with any request: served (R's own update, A's row it holds, each checked
    here byte for byte), NOT_FOUND, or refused by name; a range over the model (up to
    2**64 chunks) is refused before anything is allocated."""
    total = canonical.num_chunks(NUMEL)
    senders = st.one_of(
        st.sampled_from([R, A, H, A.upper(), "", "0x" + "00" * 20]),
        st.text(max_size=50),
    )
    counts = st.one_of(
        st.integers(0, total + 1), st.sampled_from([2**60, U64]), st.integers(0, U64)
    )

    @fuzz(300)
    @given(
        round=st.one_of(st.just(ROUND), STALE_ROUNDS, FUTURE_ROUNDS),
        sender=senders,
        first=st.one_of(st.integers(0, total + 1), st.integers(0, U64)),
        count=counts,
    )
    def case(round: int, sender: str, first: int, count: int) -> None:
        held = swarm.inbox.held_bytes()
        request = peer_pb2.UpdateRequest(
            round=round, sender=sender, first_chunk=first, chunks=count
        )
        outcome, replies = swarm.raw.fetch(request.SerializeToString(), "FetchUpdate")
        assert swarm.inbox.held_bytes() == held  # a fetch never makes R hold anything
        if round < FLOOR:
            check("fetch update", outcome, {STALE})
            return
        if round != ROUND:
            check("fetch update", outcome, {UNAVAILABLE})
            return
        is_account = sender.lower() in (R.lower(), A, H) or sender == "0x" + "00" * 20
        if not is_account or first + count > total:
            check("fetch update", outcome, {INVALID})
            return
        chunks = range(first, first + count)
        if sender.lower() == R.lower():
            want: bytes | None = slice_of(R_UPDATE, chunks)
        elif sender.lower() == A and (not chunks or UPDATE_CHUNKS.start <= first):
            want = slice_of(A_UPDATE, chunks)
        else:
            want = None  # H's row may be held (a relay): checked below if served
        if sender.lower() == H.lower():
            check("fetch update", outcome, {OK, NOT_FOUND})
            if outcome.code == OK:
                want = slice_of(H_UPDATE, chunks)
        else:
            check("fetch update", outcome, {OK} if want is not None else {NOT_FOUND})
        if outcome.code == OK:
            CASES["fetch update served"] += 1
            frames = [codec.decode(reply) for reply in replies]
            assert all(f.header.kind == peer_pb2.KIND_UPDATE for f in frames)
            assert normalize(frames[0].header.sender) == normalize(sender)
            assert frames[0].header.vector_elements == NUMEL
            assert b"".join(bytes(f.payload) for f in frames) == want

    case()
    assert CASES["fetch update"] > 0 and CASES["fetch update served"] > 0
    assert_quiet()


def test_fetch_update_serves_every_range_it_holds_byte_for_byte(swarm: Swarm) -> None:
    """Every range of R's own update, and of A's row (chunks 5 and 6): served exactly; any
    range of A's reaching outside the row R holds is NOT_FOUND."""
    total = canonical.num_chunks(NUMEL)
    for sender, vector in ((R, R_UPDATE), (A, A_UPDATE)):
        for first in range(total + 1):
            for stop in range(first, total + 1):
                chunks = range(first, stop)
                request = peer_pb2.UpdateRequest(
                    round=ROUND, sender=sender, first_chunk=first, chunks=len(chunks)
                )
                outcome, replies = swarm.raw.fetch(request.SerializeToString(), "FetchUpdate")
                held = sender == R or not chunks or first >= UPDATE_CHUNKS.start
                check("fetch update range", outcome, {OK} if held else {NOT_FOUND})
                if held:
                    frames = [codec.decode(reply) for reply in replies]
                    # every frame: the proof of its own chunks and no hashes (the fetcher
                    # hashes the chunks), from R's own tree, or for A's row from what A's
                    # segment proofs proved (any range inside it)
                    for frame in frames:
                        count = -(-frame.header.elements // canonical.chunk_elements(NUMEL))
                        own = range(frame.header.first_chunk, frame.header.first_chunk + count)
                        _, proof = proved(canonical.chunk_hashes(vector), own)
                        assert frame.header.proof == proof
                        assert frame.header.chunk_hashes == b""
                    assert b"".join(bytes(f.payload) for f in frames) == slice_of(vector, chunks)
    assert_quiet()


# Malformed request messages on the unary calls: like garbage frames on the streaming
# calls, they must be INVALID_ARGUMENT naming the problem, never gRPC's INTERNAL with a
# logged traceback (this caught the unary calls using the generated FromString directly).
MALFORMED_UNARY = [
    ("FetchModel", b"\x08", "truncated varint"),
    ("FetchUpdate", b"\x12\x05ab", "truncated string"),
    ("Info", b"\x0a", "truncated length"),
]


@pytest.mark.parametrize(
    ("method", "data"),
    [(m, d) for m, d, _ in MALFORMED_UNARY],
    ids=[f"{m}-{i}" for m, _, i in MALFORMED_UNARY],
)
def test_malformed_unary_requests_are_refused_as_invalid_argument(
    swarm: Swarm, method: str, data: bytes
) -> None:
    request_type: type[Message] = {
        "FetchModel": peer_pb2.ModelRequest,
        "FetchUpdate": peer_pb2.UpdateRequest,
        "Info": peer_pb2.InfoRequest,
    }[method]
    with pytest.raises(DecodeError):
        request_type.FromString(data)  # the premise: this is not a valid request
    if method.startswith("Fetch"):
        outcome = swarm.raw.fetch(data, method)[0]
    else:
        outcome = swarm.raw.unary(method, data)
    SERVER_ERRORS.clear()  # grpc's own "Exception deserializing message!" record
    check("malformed unary", outcome, {INVALID})
    assert_buffers_hold_only_honest_data(swarm.inbox)


# ------------------------------------------------------------------------------- afterwards


def _flood(swarm: Swarm, seed: int, count: int) -> list[Outcome]:
    """Bad messages from A, from a seeded generator: one of each family in turn."""
    rng = random.Random(seed)
    outcomes = []
    for i in range(count):
        base = rng.choice(BASES)
        method = method_for(base)
        encoded = wire(base)
        pick = i % 6
        if pick == 0:
            message = rng.randbytes(rng.randrange(0, 200))
        elif pick == 1:
            message = encoded[: rng.randrange(0, len(encoded))]
        elif pick == 2:
            message = wire(with_header(base, round=rng.randrange(FLOOR)))
        elif pick == 3:
            message = wire(with_header(base, sender=H))
        elif pick == 4:
            message = wire(with_header(base, dtype=rng.choice([0, 2, 7])))
        else:
            bits = _nonfinite(rng.random() < 0.5, rng.randrange(2**23))
            bad = Frame(base.header, memoryview(poison(bytes(base.payload), {0: bits})))
            message = wire(bad)
        outcomes.append(swarm.raw.push(method, [message]))
    return outcomes


def test_afterwards_honest_peers_are_served_and_only_honest_data_was_kept(swarm: Swarm) -> None:
    inbox = swarm.inbox
    # (1) what the fuzzing left: A's contributions exactly as sent honestly, H's untouched
    assert_buffers_hold_only_honest_data(inbox)

    # H contributes through GrpcTransport while A floods bad messages from four threads
    with ThreadPoolExecutor(max_workers=4) as pool:
        floods = [pool.submit(_flood, swarm, seed, 60) for seed in range(4)]
        sent_update = swarm.honest.push(R, lambda: H_UPDATE_FRAMES, TIMEOUT)
        sent_merged = swarm.honest.push(R, lambda: H_MERGED_FRAMES, TIMEOUT)
        outcomes = [outcome for flood in floods for outcome in flood.result()]
    for outcome in outcomes:
        check("concurrent flood", outcome, {INVALID, STALE, DENIED})
    assert sent_update == len(UPDATE_SPAN)
    assert sent_merged == len(H_MERGED_SPAN)
    got = inbox.update(ROUND, H, 2, timeout=5)
    assert got is not None
    assert got.tobytes() == H_UPDATE[UPDATE_SPAN.start : UPDATE_SPAN.stop].tobytes()
    got = inbox.merged(ROUND, ATTEMPT, 1, timeout=5)
    assert got is not None
    assert got.tobytes() == H_MERGED[H_MERGED_SPAN.start : H_MERGED_SPAN.stop].tobytes()

    # A, pushing honestly through the client again, is accepted and changes nothing
    assert swarm.attacker.push(R, lambda: UPDATE_FRAMES, TIMEOUT) == len(UPDATE_SPAN)
    assert swarm.attacker.push(R, lambda: MERGED_FRAMES, TIMEOUT) == len(MERGED_SPAN)
    got = inbox.update(ROUND, A, 2, timeout=5)
    assert got is not None
    assert got.tobytes() == A_UPDATE[UPDATE_SPAN.start : UPDATE_SPAN.stop].tobytes()
    got = inbox.merged(ROUND, ATTEMPT, 0, timeout=5)
    assert got is not None
    assert got.tobytes() == A_MERGED[MERGED_SPAN.start : MERGED_SPAN.stop].tobytes()
    poisoned = inbox.update(NAN_ROUND, A, 2, timeout=0)
    assert poisoned is None  # no NaN-carrying segment was ever completed

    # (2) the server still answers Info and catch-up correctly
    info = swarm.honest.info(R, TIMEOUT)
    assert (info.account, info.version, info.serving) == (R, __version__, True)
    fetched = swarm.attacker.fetch_model(R, MODEL_ROUND, canonical.digest(FINAL), NUMEL, TIMEOUT)
    assert fetched.tobytes() == FINAL.tobytes()

    # (3) nothing crashed: no handler raised, no thread died, the server still serves
    assert_quiet()
    assert inbox.refused > 0
