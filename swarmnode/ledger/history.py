"""A node's rounds as the chain records them: what `swarmnode status --node` shows.

The round's own state (status, attempt, final digest) is in contract storage, but which
rounds a node joined and what it reported live only in the contract's events: a node that
left a round has no seat in it any more, and a seat keeps the attempt it reported in, not the
digest. So both are read, through the Ledger interface, and any backend answers.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarmnode.ledger.base import Ledger
from swarmnode.ledger.events import SupportsBlockIds
from swarmnode.ledger.types import LedgerEvent, RoundState, RoundStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Participation:
    """One round a node joined, and what became of it and of the node's part in it."""

    round: int
    status: str  # the round's: open | closed | final | failed
    fail_reason: str  # none | expired | too_few_live | reports_disagree
    attempt: int  # the round's current attempt; the deciding one once it ended
    part: str  # the node's last step: joined | reported | left | dropped | withdrawn
    report: bytes | None  # the digest of the node's latest report in the round
    report_attempt: int  # the attempt that report was for (0: none)
    final_digest: bytes | None
    agreed: bool | None  # final rounds: its report in the deciding attempt matched (None: none)

    def to_dict(self) -> dict[str, object]:
        return {
            "round": self.round,
            "status": self.status,
            "fail_reason": self.fail_reason,
            "attempt": self.attempt,
            "part": self.part,
            "report": None if self.report is None else "0x" + self.report.hex(),
            "report_attempt": self.report_attempt,
            "final_digest": None if self.final_digest is None else "0x" + self.final_digest.hex(),
            "agreed": self.agreed,
        }


# the events that say what a node did in a round, and the part each leaves it in
_PARTS = {
    "Joined": "joined",
    "Reported": "reported",
    "Left": "left",
    "Dropped": "dropped",
    "Withdrawn": "withdrawn",
}


@dataclass
class _Seen:
    part: str = "joined"
    report: bytes | None = None
    report_attempt: int = 0


def node_rounds(
    ledger: Ledger,
    account: str,
    *,
    limit: int | None = None,
    window: EventWindow | None = None,
) -> list[Participation]:
    """The rounds `account` (checksummed, as ledgers give accounts and event arguments,
    docs/architecture.md#addresses) joined, newest first (at most `limit` of them).

    Without `window`, every event since the deployment is read. With one, only the newest
    blocks are (and only those mined since the last call, where the window is cached): it
    reaches further back only until it holds `limit` rounds the account joined. A node joins
    rounds in order, so once the window holds the Joined events of `limit` rounds, those are
    its newest, and every later event of theirs is in the window too."""
    if window is None:
        events, _ = ledger.events(ledger.start_cursor())
        seen = _parts(events, account)
    else:
        window.refresh()
        seen = _parts(window.events, account)
        while not window.complete and (limit is None or len(seen) < limit):
            window.extend()
            seen = _parts(window.events, account)
        window.save()
    numbers = sorted(seen, reverse=True)[:limit]
    return [_participation(ledger.round(number), seen[number]) for number in numbers]


def _parts(events: list[LedgerEvent], account: str) -> dict[int, _Seen]:
    """What `account` last did in each round it joined, from the events in chain order."""
    seen: dict[int, _Seen] = {}
    for event in events:
        if event.name not in _PARTS:
            continue
        if event.args.get("node", event.args.get("peer")) != account:
            continue
        number = int(event.args["round"])
        if event.name == "Joined":
            seen[number] = _Seen()  # a rejoin after leaving starts over
        elif number not in seen:
            continue
        elif event.name == "Reported":
            entry = seen[number]
            entry.part = "reported"
            entry.report = bytes(event.args["digest"])
            entry.report_attempt = int(event.args["attempt"])
        else:
            seen[number].part = _PARTS[event.name]
    return seen


def _participation(state: RoundState, entry: _Seen) -> Participation:
    agreed = None  # sent no report in the deciding attempt (the quorum came first, ...)
    if state.status == RoundStatus.FINAL and entry.report_attempt == state.attempt:
        agreed = entry.report == state.final_digest
    return Participation(
        round=state.number,
        status=state.status.name.lower(),
        fail_reason=state.fail_reason.name.lower(),
        attempt=state.attempt,
        part=entry.part,
        report=entry.report,
        report_attempt=entry.report_attempt,
        final_digest=state.final_digest,
        agreed=agreed,
    )


# ---------------------------------------------------------------------- a cached block window

CACHE_VERSION = 1
DEFAULT_WINDOW = 256  # blocks read on a first look; doubled backwards while not enough


