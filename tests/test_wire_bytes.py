"""The transports' byte counts (swarmnode.p2p.transport.WireCount) against the wire.

Each transport counts every serialized message it sends or receives plus gRPC's 5-byte
message prefix, as caller and as server (docs/round-protocol.md#data-plane). Here a loopback
TCP proxy between a GrpcTransport and a PeerServer counts the bytes that really cross,
independently of gRPC; and the memory transport must count what gRPC counts for the same
push, so simulator sweeps and real runs report the same traffic.

The proxied pair runs without TLS (test-only subclasses, as the transport benchmark's
grpc-plain case does): TLS records would add a size-dependent overhead of their own that says
nothing about the counting. What is left between the proxy's count and the transport's is
HTTP/2's framing: per call a HEADERS frame each way (method path, content type, deadline,
status; HPACK-compressed, under a few hundred bytes), 9 bytes of frame header per DATA
frame (at most 16 KiB each by default: 0.055 %), and WINDOW_UPDATE / PING frames (13-17
bytes each, a few per call). So the proxy must see at least what the transport counted, and
at most 0.1 % + 1 KiB more per direction (measured here: 271 bytes more up and 76 down for
a 1 MiB push, 77 up and 104 down for a 1 MiB fetch); a count that missed the payload or
the 2 KiB hash list of a 1 MiB push would fall outside that window.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest

from swarmnode import canonical
from swarmnode.address import normalize
from swarmnode.identity import TlsIdentity
from swarmnode.p2p import peer_pb2
from swarmnode.p2p.errors import NotReady
from swarmnode.p2p.frames import Frame, encode, frames_for
from swarmnode.p2p.grpc_transport import CHANNEL_OPTIONS, GrpcTransport, PeerServer
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.memory import MemoryNetwork, MemoryTransport
from swarmnode.p2p.messages import Kind
from swarmnode.p2p.roster import PeerRecord, Roster
from swarmnode.p2p.transport import MESSAGE_PREFIX, WireCount

ROUND = 7
NUMEL = 64 * canonical.CHUNK_ELEMENTS  # 1 MiB of float32
SLACK = 0.001  # relative: HTTP/2 DATA frame headers and flow control
FIXED = 1024  # bytes per direction: one call's HEADERS frames, trailers and a PING


class PlainPeerServer(PeerServer):
    """A PeerServer on a plaintext port: the caller is taken to be `sender` (there is no
    certificate to name it)."""

    def __init__(self, account: str, sender: str, roster: Roster, inbox: Inbox) -> None:
        self.account = normalize(account)
        self._roster = roster
        self._inbox = inbox
        self._current_round = lambda: ROUND
        self._served_version = -1
        self._serving = True
        self._sender = normalize(sender)
        self._wire = WireCount()
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="plain"),
            options=CHANNEL_OPTIONS,
        )
        self._server.add_generic_rpc_handlers((self._handlers(),))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"127.0.0.1:{self.port}"

    def _authenticate(self, context: grpc.ServicerContext) -> str:
        return self._sender


class PlainTransport(GrpcTransport):
    """A GrpcTransport dialing plaintext: the roster's endpoint (the proxy), no TLS."""

    def _channel(self, peer: str) -> grpc.Channel:
        record = self._roster.get(peer)
        assert record is not None
        with self._lock:
            cached = self._channels.get(record.account)
            if cached is None:
                channel = grpc.insecure_channel(record.endpoint, options=CHANNEL_OPTIONS)
                cached = (record, channel)
                self._channels[record.account] = cached
            return cached[1]


