"""A participant that runs modified code: it lies in messages, withholds and equivocates.

The adversarial tests and the simulator's protocol attacks (docs/simulator.md#attacks) make a
Byzantine node out of an honest one with these wrappers, so the all-reduce and the round
carry no attack branches, the same way swarmnode/p2p/faults.py makes a crashing one:

- `LyingTransport` wraps the node's client side: it withholds UPDATE frames from chosen
  owners, merged data or hashes from everyone, sends altered merged data to chosen peers
  (equivocation), or forged update values that do not match the node's commitment.
- `LyingInbox` is the node's server side: it answers `Info` naming peers it does not wait
  for (false blame) and refuses `FetchUpdate` (withholding on request).
- `LyingRule` is a merge rule that shifts what it merges: an owner that merges its segments
  wrongly and sends the same wrong result to everyone, as data when it merges and as hashes
  when it checks.

What the honest nodes do about each is in docs/trust.md#threat-model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import torch

from swarmnode.address import normalize
from swarmnode.merge import MergeRule
from swarmnode.merge.base import SegmentMerge, WeightsLike
from swarmnode.p2p.frames import Frame
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.messages import Kind, PeerInfo, SecAggMessage
from swarmnode.p2p.transport import FrameSource, Transport


@dataclass(frozen=True)
class Lies:
    """What a Byzantine participant does besides the protocol (all off by default)."""

    # UPDATE frames are not sent to these owners (withholding from one owner alone)
    withhold_updates_from: frozenset[str] = frozenset()
    withhold_merged: bool = False  # sends no merged data and no hashes to anyone
    tamper_merged_to: frozenset[str] = frozenset()  # these get merged data shifted by `shift`
    forge_updates: bool = False  # every UPDATE value shifted: fails the commitment check
    shift: float = 1.0  # how far tampered or forged values are moved
    claims_waiting_for: tuple[str, ...] = ()  # Info names these as awaited, whatever is true
    refuses_fetches: bool = False  # FetchUpdate answered as if nothing were held

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "withhold_updates_from", frozenset(map(normalize, self.withhold_updates_from))
        )
        object.__setattr__(
            self, "tamper_merged_to", frozenset(map(normalize, self.tamper_merged_to))
        )
        object.__setattr__(
            self, "claims_waiting_for", tuple(map(normalize, self.claims_waiting_for))
        )


def _shifted(frame: Frame, shift: float) -> Frame:
    values = np.frombuffer(frame.payload, dtype="<f4") + np.float32(shift)
    return replace(frame, payload=memoryview(values.astype("<f4").tobytes()))


class LyingTransport(Transport):
    """`inner`, lying as `lies` says in what it pushes; fetches and Info pass through."""

    def __init__(self, inner: Transport, lies: Lies) -> None:
        self.account = inner.account
        self.inner = inner
        self.wire = inner.wire
        self.lies = lies

    def _push_once(self, peer: str, frames: FrameSource, timeout: float) -> int:
        peer = normalize(peer)
        first = next(iter(frames()), None)
        kind = None if first is None else first.kind
        lies = self.lies
        if kind == Kind.UPDATE and peer in lies.withhold_updates_from:
            return 0  # nothing sent, nothing said
        if kind in (Kind.MERGED, Kind.MERGED_HASHES) and lies.withhold_merged:
            return 0
        if kind == Kind.UPDATE and lies.forge_updates:
            return self.inner._push_once(peer, self._each(frames, lies.shift), timeout)
        if kind == Kind.MERGED and peer in lies.tamper_merged_to:
            return self.inner._push_once(peer, self._each(frames, lies.shift), timeout)
        return self.inner._push_once(peer, frames, timeout)

    @staticmethod
    def _each(frames: FrameSource, shift: float) -> FrameSource:
        def altered() -> Iterator[Frame]:
            for frame in frames():
                yield _shifted(frame, shift) if len(frame.payload) else frame

        return altered

    def _fetch_frames(self, peer: str, round: int, timeout: float) -> Iterable[Frame]:
        return self.inner._fetch_frames(peer, round, timeout)

    def _fetch_update_frames(
        self, peer: str, round: int, sender: str, chunks: range, timeout: float
    ) -> Iterable[Frame]:
        return self.inner._fetch_update_frames(peer, round, sender, chunks, timeout)

    def _secagg_once(self, peer: str, message: SecAggMessage, timeout: float) -> bytes:
        return self.inner._secagg_once(peer, message, timeout)

    def info(self, peer: str, timeout: float, round: int = 0) -> PeerInfo:
        return self.inner.info(peer, timeout, round)

    def close(self) -> None:
        self.inner.close()


class LyingInbox(Inbox):
    """An Inbox whose answers to peers lie as `lies` says; what it accepts is unchanged."""

    def __init__(self, account: str, lies: Lies, **limits: int) -> None:
        super().__init__(account, **limits)
        self.lies = lies

    def waiting_for(self, round: int) -> list[str]:
        if self.lies.claims_waiting_for:
            return list(self.lies.claims_waiting_for)
        return super().waiting_for(round)

    def serve_update(
        self, round: int, sender: str, chunks: range
    ) -> tuple[npt.NDArray[np.float32], bytes, bytes] | None:
        if self.lies.refuses_fetches:
            return None
        return super().serve_update(round, sender, chunks)


class LyingRule(MergeRule):
    """`inner`'s merge shifted by `shift` in every element: an owner that merges wrongly,
    consistently, so its data and its hashes agree with each other and with nothing else."""

    def __init__(self, inner: MergeRule, shift: float) -> None:  # no Rule of its own to check
        self.inner = inner
        self.shift = shift
        self.rule = inner.rule
        self.min_contributions = inner.min_contributions

    @property
    def name(self) -> str:
        return f"lying {self.inner.name}"

    def begin(
        self,
        contributions: torch.Tensor,
        weights: WeightsLike,
        reference: torch.Tensor | None = None,
    ) -> SegmentMerge:
        return self.inner.begin(contributions, weights, reference)

    def merge_segment(
        self,
        contributions: torch.Tensor,
        weights: WeightsLike,
        reference: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.inner.merge_segment(contributions, weights, reference) + self.shift
