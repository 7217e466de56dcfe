"""An in-memory transport: no sockets, the same frames, codec and Inbox checks as gRPC.

For the upper layers' unit tests and the simulator's sweeps, where hundreds of rounds over
loopback TLS would cost minutes (docs/simulator.md#in-memory-backend). Frames and Info
replies are encoded and decoded as on the wire, so a malformed or refused message
fails here exactly as it would over gRPC, and the sender an Inbox sees is the roster's
record of the caller, as the certificate check gives it over gRPC.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from swarmnode import merkle
from swarmnode.address import normalize
from swarmnode.canonical import num_chunks
from swarmnode.exceptions import PeerError
from swarmnode.p2p import frames as codec
from swarmnode.p2p import peer_pb2
from swarmnode.p2p.errors import InvalidMessage, NotFound, NotReady, Refused, Stale, Unauthorized
from swarmnode.p2p.frames import Frame, frames_for
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
from swarmnode.p2p.roster import Roster
from swarmnode.p2p.transport import (
    READY_MARGIN,
    FrameSource,
    Transport,
    WireCount,
    message_parts,
)
from swarmnode.version import __version__


class MemoryNetwork:
    """Connects the inboxes of in-process nodes; the roster decides who may talk."""

    def __init__(self, roster: Roster) -> None:
        self.roster = roster
        self._lock = threading.Lock()
        self._inboxes: dict[str, Inbox] = {}
        self._wires: dict[str, WireCount] = {}

    def wire(self, account: str) -> WireCount:
        """`account`'s byte count: its transport's calls and what its inbox is sent, counted
        on the encoded messages as gRPC counts them, so both transports report the same."""
        key = normalize(account)
        with self._lock:
            return self._wires.setdefault(key, WireCount())

    def attach(self, inbox: Inbox) -> None:
        with self._lock:
            self._inboxes[inbox.account] = inbox

    def detach(self, account: str) -> None:
        with self._lock:
            self._inboxes.pop(normalize(account), None)

    def inbox(self, caller: str, peer: str) -> tuple[str, Inbox]:
        """`peer`'s inbox, and the caller's account as the roster spells it (what a
        certificate check would give the receiver)."""
        calling = self.roster.get(caller)
        if calling is None:
            raise Unauthorized(f"{peer} refused: {caller} is not on the roster")
        called = self.roster.get(peer)
        if called is None:
            raise Unauthorized(f"{peer} is not on the roster")
        with self._lock:
            inbox = self._inboxes.get(called.account)
        if inbox is None:
            raise PeerError(f"{peer}: UNAVAILABLE: nobody listens there")
        return calling.account, inbox


class MemoryTransport(Transport):
    def __init__(self, network: MemoryNetwork, account: str) -> None:
        self.account = normalize(account)
        self._network = network
        self.wire = network.wire(self.account)

    def _send(self, message: bytes, to: WireCount, parts: tuple[int, int] = (0, 0)) -> bytes:
        """A message from this node to a peer, counted at both ends as gRPC would count it;
        `parts`: its (payload, hashes) bytes when it is a frame (message_parts)."""
        return to.received(self.wire.sent(message, parts), parts)

    def _answer(self, message: bytes, by: WireCount, parts: tuple[int, int] = (0, 0)) -> bytes:
        """A peer's answer to this node, counted at both ends."""
        return self.wire.received(by.sent(message, parts), parts)

    def _push_once(self, peer: str, frames: FrameSource, timeout: float) -> int:
        sender, inbox = self._network.inbox(self.account, peer)
        theirs = self._network.wire(inbox.account)
        total = 0
        kind = None
        sent = False
        named = ""  # the stream's sender: its first frame names it (inherit_sender)
        for frame in frames():
            wire = codec.decode(self._send(codec.encode(frame), theirs, message_parts(frame)))
            named = named or wire.header.sender
            wire.header.sender = wire.header.sender or named
            sent = True
            kind = kind or wire.header.kind
            if wire.header.kind != kind:
                raise InvalidMessage(f"{peer} refused: a frame of kind {wire.header.kind}")
            # the wait for an undeclared round ends before the caller's own deadline
            wait = min(inbox.ready_wait, timeout - min(READY_MARGIN, timeout / 2))
            total += inbox.receive(wire, sender, wait=wait)
        if sent:  # the Ack (gRPC sends no call at all for an empty stream)
            ack = peer_pb2.Ack(elements=total).SerializeToString()
            total = int(peer_pb2.Ack.FromString(self._answer(ack, theirs)).elements)
        return total

    def _fetch_frames(self, peer: str, round: int, timeout: float) -> Iterator[Frame]:
        _, inbox = self._network.inbox(self.account, peer)
        theirs = self._network.wire(inbox.account)
        self._send(peer_pb2.ModelRequest(round=round).SerializeToString(), theirs)
        found = inbox.model(round)
        if found is None:
            raise NotFound(f"{peer}: NOT_FOUND: no final model of round {round} here")
        vector, hashes = found
        for frame in frames_for(
            vector,
            range(num_chunks(len(vector))),
            kind=Kind.MODEL,
            round=round,
            attempt=0,
            segment=0,
            sender=peer,
            prove=merkle.Tree(hashes).proof,  # each frame against the final digest
        ):
            yield codec.decode(self._answer(codec.encode(frame), theirs, message_parts(frame)))

    def _fetch_update_frames(
        self, peer: str, round: int, sender: str, chunks: range, timeout: float
    ) -> Iterator[Frame]:
        caller, inbox = self._network.inbox(self.account, peer)
        theirs = self._network.wire(inbox.account)
        request = peer_pb2.UpdateRequest(
            round=round, sender=sender, first_chunk=chunks.start, chunks=len(chunks)
        )
        self._send(request.SerializeToString(), theirs)
        try:
            frames = inbox.update_frames(round, caller, sender, chunks.start, len(chunks))
        except NotFound as exc:
            raise NotFound(f"{peer}: NOT_FOUND: {exc}") from exc
        except PeerError as exc:  # as the gRPC client names the peer that refused
            raise type(exc)(f"{peer} refused: {exc}") from exc
        for frame in frames:
            yield codec.decode(self._answer(codec.encode(frame), theirs, message_parts(frame)))

    def _secagg_once(self, peer: str, message: SecAggMessage, timeout: float) -> bytes:
        """As the gRPC server answers: the request parsed from its bytes, the round's
        handler with a deadline a moment before the caller's, and the handler's refusal
        reaching the caller as the status gRPC would carry (_as_the_wire_says)."""
        caller, inbox = self._network.inbox(self.account, peer)
        theirs = self._network.wire(inbox.account)
        data = self._send(secagg_to_wire(message).SerializeToString(), theirs)
        margin = min(READY_MARGIN, timeout / 2)
        try:
            received = secagg_from_wire(secagg_request_bytes(data))
            wait = min(inbox.ready_wait, timeout - margin)
            body = inbox.secagg(caller, received, wait, time.monotonic() + timeout - margin)
        except PeerError as exc:
            raise _as_the_wire_says(peer, exc) from exc
        except Exception as exc:  # a handler's bug: gRPC answers UNKNOWN
            raise PeerError(f"{peer}: UNKNOWN: {type(exc).__name__}: {exc}") from exc
        reply = peer_pb2.SecAggReply(body=body).SerializeToString()
        return secagg_reply_body(self._answer(reply, theirs))

    def info(self, peer: str, timeout: float, round: int = 0) -> PeerInfo:
        _, inbox = self._network.inbox(self.account, peer)
        theirs = self._network.wire(inbox.account)
        self._send(peer_pb2.InfoRequest(round=round).SerializeToString(), theirs)
        waiting = tuple(inbox.waiting_for(round)) if round else ()
        reply = info_to_wire(PeerInfo(inbox.account, 0, __version__, True, waiting))
        answer = self._answer(reply.SerializeToString(), theirs)
        return info_from_wire(peer_pb2.InfoReply.FromString(answer))

    def close(self) -> None:
        """Nothing to release."""


def _as_the_wire_says(peer: str, exc: PeerError) -> PeerError:
    """A refusal as the caller hears it over gRPC (grpc_transport's status mapping): the
    families it keeps, and any other PeerError as InvalidMessage, naming `peer`."""
    if isinstance(exc, NotReady):
        return NotReady(f"{peer}: {exc}")
    if isinstance(exc, Stale):
        return Stale(f"{peer}: stale: {exc}")
    for kind in (Refused, Unauthorized, NotFound):
        if isinstance(exc, kind):
            return kind(f"{peer} refused: {exc}")
    return InvalidMessage(f"{peer} refused: {exc}")