class CountingProxy:
    """Forwards one TCP connection at a time to `target`, counting the bytes each way."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = 0  # client -> server
        self.down = 0  # server -> client
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def totals(self) -> tuple[int, int]:
        with self._lock:
            return self.up, self.down

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed: done
                return
            server = socket.create_connection(self.target, timeout=10)
            server.settimeout(None)
            self._sockets += [client, server]
            for source, sink, up in ((client, server, True), (server, client, False)):
                thread = threading.Thread(
                    target=self._forward, args=(source, sink, up), daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def _forward(self, source: socket.socket, sink: socket.socket, up: bool) -> None:
        while True:
            try:
                data = source.recv(1 << 16)
                if not data:
                    break
                sink.sendall(data)
            except OSError:
                break
            with self._lock:
                if up:
                    self.up += len(data)
                else:
                    self.down += len(data)
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes the accepting thread at once
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for s in self._sockets:
            s.close()
        for thread in [self._accepting, *self._threads]:
            thread.join(timeout=5)


def account() -> str:
    return normalize("0x" + secrets.token_hex(20))


def vector(seed: int) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).standard_normal(NUMEL).astype(np.float32)


def update(sender: str, values: npt.NDArray[np.float32]) -> list[Frame]:
    return list(
        frames_for(
            values,
            range(canonical.num_chunks(NUMEL)),
            kind=Kind.UPDATE,
            round=ROUND,
            attempt=1,
            segment=0,
            sender=sender,
            chunk_hashes=canonical.chunk_hashes(values),
            frame_chunks=8,
        )
    )


class ProxiedPair:
    def __init__(self) -> None:
        self.a, self.b = account(), account()
        self.inbox = Inbox(self.b)
        self.roster = Roster()
        self.server = PlainPeerServer(self.b, self.a, self.roster, self.inbox).start()
        self.proxy = CountingProxy(("127.0.0.1", self.server.port))
        cert = TlsIdentity.generate(self.b).cert_der
        self.roster.upsert(PeerRecord(self.b, f"127.0.0.1:{self.proxy.port}", cert))
        self.client = PlainTransport(self.a, b"", b"", self.roster)

    def close(self) -> None:
        self.client.close()
        self.server.stop(0)
        self.proxy.close()


@pytest.fixture
def pair() -> Iterator[ProxiedPair]:
    built = ProxiedPair()
    yield built
    built.close()


def within(counted: int, on_wire: int) -> None:
    assert counted <= on_wire <= counted * (1 + SLACK) + FIXED, (counted, on_wire)


def measured(pair: ProxiedPair, call: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """(client sent, client received) by the transport and (up, down) by the proxy, for
    `call` alone: the connection is opened and settled before by an Info call."""
    pair.client.info(pair.b, timeout=10)
    wire_before, proxy_before = pair.client.wire.totals(), pair.proxy.totals()
    call()
    sent, received = pair.client.wire.totals()
    # the proxy forwards before it counts: the last bytes may still be in its threads
    up, down = pair.proxy.totals()
    for _ in range(200):
        if up - proxy_before[0] >= sent - wire_before[0] and (
            down - proxy_before[1] >= received - wire_before[1]
        ):
            break
        threading.Event().wait(0.01)
        up, down = pair.proxy.totals()
    return (
        (sent - wire_before[0], received - wire_before[1]),
        (up - proxy_before[0], down - proxy_before[1]),
    )


def test_a_push_counts_what_crosses_the_wire(pair: ProxiedPair) -> None:
    values = vector(1)
    pair.inbox.expect_updates(
        ROUND, {0: range(canonical.num_chunks(NUMEL))}, NUMEL, {pair.a: canonical.digest(values)}
    )
    frames = update(pair.a, values)
    counted, on_wire = measured(pair, lambda: pair.client.push(pair.b, lambda: frames, timeout=10))
    assert counted[0] > NUMEL * 4 + len(canonical.chunk_hashes(values))  # payload, list, prefixes
    within(counted[0], on_wire[0])
    within(counted[1], on_wire[1])
    # the server counted the same messages from its side
    assert pair.server.wire.totals()[0] <= counted[1] + FIXED


def test_a_fetch_counts_what_crosses_the_wire(pair: ProxiedPair) -> None:
    values = vector(2)
    pair.inbox.publish_model(ROUND, values, canonical.chunk_hashes(values))
    digest = canonical.digest(values)
    got: list[npt.NDArray[np.float32]] = []
    counted, on_wire = measured(
        pair, lambda: got.append(pair.client.fetch_model(pair.b, ROUND, digest, NUMEL, 10))
    )
    assert np.array_equal(got[0], values)
    assert counted[1] > NUMEL * 4
    within(counted[0], on_wire[0])
    within(counted[1], on_wire[1])


def test_memory_and_grpc_count_the_same_push(pair: ProxiedPair) -> None:
    values = vector(3)
    commitments = {pair.a: canonical.digest(values)}
    segments = {0: range(canonical.num_chunks(NUMEL))}
    pair.inbox.expect_updates(ROUND, segments, NUMEL, commitments)
    frames = update(pair.a, values)
    before = pair.client.wire.totals()
    pair.client.push(pair.b, lambda: frames, timeout=10)
    after = pair.client.wire.totals()
    grpc_counts = (after[0] - before[0], after[1] - before[1])

    roster = Roster()
    network = MemoryNetwork(roster)
    inbox = Inbox(pair.b)
    network.attach(inbox)
    for who in (pair.a, pair.b):
        roster.upsert(PeerRecord(who, "memory", TlsIdentity.generate(who).cert_der))
    inbox.expect_updates(ROUND, segments, NUMEL, commitments)
    memory = MemoryTransport(network, pair.a)
    memory.push(pair.b, lambda: frames, timeout=10)
    assert memory.wire.totals() == grpc_counts
    # and the receiver's count mirrors the sender's
    assert network.wire(pair.b).totals() == (grpc_counts[1], grpc_counts[0])


def memory_pair(a: str, b: str) -> tuple[MemoryTransport, Inbox, MemoryNetwork]:
    roster = Roster()
    network = MemoryNetwork(roster)
    inbox = Inbox(b)
    network.attach(inbox)
    for who in (a, b):
        roster.upsert(PeerRecord(who, "memory", TlsIdentity.generate(who).cert_der))
    return MemoryTransport(network, a), inbox, network


@pytest.mark.parametrize("kind", ["memory", "grpc"])
def test_a_push_before_the_round_is_declared_waits_and_is_read_once(
    kind: str, pair: ProxiedPair
) -> None:
    """The receiver holds the early first frame until it declares the round, instead of
    answering NotReady and having the whole frame sent again
    (docs/round-protocol.md#not-ready): the sender's count is one copy of the stream."""
    values = vector(4)
    frames = update(pair.a, values)
    client: GrpcTransport | MemoryTransport = pair.client
    inbox = pair.inbox
    if kind == "memory":
        client, inbox, _ = memory_pair(pair.a, pair.b)
    else:
        pair.client.info(pair.b, timeout=10)  # the connection is up before counting
    before = client.wire.totals()[0]
    with futures.ThreadPoolExecutor(max_workers=1) as pool:
        push = pool.submit(client.push, pair.b, lambda: frames, 30)
        assert inbox.early_frames(1, timeout=20), "the first frame never reached the inbox"
        assert not push.done()
        chunks = range(canonical.num_chunks(NUMEL))
        inbox.expect_updates(ROUND, {0: chunks}, NUMEL, {pair.a: canonical.digest(values)})
        assert push.result(timeout=20) == NUMEL
    once = sum(len(encode(f)) + MESSAGE_PREFIX for f in frames)
    assert client.wire.totals()[0] - before == once
    assert inbox.update(ROUND, pair.a, 0, timeout=5) is not None


@pytest.mark.parametrize("kind", ["memory", "grpc"])
def test_a_push_for_a_round_never_declared_is_not_ready_after_the_wait(
    kind: str, pair: ProxiedPair
) -> None:
    """The wait is bounded by the Inbox's ready_wait, so the caller hears NotReady, retries,
    and at its deadline still ends on NotReady (not a deadline error, whichever try the
    deadline cut)."""
    frames = update(pair.a, vector(5))
    client: GrpcTransport | MemoryTransport = pair.client
    inbox = pair.inbox
    if kind == "memory":
        client, inbox, _ = memory_pair(pair.a, pair.b)
    inbox.ready_wait = 0.3
    with pytest.raises(NotReady):
        client.push(pair.b, lambda: frames, timeout=3)


def test_the_split_sums_to_the_count_that_matches_the_proxy(pair: ProxiedPair) -> None:
    """Payload, hashes and framing (ByteSplit) part exactly the bytes counted, and that
    count is still what the proxy sees (within HTTP/2's framing); the payload is the float32
    values alone, the hashes the first frame's chunk hashes and proof."""
    values = vector(6)
    chunks = range(canonical.num_chunks(NUMEL))
    pair.inbox.expect_updates(ROUND, {0: chunks}, NUMEL, {pair.a: canonical.digest(values)})
    frames = update(pair.a, values)
    before = pair.client.wire.split()
    counted, on_wire = measured(pair, lambda: pair.client.push(pair.b, lambda: frames, timeout=10))
    now = pair.client.wire.split()
    sent, received = now[0] - before[0], now[1] - before[1]
    within(counted[0], on_wire[0])
    within(counted[1], on_wire[1])
    info = peer_pb2.InfoRequest().ByteSize() + MESSAGE_PREFIX  # measured() opens with an Info
    assert sent.total == counted[0] + info
    assert sent.payload == NUMEL * canonical.ELEMENT_BYTES
    proofs = sum(len(getattr(f.header, "proof", b"")) for f in frames)
    assert sent.hashes == sum(len(f.header.chunk_hashes) for f in frames) + proofs > 0
    assert sent.framing == sent.total - sent.payload - sent.hashes
    assert 0 < sent.framing < 0.01 * sent.total
    assert received.payload == received.hashes == 0  # the Ack and the Info reply: framing
    assert received.total == received.framing > 0
