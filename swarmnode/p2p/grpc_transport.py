"""gRPC with mutual TLS, gated by the roster on every call.

grpcio has no custom certificate-verification callback, so trust is built from what it has:
- the server's TLS layer trusts exactly the roster's certificates (dynamic server
  credentials whose fetcher returns the current roster when it changed), and requires a
  client certificate;
- every RPC then looks up the SHA-256 of the caller's certificate (from the auth context)
  in the roster before reading any data: a peer deregistered while its connection stays
  open is refused on its next call;
- a client trusts exactly the certificate registered for the peer it dials, and checks
  the name in it (the account, a DNS SubjectAltName) via ssl_target_name_override.
Frames use a hand-written serializer (frames.py) so that payloads are not copied by
protobuf. Refusals travel as status codes: PERMISSION_DENIED (not on the roster),
UNAVAILABLE with a "not ready" detail (retry), NOT_FOUND (a fetch of what the callee does
not hold), FAILED_PRECONDITION with a "stale" detail (a finished round or attempt) or a
"refused" one (what the callee will not answer), INVALID_ARGUMENT (bad data), each with a
message naming the problem (docs/trust.md#mutual-tls). Info replies and secure-aggregation
messages cross into the transport's own types (messages.py) here.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any, Generic, NoReturn, TypeVar

import grpc
import numpy as np
import numpy.typing as npt
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from swarmnode import merkle
from swarmnode.address import normalize
from swarmnode.canonical import num_chunks
from swarmnode.exceptions import PeerError
from swarmnode.p2p import frames as codec
from swarmnode.p2p import peer_pb2
from swarmnode.p2p.buffers import reuse_freed_memory
from swarmnode.p2p.errors import InvalidMessage, NotFound, NotReady, Refused, Stale, Unauthorized
from swarmnode.p2p.frames import (
    MAX_FRAME_ELEMENTS,
    MAX_HEADER_BYTES,
    Frame,
    frames_for,
    inherit_sender,
)
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.messages import (
    Kind,
    PeerInfo,
    SecAggMessage,
    info_from_wire,
    info_to_wire,
    secagg_from_wire,
    secagg_reply_body,
    secagg_request_bytes,
    secagg_to_wire,
)
from swarmnode.p2p.roster import PeerRecord, Roster
from swarmnode.p2p.transport import (
    READY_MARGIN,
    FrameSource,
    Transport,
    WireCount,
    message_parts,
)
from swarmnode.version import __version__

log = logging.getLogger(__name__)

SERVICE = "swarmnode.p2p.Peer"
NOT_READY = "not ready: "
STALE = "stale: "
REFUSED = "refused: "
# A frame: at most MAX_FRAME_ELEMENTS of payload, and in the first frame the header with the
# whole chunk-hash list (8 MiB for a 4 GiB model).
MESSAGE_LIMIT = MAX_HEADER_BYTES + MAX_FRAME_ELEMENTS * 4 + (64 << 10)
# Pushes that may wait at once for this node to declare their round: what an attempt of 64
# nodes can send one node before it does, rows of two segments (2 x 63), merged data and
# checkers' hashes (63 each). Each holds a server thread while it waits (bounded by
# ready_wait); threads start only when calls need them.
READY_WAITERS = 4 * 63
READ_AHEAD_FRAMES = 1
"""Frames of a pushed stream read ahead of the one being checked (ReadAhead); 0: none.
The first two frames are always read on the handler thread: a stream of one frame (a
small model's segment) or one waiting for this node's round starts no thread."""
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MESSAGE_LIMIT),
    ("grpc.max_send_message_length", MESSAGE_LIMIT),
]

T = TypeVar("T")


def certificate_fingerprint(pem: bytes) -> bytes:
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).digest()


class PeerServer:
    """Serves one node's Inbox to the peers on its roster."""

    def __init__(
        self,
        account: str,
        key_pem: bytes,
        cert_pem: bytes,
        roster: Roster,
        inbox: Inbox,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        workers: int = 8,
        ready_waiters: int = READY_WAITERS,
        current_round: Callable[[], int] = lambda: 0,
        wire: WireCount | None = None,
    ) -> None:
        self.account = normalize(account)
        self._wire = wire
        self._key_pem = key_pem
        self._cert_pem = cert_pem
        self._roster = roster
        self._inbox = inbox
        self._current_round = current_round
        self._served_version = -1
        self._serving = True
        # waits for this node's round hold a thread each, so the pool has room for them on
        # top of `workers` (threads are started only when calls need them)
        self._ready_slots = threading.BoundedSemaphore(max(1, ready_waiters))
        reuse_freed_memory()  # docs/architecture.md#transfer-speed
        self._server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=workers + max(1, ready_waiters), thread_name_prefix="peer"
            ),
            options=CHANNEL_OPTIONS,
        )
        self._server.add_generic_rpc_handlers((self._handlers(),))
        credentials = grpc.dynamic_ssl_server_credentials(
            self._certificate_configuration(),
            self._fetch_configuration,
            require_client_authentication=True,
        )
        self.port = self._server.add_secure_port(f"{host}:{port}", credentials)
        self.endpoint = f"{host}:{self.port}"

    _wire: WireCount | None = None
    _ready_slots: threading.BoundedSemaphore | None = None
    _slots_lock = threading.Lock()

    @property
    def _waiters(self) -> threading.BoundedSemaphore:
        """The slots for pushes waiting for this node's round (see _receive); 4 for a
        subclass that skips __init__ (its pool has no room for more)."""
        with self._slots_lock:
            if self._ready_slots is None:
                self._ready_slots = threading.BoundedSemaphore(4)
            return self._ready_slots

    @property
    def wire(self) -> WireCount:
        """The node's byte count, shared with its GrpcTransport (pass server.wire to it);
        made here when none was given, also for a subclass that skips __init__."""
        if self._wire is None:
            self._wire = WireCount()
        return self._wire

    # -- TLS trust follows the roster
    def _certificate_configuration(self) -> Any:
        self._served_version = self._roster.version
        roots = b"".join(r.certificate_pem for r in self._roster.records()) or self._cert_pem
        return grpc.ssl_server_certificate_configuration(
            [(self._key_pem, self._cert_pem)], root_certificates=roots
        )

    def _fetch_configuration(self) -> Any:
        if self._roster.version == self._served_version:
            return None  # unchanged: keep the current one
        return self._certificate_configuration()

    def start(self) -> PeerServer:
        self._server.start()
        return self

    def stop(self, grace: float = 1.0) -> None:
        self._serving = False
        self._server.stop(grace).wait()

    # -- every call starts here
    def _authenticate(self, context: grpc.ServicerContext) -> str:
        certificates = context.auth_context().get("x509_pem_cert") or []
        if not certificates:
            self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, "no client certificate")
        fingerprint = certificate_fingerprint(certificates[0])
        record = self._roster.by_fingerprint(fingerprint)
        if record is None:
            reason = f"certificate sha256 {fingerprint.hex()[:16]}… is not on the roster"
            log.warning("refused %s: %s", context.peer(), reason)
            self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, reason)
        return record.account

    @staticmethod
    def _refuse(context: grpc.ServicerContext, code: grpc.StatusCode, reason: str) -> NoReturn:
        context.abort(code, reason)
        raise AssertionError("abort returns only by raising")

    def _guarded(self, context: grpc.ServicerContext, sender: str, action: Callable[[], T]) -> T:
        try:
            return action()
        except NotReady as exc:
            self._refuse(context, grpc.StatusCode.UNAVAILABLE, NOT_READY + str(exc))
        except NotFound as exc:
            self._refuse(context, grpc.StatusCode.NOT_FOUND, str(exc))
        except Stale as exc:
            self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, STALE + str(exc))
        except Refused as exc:
            self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, REFUSED + str(exc))
        # the log gets the message's text, not the exception: a kept record would keep the
        # traceback, and through its frames the refused payload, alive
        except Unauthorized as exc:
            log.warning("refused %s: %s", sender, str(exc))
            self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except PeerError as exc:
            log.warning("refused a message from %s: %s", sender, str(exc))
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    # -- handlers
    def _handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Info": grpc.unary_unary_rpc_method_handler(
                    self._info,
                    request_deserializer=_counted_in(self.wire, _lenient(peer_pb2.InfoRequest)),
                    response_serializer=_counted_out(
                        self.wire, peer_pb2.InfoReply.SerializeToString
                    ),
                ),
                "PushUpdate": grpc.stream_unary_rpc_method_handler(
                    self._push(Kind.UPDATE),
                    request_deserializer=_counted_in(self.wire, codec.decode_lenient),
                    response_serializer=_counted_out(self.wire, peer_pb2.Ack.SerializeToString),
                ),
                "PushMerged": grpc.stream_unary_rpc_method_handler(
                    self._push(Kind.MERGED, Kind.MERGED_HASHES),
                    request_deserializer=_counted_in(self.wire, codec.decode_lenient),
                    response_serializer=_counted_out(self.wire, peer_pb2.Ack.SerializeToString),
                ),
                "FetchModel": grpc.unary_stream_rpc_method_handler(
                    self._fetch_model,
                    request_deserializer=_counted_in(self.wire, _lenient(peer_pb2.ModelRequest)),
                    response_serializer=_counted_out(self.wire, codec.encode),
                ),
                "FetchUpdate": grpc.unary_stream_rpc_method_handler(
                    self._fetch_update,
                    request_deserializer=_counted_in(self.wire, _lenient(peer_pb2.UpdateRequest)),
                    response_serializer=_counted_out(self.wire, codec.encode),
                ),
                "SecAgg": grpc.unary_unary_rpc_method_handler(
                    self._secagg,
                    request_deserializer=_counted_in(
                        self.wire, _lenient_call(secagg_request_bytes)
                    ),
                    response_serializer=_counted_out(
                        self.wire, peer_pb2.SecAggReply.SerializeToString
                    ),
                ),
            },
        )

    def _info(self, request: Any, context: grpc.ServicerContext) -> Any:
        sender = self._authenticate(context)
        self._guarded(context, sender, lambda: _valid(request))
        waiting = tuple(self._inbox.waiting_for(request.round)) if request.round else ()
        info = PeerInfo(self.account, self._current_round(), __version__, self._serving, waiting)
        return info_to_wire(info)

    def _push(self, *kinds: Kind) -> Callable[[Iterator[Any], grpc.ServicerContext], Any]:
        def handle(frames: Iterator[Any], context: grpc.ServicerContext) -> Any:
            sender = self._authenticate(context)  # before a single frame is read

            def accept(frame: Frame | InvalidMessage) -> int:
                if isinstance(frame, InvalidMessage):
                    raise frame
                if frame.kind not in kinds:
                    raise InvalidMessage(f"a frame of kind {frame.header.kind} on this call")
                return self._receive(frame, sender, context)

            def consume() -> int:
                source = inherit_sender(frames)  # the first frame names the sender
                first = next(source, None)
                if first is None:
                    return 0
                total = accept(first)  # may wait for this node's round: no thread yet
                second = next(source, None)
                if second is None:
                    return total  # one frame (a small model's segment): no thread at all
                total += accept(second)
                if READ_AHEAD_FRAMES < 1:
                    return total + sum(accept(frame) for frame in source)
                # docs/architecture.md#transfer-speed: gRPC reads the next frame while this
                # thread checks and stores the current one
                with ReadAhead(source, READ_AHEAD_FRAMES) as rest:
                    for frame in rest:
                        total += accept(frame)
                return total

            return peer_pb2.Ack(elements=self._guarded(context, sender, consume))

        return handle

    def _receive(self, frame: Frame, sender: str, context: grpc.ServicerContext) -> int:
        """One pushed frame into the Inbox. A frame for a round or attempt this node has not
        declared yet may wait there for it (docs/round-protocol.md#not-ready), on one of
        `ready_waiters` slots; the thread pool holds `workers` threads more, which stay free
        for the current round's streams, Info and fetches whatever waits. A frame that finds
        every slot taken is told NotReady at once. The wait also ends a moment before the
        caller's deadline, so the caller hears NotReady rather than a deadline."""
        if not self._waiters.acquire(blocking=False):
            return self._inbox.receive(frame, sender, wait=0.0)
        try:
            left = context.time_remaining()
            budget = self._inbox.ready_wait
            if left is not None:
                budget = min(budget, left - min(READY_MARGIN, left / 2))
            return self._inbox.receive(frame, sender, wait=budget)
        finally:
            self._waiters.release()

    def _secagg(self, request: Any, context: grpc.ServicerContext) -> Any:
        """SecAgg: the round's handler in the Inbox answers (Inbox.serve_secagg). A message
        for a round without a handler yet waits for one on a ready-waiting slot as an early
        push does (_receive); the handler's deadline is a moment before the caller's, or
        now when every slot is taken (it answers at once or says NotReady)."""
        caller = self._authenticate(context)  # before the body is looked at
        message = self._guarded(context, caller, lambda: secagg_from_wire(_valid(request)))

        def answer() -> bytes:
            if not self._waiters.acquire(blocking=False):
                return self._inbox.secagg(caller, message, 0.0, time.monotonic())
            try:
                left = context.time_remaining()
                budget = self._inbox.ready_wait
                deadline = time.monotonic() + budget
                if left is not None:
                    usable = left - min(READY_MARGIN, left / 2)
                    budget, deadline = min(budget, usable), time.monotonic() + usable
                return self._inbox.secagg(caller, message, budget, deadline)
            finally:
                self._waiters.release()

        return peer_pb2.SecAggReply(body=self._guarded(context, caller, answer))

    def _fetch_model(self, request: Any, context: grpc.ServicerContext) -> Any:
        sender = self._authenticate(context)
        request = self._guarded(context, sender, lambda: _valid(request))
        found = self._inbox.model(request.round)
        if found is None:
            self._refuse(
                context, grpc.StatusCode.NOT_FOUND, f"no final model of round {request.round} here"
            )
        vector, hashes = found
        yield from self._model_frames(request.round, vector, hashes)

    def _fetch_update(self, request: Any, context: grpc.ServicerContext) -> Any:
        """FetchUpdate: the Inbox checks the caller (a participant of the round) and the
        range, and answers from what it holds (docs/round-protocol.md#faults-and-votes)."""
        caller = self._authenticate(context)
        request = self._guarded(context, caller, lambda: _valid(request))
        frames = self._guarded(
            context,
            caller,
            lambda: self._update_frames(
                request.round, caller, request.sender, request.first_chunk, request.chunks
            ),
        )
        yield from frames

    def _update_frames(
        self, round: int, caller: str, sender: str, first_chunk: int, chunks: int
    ) -> Iterator[Frame]:
        """The answer's frames; a method of its own, like _model_frames, so that the attack
        tests can serve a dishonest stream over real mutual TLS."""
        return self._inbox.update_frames(round, caller, sender, first_chunk, chunks)

    def _model_frames(
        self, round: int, vector: npt.NDArray[np.float32], hashes: bytes
    ) -> Iterator[Frame]:
        """Every chunk of a final model once, each frame with the Merkle proof of its own
        chunks against the final digest (no hash list). A method of its own so that the
        attack tests can serve a dishonest stream over real mutual TLS
        (docs/trust.md#checks-on-received-data)."""
        return frames_for(
            vector,
            range(num_chunks(len(vector))),
            kind=Kind.MODEL,
            round=round,
            attempt=0,
            segment=0,
            sender=self.account,
            prove=merkle.Tree(hashes).proof,  # each frame against the final digest
        )