def cache_dir() -> Path:
    """Where `status` keeps what it read: SWARMNODE_CACHE_DIR, else the XDG cache folder."""
    explicit = os.environ.get("SWARMNODE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "swarmnode"


def cache_path(chain_id: int, address: str) -> Path:
    """One file per swarm: the chain id and the contract's address name it."""
    return cache_dir() / f"events-{chain_id}-{address.lower()}.json"


class EventWindow:
    """A swarm's events over the blocks from `first` to the newest one read, kept in a file
    between runs so that the next run reads only the blocks mined since.

    What was read is trusted only while the chain still has the newest block read, with
    the same hash: a restarted dev chain (which may even put a new contract at the same
    address) or a reorganization changes it, and the window then starts over
    (docs/chain.md#events-and-the-roster-feed). A first read covers the newest `size`
    blocks; `extend` reaches back, doubling, to the deployment.
    """

    def __init__(self, ledger: Ledger, path: Path | None, *, size: int = DEFAULT_WINDOW) -> None:
        if not isinstance(ledger, SupportsBlockIds):
            raise TypeError("a block window needs a ledger that names its blocks")
        self._ledger = ledger
        self._blocks: SupportsBlockIds = ledger
        self._path = path
        self._size = size
        self._deployed = ledger.start_cursor()
        self.events: list[LedgerEvent] = []
        self.first: int | None = None  # the oldest block read
        self._tip: tuple[int, bytes] | None = None  # the newest block read
        self.blocks_read = 0  # how many blocks this run asked the chain for
        self.restarted = False  # the cache did not match the chain any more
        self._load()

    @property
    def complete(self) -> bool:
        """Whether the window reaches back to the deployment."""
        return self.first is not None and self.first <= self._deployed

    def refresh(self) -> None:
        """Reads the blocks mined since the newest one read (the newest `size` blocks the
        first time, or when the chain is not the one the cache was read from)."""
        head = self._blocks.block_id()
        if head is None:
            raise ValueError("the chain named no head block")
        if self._tip is not None and not self._still_there(self._tip):
            log.info("the chain changed since block %d was read: reading it again", self._tip[0])
            self.restarted = True
            self._forget()
        if self._tip is None:
            start = max(self._deployed, head[0] - self._size + 1)
            self.events = self._read(start, head[0])
            self.first = start
        elif head[0] > self._tip[0]:
            self.events.extend(self._read(self._tip[0] + 1, head[0]))
        self._tip = head if self._tip is None or head[0] >= self._tip[0] else self._tip

    def extend(self) -> None:
        """Reaches back as far again as the window already goes, at most to the deployment."""
        assert self.first is not None and self._tip is not None, "refresh first"
        span = max(self._size, self._tip[0] - self.first + 1)
        start = max(self._deployed, self.first - span)
        self.events = self._read(start, self.first - 1) + self.events
        self.first = start

    def _read(self, start: int, end: int) -> list[LedgerEvent]:
        """Events of blocks start..end. get_logs reads on to the head; later ones are
        dropped, to be read with the blocks they belong to."""
        if end < start:
            return []
        self.blocks_read += end - start + 1
        found, _ = self._ledger.events(start)
        return [e for e in found if e.position[0] <= end]

    def _still_there(self, tip: tuple[int, bytes]) -> bool:
        now = self._blocks.block_id(tip[0])
        return now is not None and now[1] == tip[1]

    def _forget(self) -> None:
        self.events, self.first, self._tip = [], None, None

    # ------------------------------------------------------------------ the file

    def _load(self) -> None:
        if self._path is None:
            return
        try:
            saved = json.loads(self._path.read_text())
            if saved.get("version") != CACHE_VERSION or saved["deployed"] != self._deployed:
                return
            events = [_event_from_json(e) for e in saved["events"]]
            first, tip = int(saved["first"]), (int(saved["tip"][0]), bytes.fromhex(saved["tip"][1]))
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            log.info("ignoring the event cache %s: %s", self._path, exc)
            return
        self.events, self.first, self._tip = events, first, tip

    def save(self) -> None:
        """Writes the window for the next run; a cache that cannot be written is skipped."""
        if self._path is None or self._tip is None or self.first is None:
            return
        saved = {
            "version": CACHE_VERSION,
            "deployed": self._deployed,
            "first": self.first,
            "tip": [self._tip[0], self._tip[1].hex()],
            "events": [_event_to_json(e) for e in self.events],
        }
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            partial = self._path.with_suffix(".partial")
            partial.write_text(json.dumps(saved))
            partial.replace(self._path)  # a reader never sees half a file
        except OSError as exc:
            log.info("could not write the event cache %s: %s", self._path, exc)


def _to_json(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"bytes": bytes(value).hex()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        return bytes.fromhex(value["bytes"])
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _event_to_json(event: LedgerEvent) -> dict[str, Any]:
    return {
        "name": event.name,
        "position": list(event.position),
        "args": {k: _to_json(v) for k, v in event.args.items()},
    }


def _event_from_json(saved: dict[str, Any]) -> LedgerEvent:
    block, index = saved["position"]
    args = {k: _from_json(v) for k, v in saved["args"].items()}
    return LedgerEvent(str(saved["name"]), (int(block), int(index)), args)
