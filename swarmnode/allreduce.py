"""One attempt's data plane: reduce-scatter to two owners per segment, a checked all-gather.

Every segment of the canonical vector (whole-chunk ranges, sizes differing by at most one
chunk) has a merger and a checker, drawn from a permutation that the round's closing block
seeds (swarmnode/ownership.py). Reduce-scatter: each node streams segment s of its update to
both owners of s. Both merge s with the swarm's rule from the rows they hold, bit for bit
the same. All-gather: the merger streams its merged segment to every other node, the checker
only the 32-byte digest of its own result; a node takes a segment when the two agree, which
makes any wrong merge visible unless both owners of a segment lie together
(docs/round-protocol.md#data-plane, docs/round-protocol.md#owners).

With the checks off (SwarmParams.checked_merge false) each segment has one owner, its merger:
rows go to it alone, its data is taken as it comes, and no hashes travel
(docs/trust.md#unchecked-merge); a silent merger is still worked around as below.

When they disagree, or one is silent, the node checks for itself: it fetches that segment's
rows from their contributors (or from its owners; each row is checked against its
contributor's commitment), merges it and keeps its own result. An owner whose output differs
is accused; a silent owner is first asked whom it waits for and sent those rows (a relay),
and accused only if it stays silent after that; a contributor that refuses its own committed
rows is accused. Accusations are evidence this node saw itself, never a peer's word
(docs/round-protocol.md#faults-and-votes); the round layer turns them into drop votes.

Nothing here talks to the chain: the round layer hands in the attempt's live participants,
weights, commitments and seed as the contract fixed them. Nothing here is protobuf either:
the transport speaks swarmnode.p2p.messages' types.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import torch

from swarmnode import canonical, merkle
from swarmnode.address import normalize
from swarmnode.exceptions import PeerError
from swarmnode.merge import MergeRule
from swarmnode.ownership import Owners
from swarmnode.p2p.elements import FLOAT32
from swarmnode.p2p.frames import Frame, frames_for, frames_for_row, merged_hashes_frame
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.messages import Kind
from swarmnode.p2p.transport import ByteSplit, FrameSource, Transport
from swarmnode.secure_merge import SecureRound

log = logging.getLogger(__name__)

T = TypeVar("T")
Vector = npt.NDArray[np.float32]

# When, as fractions of the attempt's time, a node stops waiting and acts on what it lacks
# (docs/round-protocol.md#faults-and-votes):
SELF_HELP_AT = 0.25  # an owner fetches a row it still lacks from the segment's other owner
CHECK_AT = 0.5  # a node checks unconfirmed segments itself and relays to silent owners
RELAY_GRACE = 0.25  # then a silent owner has this long to send before it is accused
INFO_TIMEOUT = 2.0  # seconds to ask a silent owner what it waits for
LOOK = 0.05  # seconds between looks at this node's own sends while it waits for data
SENDS_IN_FLIGHT = 8  # most of one attempt's sends under way at once


class MissingContributions(PeerError):
    """Data this node needed did not arrive in time and could not be fetched: the round
    layer votes to drop `peers`, the ones that owed it and did not deliver."""

    def __init__(self, phase: str, peers: Sequence[str], why: str = "") -> None:
        self.phase = phase
        self.peers = tuple(peers)
        super().__init__(f"{phase}: nothing complete from {why or ', '.join(self.peers)} in time")


@dataclass
class Traffic:
    """Bytes this node moved, by direction, as its transport counted them on the wire:
    every message (payload, hashes and proofs, headers, requests, acks) plus gRPC's 5-byte
    prefix (swarmnode.p2p.transport.WireCount), both as caller and as server, from the
    attempt's start (or from `counted_from`, see AllReduceRunner) to its end; HTTP/2 and
    TLS framing are not in it. `sent_split` and `received_split` part the same bytes into
    payload, hashes and framing (ByteSplit)."""

    sent: int = 0
    received: int = 0
    sent_split: ByteSplit = field(default_factory=ByteSplit)
    received_split: ByteSplit = field(default_factory=ByteSplit)

    def add(self, sent: ByteSplit, received: ByteSplit) -> None:
        self.sent_split += sent
        self.received_split += received
        self.sent += sent.total
        self.received += received.total


@dataclass
class AllReduceResult:
    merged: Vector
    digest: bytes
    hashes: bytes  # the merged vector's chunk hashes: its digest, and what catch-up serves
    traffic: Traffic
    seconds: dict[str, float] = field(default_factory=dict)
    # peers this node saw fail it in this attempt, with what it saw: the round votes them out
    # once votes count, if the round is still on this attempt
    accused: dict[str, str] = field(default_factory=dict)
    checked: int = 0  # segments this node had to check itself (re-merged from their rows)


@dataclass(frozen=True)
class Attempt:
    """What the chain fixed for this attempt, in the contract's participant order.

    Accounts are normalized here, the all-reduce's one way in, so that whoever built the
    attempt (the round from the ledger, a test by hand) everything below compares with `==`
    (docs/architecture.md#addresses)."""

    round: int
    attempt: int
    participants: tuple[str, ...]  # live participants, contract order
    weights: tuple[int, ...]
    commitments: Mapping[str, bytes]
    seed: bytes = b""  # the round's closing block hash: seeds who owns which segment
    checked: bool = True  # SwarmParams.checked_merge: a second owner checks every merge

    def __post_init__(self) -> None:
        object.__setattr__(self, "participants", tuple(normalize(p) for p in self.participants))
        commitments = {normalize(p): c for p, c in self.commitments.items()}
        object.__setattr__(self, "commitments", commitments)

    def index_of(self, account: str) -> int:
        return self.participants.index(normalize(account))

    def owners(self, numel: int) -> Owners:
        return Owners.of(self.participants, self.seed, self.attempt, numel, self.checked)


@dataclass
class _Unconfirmed:
    """A segment whose two owners did not (yet) agree here: what each sent."""

    data: Vector | None
    hashes: bytes | None


class AllReduceRunner:
    """One node's part of one attempt, phase by phase: reduce-scatter, merge (this node's
    two segments, from its rows alone), checked all-gather. A send that fails with anything
    but a PeerError (an InjectedCrash from swarmnode.p2p.faults, a bug) ends the attempt at
    once; MissingContributions when something this node needs could not be had in time."""

    def __init__(
        self,
        *,
        me: str,
        attempt: Attempt,
        update: Vector,
        hashes: bytes,
        rule: MergeRule,
        transport: Transport,
        inbox: Inbox,
        reference: Vector | None = None,
        timeout: float = 60.0,
        frame_chunks: int | None = None,
        counted_from: tuple[ByteSplit, ByteSplit] | None = None,
        secure: SecureRound | None = None,
    ) -> None:
        """With `secure`, `update` is this node's masked words, `hashes` their chunk hashes
        and the attempt's commitments the masked roots: owners merge by unmasking
        (docs/secure-aggregation.md#in-a-round)."""
        self.me = normalize(me)
        self.secure = secure
        self.attempt = attempt
        self.update = update
        self.hashes = hashes
        self.rule = rule
        self.transport = transport
        self.inbox = inbox
        self.reference = reference
        self.timeout = timeout
        self.frame_chunks = frame_chunks
        self.numel = len(update)
        self.owners = attempt.owners(self.numel)
        self.mine = self.owners.owned_by(self.me)  # segment -> chunks, merged one first
        self.merging = self.owners.merged_by(self.me)
        self.checking = self.owners.checked_by(self.me)
        self.others = [p for p in attempt.participants if p != self.me]
        self.traffic = Traffic()
        # the wire's count when this node's part began, if before run(): a peer's first
        # frame may arrive, and wait in the Inbox, before this node declares the attempt
        # (docs/round-protocol.md#not-ready); its bytes are this attempt's all the same
        self._counted_from = counted_from
        self.seconds: dict[str, float] = {}
        self.accused: dict[str, str] = {}
        self.checked = 0
        # rows fetched in this attempt (each checked against its contributor's commitment)
        # and what their proofs proved, from which a relay proves each frame it forwards
        self._fetched: dict[tuple[str, int], Vector] = {}
        self._proofs: dict[tuple[str, int], merkle.Known] = {}
        self._tree = merkle.Tree(hashes)  # proves each segment of this node's own update
        self._leaves: dict[int, bytes] = {}  # chunk hashes of merged segments, once hashed
        self._start = time.monotonic()
        self._failure: BaseException | None = None  # set by a send's worker, read by waits
        self._pushes: list[Future[int]] = []  # reduce-scatter's sends, settled at the end

    def run(self) -> AllReduceResult:
        self._start = time.monotonic()
        sent, received = self._counted_from or self.transport.wire.split()
        try:
            return self._run()
        finally:  # what an attempt moved, whether it finished or not
            now_sent, now_received = self.transport.wire.split()
            self.traffic.add(now_sent - sent, now_received - received)

    def _run(self) -> AllReduceResult:
        self._expect()
        pool = _Sends(max(1, min(SENDS_IN_FLIGHT, 2 * len(self.others))))
        try:
            rows = self._timed("reduce_scatter", lambda: self.reduce_scatter(pool))
            if self.secure is not None:
                self._timed("rows_complete", self._rows_complete)
            segments = self._timed("merge", lambda: {s: self.merge(s, r) for s, r in rows.items()})
            merged = self._timed("all_gather", lambda: self.all_gather(pool, segments))
        except MissingContributions as missing:  # vote out everyone seen failing, not only these
            missing.peers = tuple(dict.fromkeys([*missing.peers, *self.accused]))
            raise
        finally:  # every send of this attempt settled, as it ends however it ends
            wait(pool.futures)
        hashes = self._merged_hashes(merged)  # the digest, and what catch-up serves
        digest = canonical.digest_from_chunk_hashes(hashes)
        return AllReduceResult(
            merged, digest, hashes, self.traffic, self.seconds, self.accused, self.checked
        )

    def _expect(self) -> None:
        """Declares what this node accepts in this attempt, before anything can block: peers
        that get there first are told NotReady and retry until then."""
        round, attempt = self.attempt.round, self.attempt.attempt
        self.inbox.offer_update(round, self.update, self.hashes)
        commitments = {p: self.attempt.commitments[p] for p in self.others}
        if self.secure is not None:
            self.secure.begin(attempt, self.attempt.participants, self.owners)
        self.inbox.expect_updates(
            round, self.mine, self.numel, commitments, attempt, dtype=self._dtype
        )
        needed = {
            s: (self.owners.merger(s), self.owners.checker(s), chunks)
            for s, chunks in enumerate(self.owners.chunks)
            if s not in self.mine
        }
        self.inbox.expect_merged(round, attempt, needed, self.numel)

    @property
    def _dtype(self) -> np.dtype[Any]:
        """What update rows hold: float32, or with secure aggregation the masked words."""
        return FLOAT32 if self.secure is None else self.secure.dtype

    def _at(self, fraction: float) -> float:
        return self._start + fraction * self.timeout

    # ------------------------------------------------------------------ phases

    def reduce_scatter(self, pool: _Sends) -> dict[int, list[Vector]]:
        """Streams segment s of this node's update to both owners of s; returns, for each of
        this node's segments, every participant's row in participant order."""
        runs = sorted(
            (s, self.owners.order.index(owner), owner, chunks)
            for owner in self.owners.order
            if owner != self.me
            for s, chunks in self._runs(owner)
        )  # in segment order, as the owners merge them
        pushes = [self._push(pool, owner, self._frames(s, chunks)) for s, _, owner, chunks in runs]
        rows: dict[int, dict[str, Vector]] = {
            s: {self.me: self._slice(self.update, s)} for s in self.mine
        }
        wanted = [(s, p) for s in self.mine for p in self.others]
        self._collect(wanted, rows, self._at(SELF_HELP_AT))
        for s, p in self._lacking(wanted, rows):
            row = self._self_help(s, p)
            if row is not None:
                rows[s][p] = row
        self._collect(self._lacking(wanted, rows), rows, self._at(1.0))
        self._pushes.extend(pushes)
        missing = sorted({p for _, p in self._lacking(wanted, rows)})
        if missing:
            for p in missing:
                self.accused[p] = "its update rows for this node's segments never came"
            raise MissingContributions("reduce-scatter", missing)
        order = self.attempt.participants
        return {s: [got[p] for p in order] for s, got in rows.items()}

    def _rows_complete(self) -> None:
        """With secure aggregation: an owner holding every row of its segments says so to
        every live participant, and every node waits for each owner's word before asking for
        reveals (a revealer answers only then: no reveal while a drop is still possible). An
        owner silent by half the attempt gets the rows it says it waits for relayed; one
        still silent at the end fails the attempt, votes only for the contributors seen
        withholding (docs/secure-aggregation.md#in-a-round)."""
        assert self.secure is not None
        attempt, live = self.attempt.attempt, self.attempt.participants
        if self.mine:
            self.secure.rows_complete(attempt, live, self._at(1.0))
        silent = self.secure.silent_owners(attempt, self._at(CHECK_AT))
        for owner in silent:
            self._relay_to(owner)
        silent = self.secure.silent_owners(attempt, self._at(1.0))
        if silent:
            raise MissingContributions(
                "rows complete",
                [p for p in self.accused if p != self.me],
                f"owners {', '.join(silent)} (no reveals without them)",
            )

    def _self_help(self, segment: int, contributor: str) -> Vector | None:
        """A row this owner still lacks, fetched from the segment's other owner (who got it
        if only this owner was withheld from) or else asked of the contributor itself; one
        that refuses its own committed rows is accused (relays may still bring them)."""
        other = next((o for o in self.owners.owners(segment) if o != self.me), None)
        if other is not None and other != contributor:
            with contextlib.suppress(PeerError):
                return self._fetch_row(other, contributor, segment)
        try:
            return self._fetch_row(contributor, contributor, segment)
        except PeerError:
            self.accused[contributor] = f"refused its committed rows of segment {segment}"
            return None

    def merge(self, segment: int, rows: list[Vector]) -> Vector:
        """Segment `segment` merged with the swarm's rule from its rows alone: no peer's word
        enters the decision (docs/round-protocol.md#partial-sums). With secure aggregation
        the rows are masked words, summed and unmasked with the live participants' reveals."""
        if self.secure is not None:
            elements = canonical.element_range(self.owners.chunks[segment], self.numel)
            return self.secure.merge(self.attempt.attempt, elements, rows, self._at(1.0))
        n = len(rows)
        contributions = torch.from_numpy(np.stack(rows)) if rows[0].size else torch.zeros((n, 0))
        ref = None
        if self.reference is not None:
            ref = torch.from_numpy(np.ascontiguousarray(self._slice(self.reference, segment)))
        merged = self.rule.merge_segment(contributions, list(self.attempt.weights), ref)
        return merged.detach().to("cpu", torch.float32).numpy()

    def all_gather(self, pool: _Sends, segments: dict[int, Vector]) -> Vector:
        """Sends this node's merged segment's data and its checked segment's hashes; returns
        the whole merged vector once every other segment is confirmed by its two owners or
        checked here."""
        merged = np.empty(self.numel, dtype=np.float32)
        for s, values in segments.items():
            self._place(merged, s, values)
        # this node's rows go out before its merged data, so a node that dies in the
        # all-gather has delivered its update (what die_at's phases mean,
        # docs/round-protocol.md#fault-injection); a receiver that stalls them holds this
        # node up no longer than half the attempt
        wait(self._pushes, timeout=max(0.0, self._at(CHECK_AT) - time.monotonic()))
        pushes = self._send_merged(pool, merged)
        needed = [s for s in range(self.owners.count) if s not in self.mine]
        # a node whose own rows came late (by relay, past CHECK_AT) still gives the owners a
        # while to send before it checks: their rows may reach it no sooner than its own did
        late = min(self._at(1.0), time.monotonic() + RELAY_GRACE * self.timeout)
        unconfirmed = self._confirm(needed, merged, max(self._at(CHECK_AT), late))
        silent = self._check(unconfirmed, merged)
        self._await_silent(silent, merged)
        self._settle([*self._pushes, *pushes])
        return merged

    # ------------------------------------------------------------------ all-gather parts

    def _send_merged(self, pool: _Sends, merged: Vector) -> list[Future[int]]:
        """The merged segment's data to all but its checker (who merged it too), the checked
        segment's digest to all but its merger."""
        if self.owners.count == 1:
            return []
        m, c = self.merging, self.checking
        if not self.owners.checked:  # one owner per segment: its data alone, no hashes
            return [self._push(pool, p, self._merged_frames(merged, m)) for p in self.others]
        leaves = self._segment_leaves(self._slice(merged, c))
        self._leaves[c] = leaves  # this node's own merge of the segment it checks
        frame = self._hashes_frame(c, merkle.root(leaves))
        hashes: FrameSource = partial(list, [frame])
        pushes = []
        for p in self.others:
            if p != self.owners.checker(m):
                pushes.append(self._push(pool, p, self._merged_frames(merged, m)))
            if p != self.owners.merger(c):
                pushes.append(self._push(pool, p, hashes))
        return pushes

    def _confirm(self, needed: list[int], merged: Vector, until: float) -> dict[int, _Unconfirmed]:
        """Waits until `until` for each segment's data and hashes; places the segments whose
        two owners agree, returns the others with whatever of theirs arrived."""
        round, attempt = self.attempt.round, self.attempt.attempt
        unconfirmed: dict[int, _Unconfirmed] = {}
        for s in needed:
            data = self._await(partial(self.inbox.merged, round, attempt, s), until)
            if not self.owners.checked:  # one owner: its data is the segment, no hashes come
                if data is not None:
                    self._place(merged, s, data)
                else:
                    unconfirmed[s] = _Unconfirmed(None, None)
                continue
            hashes = self._await(partial(self.inbox.merged_hashes, round, attempt, s), until)
            if data is not None and hashes is not None:
                leaves = self._segment_leaves(data)
                if merkle.root(leaves) == hashes:
                    self._place(merged, s, data, leaves)
                    continue
            unconfirmed[s] = _Unconfirmed(data, hashes)
        return unconfirmed

    def _check(self, unconfirmed: dict[int, _Unconfirmed], merged: Vector) -> dict[str, int]:
        """Merges each unconfirmed segment here from its rows and keeps that; accuses an owner
        whose output differs; returns the silent owners (owner -> segment) after relaying to
        them the rows they say they wait for."""
        silent: dict[str, int] = {}
        for s, seen in unconfirmed.items():
            self.checked += 1
            values = self.merge(s, self._rows_of(s))
            leaves = self._segment_leaves(values)
            truth = merkle.root(leaves)
            self._place(merged, s, values, leaves)
            merger, checker = self.owners.merger(s), self.owners.checker(s)
            got = None if seen.data is None else self._segment_digest(seen.data)
            if got is not None and got != truth:
                self.accused[merger] = f"sent segment {s} merged wrongly"
            if seen.hashes is not None and seen.hashes != truth:
                self.accused[checker] = f"sent wrong hashes for segment {s}"
            if seen.data is None:
                silent[merger] = s
            if seen.hashes is None and self.owners.checked:
                silent.setdefault(checker, s)
        for owner in silent:
            self._relay_to(owner)
        return silent

    def _await_silent(self, silent: dict[str, int], merged: Vector) -> None:
        """Gives the silent owners a while longer (RELAY_GRACE, within the attempt) to send
        what they owe this node, now that they have had the rows they waited for relayed;
        accuses each that still does not, or whose late output is wrong."""
        round, attempt = self.attempt.round, self.attempt.attempt
        until = min(self._at(1.0), time.monotonic() + RELAY_GRACE * self.timeout)
        for owner, s in silent.items():
            truth = self._segment_digest(self._slice(merged, s))
            if self.owners.merger(s) == owner:
                data = self._await(partial(self.inbox.merged, round, attempt, s), until)
                got = None if data is None else self._segment_digest(data)
            else:
                got = self._await(partial(self.inbox.merged_hashes, round, attempt, s), until)
            if got is None:
                self.accused.setdefault(owner, f"sent nothing for segment {s}, even after a relay")
            elif got != truth:
                self.accused[owner] = f"sent segment {s} merged wrongly"

    def _rows_of(self, segment: int) -> list[Vector]:
        """Every participant's row of `segment`, in participant order, each fetched from its
        contributor or else from the segment's owners, and checked against the contributor's
        commitment; MissingContributions naming the contributors nobody served."""
        rows: list[Vector] = []
        refused: list[str] = []
        for p in self.attempt.participants:
            if p == self.me:
                rows.append(self._slice(self.update, segment))
                continue
            sources = dict.fromkeys([p, *self.owners.owners(segment)])
            sources.pop(self.me, None)
            row = None
            for source in sources:
                try:
                    row = self._fetch_row(source, p, segment)
                    break
                except PeerError as exc:
                    log.info(
                        "%s: %s's row of segment %d from %s: %s", self.me, p, segment, source, exc
                    )
            if row is None:
                refused.append(p)
                self.accused[p] = f"refused its committed rows of segment {segment}"
            else:
                rows.append(row)
        if refused:
            raise MissingContributions(f"check of segment {segment}", refused)
        return rows

    def _relay_to(self, owner: str) -> None:
        """Asks a silent owner whom it waits for and sends it those rows, fetched from their
        contributors and checked against their commitments. Its answer only says where to
        look: a contributor that refuses this node too is accused, never on the owner's
        word alone (docs/round-protocol.md#relays)."""
        try:
            reply = self.transport.info(owner, INFO_TIMEOUT, round=self.attempt.round)
        except PeerError:
            return
        known = set(self.attempt.participants)
        for contributor in (p for p in reply.waiting_for if p in known and p != owner):
            for s in self.owners.owned_by(owner):
                try:
                    if contributor == self.me:
                        row, prove = self._slice(self.update, s), self._tree.proof
                    else:
                        row = self._fetch_row(contributor, contributor, s)
                        prove = partial(_proof_of, self._proofs[(contributor, s)])
                except PeerError:
                    self.accused[contributor] = f"withheld its rows of segment {s} from {owner}"
                    break
                with contextlib.suppress(PeerError):
                    frames = self._row_frames(row, s, contributor, prove)
                    self.transport.push(owner, frames, self._left())

    # ------------------------------------------------------------------ parts

    def _fetch_row(self, source: str, contributor: str, segment: int) -> Vector:
        """`contributor`'s row of `segment`, from `source`, checked against the
        contributor's commitment; once per attempt, whoever asks for it again. One fetch
        gets at most a quarter of the attempt, so a peer that stalls cannot use it all."""
        known = self._fetched.get((contributor, segment))
        if known is not None:
            return known
        chunks = self.owners.chunks[segment]
        commitment = self.attempt.commitments[contributor]
        timeout = min(self._left(), max(1.0, 0.25 * self.timeout))
        values, hashes, proof = self.transport.fetch_update(
            source,
            self.attempt.round,
            contributor,
            chunks,
            self.numel,
            commitment,
            timeout,
            dtype=self._dtype,
        )
        proved = merkle.Known(commitment, canonical.num_chunks(self.numel))
        proved.add(chunks, hashes, proof, check=False)  # fetch_update checked them
        self._fetched[(contributor, segment)] = values
        self._proofs[(contributor, segment)] = proved
        return values

    def _lacking(
        self, wanted: list[tuple[int, str]], rows: dict[int, dict[str, Vector]]
    ) -> list[tuple[int, str]]:
        return [(s, p) for s, p in wanted if p not in rows[s]]

    def _collect(
        self, wanted: list[tuple[int, str]], rows: dict[int, dict[str, Vector]], until: float
    ) -> None:
        for s, p in wanted:
            got = self._await(partial(self.inbox.update, self.attempt.round, p, s), until)
            if got is not None:
                rows[s][p] = got

    def _segment_digest(self, values: Vector) -> bytes:
        """What MERGED_HASHES carries for a merged segment: the Merkle root of its chunk
        hashes as a tree of their own (docs/canonical-vector.md#merged-hashes). A node
        computes it from the merger's data to compare it with the checker's."""
        return merkle.root(self._segment_leaves(values))

    def _segment_leaves(self, values: Vector) -> bytes:
        """The chunk hashes of a segment: the same bytes as that segment's part of the whole
        vector's hash list, since segments start on chunk boundaries."""
        return canonical.chunk_hashes(values, numel=self.numel)

    def _merged_hashes(self, merged: Vector) -> bytes:
        """The merged vector's chunk hashes, reusing those of every segment hashed while
        it was checked, so that no chunk is hashed twice in an attempt."""
        return b"".join(
            self._leaves.get(s) or self._segment_leaves(self._slice(merged, s))
            for s in range(self.owners.count)
        )

    def _slice(self, vector: Vector, segment: int) -> Vector:
        span = canonical.element_range(self.owners.chunks[segment], self.numel)
        return vector[span.start : span.stop]

    def _place(
        self, merged: Vector, segment: int, values: Vector, leaves: bytes | None = None
    ) -> None:
        """Puts a segment into the merged vector, with its chunk hashes when they are known."""
        span = canonical.element_range(self.owners.chunks[segment], self.numel)
        merged[span.start : span.stop] = values
        if leaves is None:
            self._leaves.pop(segment, None)
        else:
            self._leaves[segment] = leaves

    def _runs(self, owner: str) -> list[tuple[int, range]]:
        """What this node sends `owner`: its rows of the owner's segments, one run of chunks
        for segments that follow each other (an owner's checked segment s - 1 and merged
        segment s), each run named by its first segment: one stream, and per frame one
        proof for both (docs/round-protocol.md#data-plane). An empty segment is its own run
        (one empty frame: the owner learns it has everything)."""
        runs: list[tuple[int, range]] = []
        for s, chunks in sorted(self.owners.owned_by(owner).items(), key=lambda i: i[1].start):
            if runs and len(chunks) and len(runs[-1][1]) and runs[-1][1].stop == chunks.start:
                first, run = runs[-1]
                runs[-1] = (first, range(run.start, chunks.stop))
            else:
                runs.append((s, chunks))
        return runs

    def _frames(self, segment: int, chunks: range) -> FrameSource:
        """Chunks `chunks` of this node's update, from segment `segment` on (into the next
        segment the receiver owns, see _runs); every frame carries the Merkle proof of its
        own chunks, which the owner checks against this node's commitment
        (docs/canonical-vector.md#commitments). No sender: the owner knows the caller."""
        return partial(
            frames_for,
            self.update,
            chunks,
            kind=Kind.UPDATE,
            round=self.attempt.round,
            attempt=self.attempt.attempt,
            segment=segment,
            sender="",
            prove=self._tree.proof,
            frame_chunks=self.frame_chunks,
        )

    def _merged_frames(self, merged: Vector, segment: int) -> FrameSource:
        return partial(
            frames_for,
            merged,
            self.owners.chunks[segment],
            kind=Kind.MERGED,
            round=self.attempt.round,
            attempt=self.attempt.attempt,
            segment=segment,
            sender="",  # the caller: the receiver knows it from the certificate
            frame_chunks=self.frame_chunks,
        )

    def _hashes_frame(self, segment: int, digest: bytes) -> Frame:
        return merged_hashes_frame(
            round=self.attempt.round,
            attempt=self.attempt.attempt,
            segment=segment,
            sender="",
            chunk_hashes=digest,
            numel=self.numel,
        )

    def _row_frames(
        self, row: Vector, segment: int, contributor: str, prove: Callable[[range], bytes]
    ) -> FrameSource:
        return partial(
            frames_for_row,
            row,
            self.owners.chunks[segment],
            self.numel,
            kind=Kind.UPDATE,
            round=self.attempt.round,
            attempt=self.attempt.attempt,
            segment=segment,
            sender=contributor,
            prove=prove,
            frame_chunks=self.frame_chunks,
        )

    def _left(self) -> float:
        return max(0.5, self._at(1.0) - time.monotonic())

    def _push(self, pool: _Sends, peer: str, frames: FrameSource) -> Future[int]:
        """Sends in a worker thread; the future's result is the elements the peer accepted
        (the bytes are counted by the transport, see Traffic)."""
        future = pool.submit(lambda: self.transport.push(peer, frames, self._left()))
        future.add_done_callback(self._watch)
        return future

    def _watch(self, push: Future[int]) -> None:
        """Notes a send that failed for a reason of this node's own, for the waits to raise."""
        error = push.exception()
        if error is not None and not isinstance(error, PeerError) and self._failure is None:
            self._failure = error

    def _await(self, fetch: Callable[[float], T | None], deadline: float) -> T | None:
        """`fetch(seconds)` until it returns data or `deadline` passes, looking between tries
        whether one of this node's own sends failed for good: that ends the wait at once."""
        while True:
            left = deadline - time.monotonic()
            got = fetch(max(0.0, min(left, LOOK)))
            if got is not None:
                return got
            if self._failure is not None:
                raise self._failure
            if left <= LOOK:
                return None

    @staticmethod
    def _settle(pushes: Sequence[Future[int]]) -> None:
        """Waits for this node's own sends, so their bytes are in this attempt's Traffic; a
        peer that refused or vanished shows up as missing data on its side, so failures here
        are not fatal to this node's merge."""
        for push in pushes:
            with contextlib.suppress(PeerError):
                push.result()

    def _timed(self, phase: str, run: Callable[[], T]) -> T:
        started = time.perf_counter()
        result = run()
        self.seconds[phase] = time.perf_counter() - started
        return result


class _Sends:
    """One attempt's sends, at most `limit` under way at once (the rest wait their turn, in
    order), on worker threads that every all-reduce in the process shares and reuses: an
    attempt starts no threads of its own, which in a process of many nodes (the
    simulator's) cost each of them a thread start per worker per attempt
    (docs/architecture.md#transfer-speed). A worker whose send ends takes the attempt's
    next waiting one, so the attempt never holds more than `limit` workers."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._waiting: deque[tuple[Callable[[], int], Future[int]]] = deque()
        self._running = 0
        self.futures: list[Future[int]] = []  # every send submitted, for the attempt's end

    def submit(self, send: Callable[[], int]) -> Future[int]:
        future: Future[int] = Future()
        with self._lock:
            self.futures.append(future)
            if self._running >= self._limit:
                self._waiting.append((send, future))
                return future
            self._running += 1
        _workers().submit(self._work, send, future)
        return future

    def _work(self, send: Callable[[], int], future: Future[int]) -> None:
        while True:
            if future.set_running_or_notify_cancel():
                try:
                    result = send()
                except BaseException as exc:  # the future carries it to _watch and _settle
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            with self._lock:
                if not self._waiting:
                    self._running -= 1
                    return
                send, future = self._waiting.popleft()


_WORKERS_LIMIT = 256  # threads start only when no idle one is free: the peak of sends at once
_workers_lock = threading.Lock()
_workers_pool: ThreadPoolExecutor | None = None


def _workers() -> ThreadPoolExecutor:
    """The process's send workers, made on first use."""
    global _workers_pool
    with _workers_lock:
        if _workers_pool is None:
            _workers_pool = ThreadPoolExecutor(
                max_workers=_WORKERS_LIMIT, thread_name_prefix="send"
            )
        return _workers_pool


def _forget_workers() -> None:
    """In a forked child: the parent's pool has no threads there, and its lock may have been
    held by one of them; the child makes its own on first use."""
    global _workers_lock, _workers_pool
    _workers_lock = threading.Lock()
    _workers_pool = None


os.register_at_fork(after_in_child=_forget_workers)


def _proof_of(known: merkle.Known, chunks: range) -> bytes:
    """A proof of `chunks` from a fetched row's checked proof (chunks inside that row)."""
    proof = known.proof(chunks)
    if proof is None:
        raise PeerError(f"no proof of chunks {chunks.start}..{chunks.stop - 1} held")
    return proof