class GrpcTransport(Transport):
    """Client side: one mutual-TLS channel per peer, pinned to the peer's registered certificate."""

    def __init__(
        self,
        account: str,
        key_pem: bytes,
        cert_pem: bytes,
        roster: Roster,
        wire: WireCount | None = None,
    ) -> None:
        self.account = normalize(account)
        self.wire = wire or WireCount()  # the node's PeerServer's, so both add to one count
        reuse_freed_memory()  # docs/architecture.md#transfer-speed
        self._key_pem = key_pem
        self._cert_pem = cert_pem
        self._roster = roster
        self._lock = threading.Lock()
        self._channels: dict[str, tuple[PeerRecord, grpc.Channel]] = {}
        # push callables by (channel, method, unary), dropped with their channel
        self._calls: dict[tuple[grpc.Channel, str, bool], Any] = {}

    def _channel(self, peer: str) -> grpc.Channel:
        record = self._roster.get(peer)
        if record is None:
            raise Unauthorized(f"{peer} is not on the roster")
        with self._lock:
            cached = self._channels.get(record.account)
            if cached is not None and cached[0] == record:
                return cached[1]
            if cached is not None:
                cached[1].close()  # re-registered: new endpoint or certificate
                self._forget_calls(cached[1])
            credentials = grpc.ssl_channel_credentials(
                root_certificates=record.certificate_pem,
                private_key=self._key_pem,
                certificate_chain=self._cert_pem,
            )
            options = [*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", record.tls_name)]
            channel = grpc.secure_channel(record.endpoint, credentials, options=options)
            self._channels[record.account] = (record, channel)
            return channel

    def _call(self, peer: str, action: Callable[[grpc.Channel], T]) -> T:
        try:
            return action(self._channel(peer))
        except grpc.RpcError as exc:
            raise _as_peer_error(peer, exc) from exc

    def _push_once(self, peer: str, frames: FrameSource, timeout: float) -> int:
        def send(channel: grpc.Channel) -> int:
            stream = iter(frames())
            first = next(stream, None)
            if first is None:
                return 0
            method = "PushUpdate" if first.kind == Kind.UPDATE else "PushMerged"
            second = next(stream, None)
            if second is None:  # one frame: the same message on the wire, and no thread
                ack = self._pushes(channel, method, unary=True)(first, timeout=timeout)
                return int(ack.elements)

            def all_frames() -> Iterator[Frame]:
                yield first
                yield second
                yield from stream

            ack = self._pushes(channel, method, unary=False)(all_frames(), timeout=timeout)
            return int(ack.elements)

        return self._call(peer, send)

    def _pushes(self, channel: grpc.Channel, method: str, *, unary: bool) -> Any:
        """The callable that pushes to `method` on `channel`, made once per channel.

        A stream of one frame goes as a unary call: gRPC puts the same length-prefixed
        message on the same stream of the same method (the server's handler reads a stream
        either way), but its blocking stream-unary call starts a Python thread per call to
        consume the request iterator, which a unary call does not
        (docs/architecture.md#transfer-speed)."""
        key = (channel, method, unary)
        with self._lock:
            call = self._calls.get(key)
            if call is None:
                path = f"/{SERVICE}/{method}"
                serialize = _counted_out(self.wire, codec.encode)
                deserialize = _counted_in(self.wire, peer_pb2.Ack.FromString)
                make = channel.unary_unary if unary else channel.stream_unary
                call = make(path, request_serializer=serialize, response_deserializer=deserialize)
                self._calls[key] = call
            return call

    def _fetch_frames(self, peer: str, round: int, timeout: float) -> Iterator[Frame]:
        call = self._channel(peer).unary_stream(
            f"/{SERVICE}/FetchModel",
            request_serializer=_counted_out(self.wire, peer_pb2.ModelRequest.SerializeToString),
            response_deserializer=_counted_in(self.wire, codec.decode),
        )
        responses = call(peer_pb2.ModelRequest(round=round), timeout=timeout)
        try:
            yield from responses
        except grpc.RpcError as exc:
            raise _as_peer_error(peer, exc) from exc
        finally:
            responses.cancel()  # a stream refused half-way: the peer stops sending now

    def _fetch_update_frames(
        self, peer: str, round: int, sender: str, chunks: range, timeout: float
    ) -> Iterator[Frame]:
        call = self._channel(peer).unary_stream(
            f"/{SERVICE}/FetchUpdate",
            request_serializer=_counted_out(self.wire, peer_pb2.UpdateRequest.SerializeToString),
            response_deserializer=_counted_in(self.wire, codec.decode),
        )
        request = peer_pb2.UpdateRequest(
            round=round, sender=sender, first_chunk=chunks.start, chunks=len(chunks)
        )
        responses = call(request, timeout=timeout)
        try:
            yield from responses
        except grpc.RpcError as exc:
            raise _as_peer_error(peer, exc) from exc
        finally:
            responses.cancel()  # a stream refused half-way: the peer stops sending now

    def _secagg_once(self, peer: str, message: SecAggMessage, timeout: float) -> bytes:
        def ask(channel: grpc.Channel) -> bytes:
            call = channel.unary_unary(
                f"/{SERVICE}/SecAgg",
                request_serializer=_counted_out(
                    self.wire, peer_pb2.SecAggRequest.SerializeToString
                ),
                response_deserializer=_counted_in(self.wire, _lenient_call(secagg_reply_body)),
            )
            reply = call(secagg_to_wire(message), timeout=timeout)
            if isinstance(reply, InvalidMessage):
                raise InvalidMessage(f"{peer}: {reply}")
            return bytes(reply)

        return self._call(peer, ask)

    def info(self, peer: str, timeout: float, round: int = 0) -> PeerInfo:
        def ask(channel: grpc.Channel) -> PeerInfo:
            call = channel.unary_unary(
                f"/{SERVICE}/Info",
                request_serializer=_counted_out(self.wire, peer_pb2.InfoRequest.SerializeToString),
                response_deserializer=_counted_in(self.wire, peer_pb2.InfoReply.FromString),
            )
            reply: peer_pb2.InfoReply = call(peer_pb2.InfoRequest(round=round), timeout=timeout)
            return info_from_wire(reply)

        return self._call(peer, ask)

    def _forget_calls(self, channel: grpc.Channel) -> None:
        """Drops a closed channel's push callables (under the lock)."""
        for key in [k for k in self._calls if k[0] is channel]:
            del self._calls[key]

    def close(self) -> None:
        with self._lock:
            for _, channel in self._channels.values():
                channel.close()
            self._channels.clear()
            self._calls.clear()


class ReadAhead(Generic[T]):
    """Takes the items of `source` on a thread of its own, at most `depth` ahead of the
    consumer, so that a gRPC stream's next message is being received while the handler
    thread hashes, checks and stores the current one (docs/architecture.md#transfer-speed).

    A sync gRPC server reads a stream's next message only when the handler asks for it, and
    HTTP/2 flow control then holds the sender back: without a read pending, checking a frame
    and receiving the next one take turns instead of overlapping. Items come out in order;
    an exception raised by `source` is raised to the consumer after the items before it.
    Leaving the `with` block (or close()) stops the reader: it ends as soon as `source`
    yields or ends (a gRPC request iterator ends with its call), holding at most one item
    more, and is a daemon thread so it never holds the process up."""

    def __init__(self, source: Iterator[T], depth: int = 1) -> None:
        self._source = source
        self._depth = max(1, depth)
        self._ready: deque[T] = deque()
        self._error: BaseException | None = None
        self._ended = False
        self._closed = False
        self._changed = threading.Condition(threading.Lock())
        self._thread = threading.Thread(target=self._read, name="peer-read-ahead", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for item in self._source:
                with self._changed:
                    while len(self._ready) >= self._depth and not self._closed:
                        self._changed.wait()  # until the consumer takes one or closes
                    if self._closed:
                        return
                    self._ready.append(item)
                    self._changed.notify_all()
        except BaseException as exc:  # the call's end (RpcError) or a bad message: handed on
            with self._changed:
                self._error = exc
        finally:
            with self._changed:
                self._ended = True
                self._changed.notify_all()

    def __iter__(self) -> Iterator[T]:
        while True:
            with self._changed:
                while not self._ready and not self._ended:
                    self._changed.wait()  # until the reader has one: as bounded as the call
                if self._ready:
                    item = self._ready.popleft()
                    self._changed.notify_all()
                elif self._error is not None:
                    error, self._error = self._error, None
                    raise error
                else:
                    return
            yield item

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._ready.clear()  # what was read ahead and will not be used
            self._changed.notify_all()

    def __enter__(self) -> ReadAhead[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


M = TypeVar("M")


def _counted_out(wire: WireCount, serialize: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """A serializer that counts what it hands gRPC (docs/round-protocol.md#data-plane)."""
    return lambda message: wire.sent(serialize(message), message_parts(message))


def _counted_in(wire: WireCount, deserialize: Callable[[bytes], T]) -> Callable[[bytes], T]:
    """A deserializer that counts what gRPC hands it, split by what it parses to; a
    message that does not parse was received all the same (as framing)."""

    def parse(data: bytes) -> T:
        try:
            message = deserialize(data)
        except BaseException:
            wire.received(data)
            raise
        wire.received(data, message_parts(message))
        return message

    return parse


def _lenient(message_type: type[M]) -> Callable[[bytes], M | InvalidMessage]:
    """A request deserializer that hands a malformed message to the handler as a value, so
    the caller gets INVALID_ARGUMENT naming it, not gRPC's INTERNAL and a logged traceback."""

    def parse(data: bytes) -> M | InvalidMessage:
        try:
            return message_type.FromString(data)  # type: ignore[attr-defined,no-any-return]
        except Exception as exc:  # protobuf's DecodeError, bad UTF-8 in a string field
            return InvalidMessage(f"malformed {message_type.__name__}: {exc}")

    return parse


def _lenient_call(parse: Callable[[bytes], M]) -> Callable[[bytes], M | InvalidMessage]:
    """_lenient for a parser that raises InvalidMessage itself (a size limit, then protobuf)."""

    def lenient(data: bytes) -> M | InvalidMessage:
        try:
            return parse(data)
        except InvalidMessage as exc:
            return exc

    return lenient


def _valid(request: M | InvalidMessage) -> M:
    if isinstance(request, InvalidMessage):
        raise request
    return request


def _as_peer_error(peer: str, exc: grpc.RpcError) -> PeerError:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = (exc.details() if isinstance(exc, grpc.Call) else None) or str(exc)
    if code == grpc.StatusCode.UNAVAILABLE and details.startswith(NOT_READY):
        return NotReady(f"{peer}: {details.removeprefix(NOT_READY)}")
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(f"{peer}: NOT_FOUND: {details}")
    if code == grpc.StatusCode.FAILED_PRECONDITION and details.startswith(REFUSED):
        return Refused(f"{peer} refused: {details.removeprefix(REFUSED)}")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return Stale(f"{peer}: {details}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidMessage(f"{peer} refused: {details}")
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return Unauthorized(f"{peer} refused: {details}")
    name = code.name if code is not None else "error"
    return PeerError(f"{peer}: {name}: {details}")
