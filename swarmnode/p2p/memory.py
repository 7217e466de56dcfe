"""An in-memory transport: no sockets, the same frames, codec and Inbox checks as gRPC.

For the upper layers' unit tests and the simulator's sweeps, where hundreds of rounds over
loopback TLS would cost minutes (docs/simulator.md#in-memory-backend). Frames and Info
replies are encoded and decoded as on the wire, so a malformed or refused message
fails here exactly as it would over gRPC, and the sender an Inbox sees is the roster's
record of the caller, as the certificate check gives it over gRPC.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from swarmnode.address import normalize
from swarmnode.canonical import num_chunks
from swarmnode.exceptions import PeerError
from swarmnode.p2p import frames as codec
from swarmnode.p2p import peer_pb2
from swarmnode.p2p.errors import InvalidMessage, NotFound, Unauthorized
from swarmnode.p2p.frames import Frame, frames_for
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.messages import (
    Kind,
    PeerInfo,
    info_from_wire,
    info_to_wire,
)
from swarmnode.p2p.roster import Roster
from swarmnode.p2p.transport import FrameSource, Transport
from swarmnode.version import __version__


class MemoryNetwork:
    """Connects the inboxes of in-process nodes; the roster decides who may talk."""

    def __init__(self, roster: Roster) -> None:
        self.roster = roster
        self._lock = threading.Lock()
        self._inboxes: dict[str, Inbox] = {}

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

    def _push_once(self, peer: str, frames: FrameSource, timeout: float) -> int:
        sender, inbox = self._network.inbox(self.account, peer)
        total = 0
        kind = None
        for frame in frames():
            wire = codec.decode(codec.encode(frame))
            kind = kind or wire.header.kind
            if wire.header.kind != kind:
                raise InvalidMessage(f"{peer} refused: a frame of kind {wire.header.kind}")
            total += inbox.receive(wire, sender)
        return total

    def _fetch_frames(self, peer: str, round: int, timeout: float) -> Iterator[Frame]:
        _, inbox = self._network.inbox(self.account, peer)
        found = inbox.model(round)
        if found is None:
            raise PeerError(f"{peer}: NOT_FOUND: no final model of round {round} here")
        vector, hashes = found
        for frame in frames_for(
            vector,
            range(num_chunks(len(vector))),
            kind=Kind.MODEL,
            round=round,
            attempt=0,
            segment=0,
            sender=peer,
            chunk_hashes=hashes,
        ):
            yield codec.decode(codec.encode(frame))

    def _fetch_update_frames(
        self, peer: str, round: int, sender: str, chunks: range, timeout: float
    ) -> Iterator[Frame]:
        caller, inbox = self._network.inbox(self.account, peer)
        try:
            frames = inbox.update_frames(round, caller, sender, chunks.start, len(chunks))
        except NotFound as exc:
            raise NotFound(f"{peer}: NOT_FOUND: {exc}") from exc
        except PeerError as exc:  # as the gRPC client names the peer that refused
            raise type(exc)(f"{peer} refused: {exc}") from exc
        for frame in frames:
            yield codec.decode(codec.encode(frame))

    def info(self, peer: str, timeout: float, round: int = 0) -> PeerInfo:
        _, inbox = self._network.inbox(self.account, peer)
        waiting = tuple(inbox.waiting_for(round)) if round else ()
        reply = info_to_wire(PeerInfo(inbox.account, 0, __version__, True, waiting))
        return info_from_wire(peer_pb2.InfoReply.FromString(reply.SerializeToString()))

    def close(self) -> None:
        """Nothing to release."""
