"""An in-memory transport: no sockets, the same frames, codec and Inbox checks as gRPC.

For the upper layers' unit tests and the simulator's sweeps, where hundreds of rounds over
loopback TLS would cost minutes. Frames are encoded and decoded as on the wire, so a
malformed or refused frame fails here exactly as it would over gRPC.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from swarmnode import __version__
from swarmnode.canonical import num_chunks
from swarmnode.p2p import frames as codec
from swarmnode.p2p import peer_pb2
from swarmnode.p2p.errors import InvalidMessage, Unauthorized
from swarmnode.p2p.frames import Frame, frames_for
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.roster import Roster
from swarmnode.p2p.transport import FrameSource, Transport


class MemoryNetwork:
    """Connects the inboxes of in-process nodes; the roster decides who may talk."""

    def __init__(self, roster: Roster) -> None:
        self.roster = roster
        self._lock = threading.Lock()
        self._inboxes: dict[str, Inbox] = {}

    def attach(self, inbox: Inbox) -> None:
        with self._lock:
            self._inboxes[inbox.account.lower()] = inbox

    def detach(self, account: str) -> None:
        with self._lock:
            self._inboxes.pop(account.lower(), None)

    def inbox(self, caller: str, peer: str) -> Inbox:
        if self.roster.get(caller) is None:
            raise Unauthorized(f"{peer} refused: {caller} is not on the roster")
        if self.roster.get(peer) is None:
            raise Unauthorized(f"{peer} is not on the roster")
        with self._lock:
            inbox = self._inboxes.get(peer.lower())
        if inbox is None:
            from swarmnode.exceptions import PeerError

            raise PeerError(f"{peer}: UNAVAILABLE: nobody listens there")
        return inbox


class MemoryTransport(Transport):
    def __init__(self, network: MemoryNetwork, account: str) -> None:
        self.account = account
        self._network = network

    def _push_once(self, peer: str, frames: FrameSource, timeout: float) -> int:
        inbox = self._network.inbox(self.account, peer)
        total = 0
        kind = None
        for frame in frames():
            wire = codec.decode(codec.encode(frame))
            kind = kind or wire.header.kind
            if wire.header.kind != kind:
                raise InvalidMessage(f"{peer} refused: a frame of kind {wire.header.kind}")
            total += inbox.receive(wire, self.account)
        return total

    def _partials_once(self, peer: str, message: peer_pb2.Partials, timeout: float) -> None:
        inbox = self._network.inbox(self.account, peer)
        inbox.receive_partials(
            peer_pb2.Partials.FromString(message.SerializeToString()), self.account
        )

    def _fetch_frames(self, peer: str, round: int, timeout: float) -> Iterator[Frame]:
        inbox = self._network.inbox(self.account, peer)
        found = inbox.model(round)
        if found is None:
            from swarmnode.exceptions import PeerError

            raise PeerError(f"{peer}: NOT_FOUND: no final model of round {round} here")
        vector, hashes = found
        for frame in frames_for(
            vector,
            range(num_chunks(len(vector))),
            kind=peer_pb2.KIND_MODEL,
            round=round,
            attempt=0,
            segment=0,
            sender=peer,
            chunk_hashes=hashes,
        ):
            yield codec.decode(codec.encode(frame))

    def info(self, peer: str, timeout: float, round: int = 0) -> peer_pb2.InfoReply:
        inbox = self._network.inbox(self.account, peer)
        waiting = inbox.waiting_for(round) if round else []
        return peer_pb2.InfoReply(
            account=peer, version=__version__, serving=True, waiting_for=waiting
        )

    def close(self) -> None:
        """Nothing to release."""
