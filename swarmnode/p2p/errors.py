"""What can go wrong with a peer message, each mapped to one gRPC status on the wire."""

from __future__ import annotations

from swarmnode.exceptions import PeerError


class Unauthorized(PeerError):
    """The caller's certificate is not on the roster, or does not match the account it claims."""


class NotReady(PeerError):
    """Valid, but the receiver has not reached that round or attempt yet: retry soon."""


class Stale(PeerError):
    """For a round or attempt the receiver has left; never held against the sender."""


class InvalidMessage(PeerError):
    """Malformed or failing a check (size, dtype, hashes, finite values): refused, never merged."""


class NotFound(PeerError):
    """Valid, but the receiver does not hold what was asked for (a fetch): ask someone else."""


class Refused(PeerError):
    """Valid, but the receiver will not answer it (a secure-aggregation reveal that would
    break a reveal rule): the reason travels; asking again gets the same answer."""
