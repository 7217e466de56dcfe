"""The byte layouts of secure aggregation's messages (the bodies p2p's SecAgg call carries
without reading them; docs/round-protocol.md#secure-aggregation-messages).

Fixed binary layouts, big-endian integers, no pickle and no JSON: a body is read with
exact lengths and nothing is taken on trust, so a peer can make a decoder refuse but never
allocate, loop or parse beyond the body it sent. Every body starts with one tag byte naming
its layout, so a body sent as the wrong kind is refused by name. Accounts travel as their
20 bytes and come out normalized (EIP-55, as everywhere in the node); a Shamir share is its
seat x (2 bytes, 1..65535) and its value y (66 bytes, below the field's prime).

    account  = 20 bytes
    share    = x: u16 | y: 66 bytes
    request  = round: u64 | start: u64 | stop: u64 | stayed: u16 | dropped: u16
               | stayed accounts | dropped accounts   (each list ascending, no repeats)

    ANNOUNCE        "A" | hiding: 32 | account | public key: 32 | seed commitment: 32
                    | dealer | holder | seed share | key share          (293 bytes)
    MASKED_ROOT     "M" | root: 32 | length: u8 (<= 128) | signature
    ROWS_COMPLETE   "C" | digest: 32 | count: u16 | signed root per count
    signed root     = account | root: 32 | signature: 65
    EVIDENCE        "E" | count: u16 | signed root per count   (ROWS_COMPLETE's reply)
    FETCH           "F" | account                    (whose announcement is asked for)
    OPENED          "O" | hiding: 32 | account | public key: 32 | seed commitment: 32
    REVEAL request  "R" | request | digest: 32
    REVEAL answer   "V" | revealer | request | seed shares: u16 | key shares: u16
                    | (account | share) per seed share, then per key share (ascending)

`hiding` opens the sender's salted join commitment; the shares in ANNOUNCE are those the
sender dealt the recipient. A reveal answer's seed shares are exactly for its request's
stayed inputs and its key shares for the dropped ones, so an answer for another request
does not even decode. `participants` (where a decoder takes it) bounds the accounts a
request may list: the round's participant count; nothing else sizes what is read.

What a decoder refuses is a MalformedBody (a PeerError: a handler that lets it through
answers the caller INVALID_ARGUMENT), naming the body and what was wrong.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterable, Mapping, Sequence

from swarmnode.address import is_address, normalize
from swarmnode.exceptions import PeerError
from swarmnode.secagg.errors import SecAggError
from swarmnode.secagg.masking import Announcement, DealtShares
from swarmnode.secagg.reveal import Reveal, RevealRequest
from swarmnode.secagg.shamir import PRIME, SHARE_BYTES, Share

HASH = 32  # a hiding opening, a commitment, a root, a digest
KEY = 32  # an X25519 public key
ACCOUNT = 20
SHARE = 2 + SHARE_BYTES
MAX_SIGNATURE = 128
MAX_PARTICIPANTS = 0xFFFF  # what a u16 count holds; `participants` bounds it further

ANNOUNCE, MASKED_ROOT, ROWS_COMPLETE, REVEAL_REQUEST, REVEAL = b"A", b"M", b"C", b"R", b"V"
EVIDENCE, FETCH, OPENED = b"E", b"F", b"O"
SIGNATURE = 65  # a signed root's signature: r || s || v (swarmnode/secagg/signing.py)
SIGNED_ROOT = ACCOUNT + HASH + SIGNATURE
_COUNT = struct.Struct(">H")
ANNOUNCE_BYTES = 1 + HASH + ACCOUNT + KEY + HASH + 2 * ACCOUNT + 2 * SHARE
_REQUEST_HEAD = struct.Struct(">QQQHH")


class MalformedBody(SecAggError, PeerError):
    """A secure-aggregation body that does not follow its layout: refused before any of
    it is used."""


class _Reader:
    """Reads one body front to back; every read names the body when it falls short."""

    def __init__(self, body: bytes, what: str, tag: bytes) -> None:
        self.data, self.what, self.at = memoryview(bytes(body)), what, 0
        if self.take(1, "its tag") != tag:
            raise self.refused(f"tag {bytes(self.data[:1])!r}, this layout's is {tag!r}")

    def take(self, size: int, field: str) -> bytes:
        if self.at + size > len(self.data):
            raise self.refused(
                f"{len(self.data)} bytes end inside {field} (byte {self.at}, {size} wanted)"
            )
        out = bytes(self.data[self.at : self.at + size])
        self.at += size
        return out

    def unpack(self, layout: struct.Struct, field: str) -> tuple[int, ...]:
        return layout.unpack(self.take(layout.size, field))

    def account(self, field: str) -> str:
        return "0x" + self.take(ACCOUNT, field).hex()  # 40 hex digits: always an address

    def share(self, field: str) -> Share:
        x = int.from_bytes(self.take(2, f"{field}'s seat"), "big")
        y = int.from_bytes(self.take(SHARE_BYTES, f"{field}'s value"), "big")
        if x == 0:
            raise self.refused(f"{field} is at seat 0 (seats start at 1)")
        if y >= PRIME:
            raise self.refused(f"{field}'s value is not below the field's prime 2^521 - 1")
        return Share(x, y)

    def end(self) -> None:
        if self.at != len(self.data):
            raise self.refused(f"{len(self.data) - self.at} bytes after the layout's end")

    def refused(self, reason: str) -> MalformedBody:
        return MalformedBody(f"{self.what} body: {reason}")


def _account(account: str, what: str) -> bytes:
    if not is_address(account):
        raise MalformedBody(f"{what}: not an account address: {account[:50]!r}")
    return bytes.fromhex(account[2:])


def _share(share: Share, what: str) -> bytes:
    if not (0 < share.x <= 0xFFFF and 0 <= share.y < PRIME):
        raise MalformedBody(f"{what}: a share at seat {share.x} does not fit the layout")
    return share.x.to_bytes(2, "big") + share.y.to_bytes(SHARE_BYTES, "big")


def _fixed(value: bytes, size: int, what: str) -> bytes:
    if len(value) != size:
        raise MalformedBody(f"{what} of {len(value)} bytes, the layout takes {size}")
    return bytes(value)


# ------------------------------------------------------------------ ANNOUNCE


def encode_announce(hiding: bytes, announcement: Announcement, dealt: DealtShares) -> bytes:
    """The opening of the sender's join commitment, its announcement, and the shares it
    dealt this recipient."""
    what = "ANNOUNCE"
    if normalize(dealt.dealer) != normalize(announcement.account):
        raise MalformedBody(f"{what}: shares dealt by {dealt.dealer}, announced by another")
    return b"".join(
        (
            ANNOUNCE,
            _fixed(hiding, HASH, f"{what} opening"),
            _account(announcement.account, what),
            _fixed(announcement.public_key, KEY, f"{what} public key"),
            _fixed(announcement.seed_commitment, HASH, f"{what} seed commitment"),
            _account(dealt.dealer, what),
            _account(dealt.holder, what),
            _share(dealt.seed, f"{what} seed share"),
            _share(dealt.key, f"{what} key share"),
        )
    )


def decode_announce(body: bytes) -> tuple[bytes, Announcement, DealtShares]:
    """(opening, announcement, dealt shares); MalformedBody if `body` is not exactly one
    ANNOUNCE layout, or names a dealer other than the announcer."""
    read = _Reader(body, "ANNOUNCE", ANNOUNCE)
    if len(read.data) != ANNOUNCE_BYTES:
        raise read.refused(f"{len(read.data)} bytes, the layout takes {ANNOUNCE_BYTES}")
    hiding = read.take(HASH, "the opening")
    account = read.account("the account")
    announcement = Announcement(
        normalize(account), read.take(KEY, "the public key"), read.take(HASH, "the commitment")
    )
    dealer, holder = read.account("the dealer"), read.account("the holder")
    seed, key = read.share("the seed share"), read.share("the key share")
    read.end()
    if dealer != account:
        raise read.refused(
            f"shares dealt by {normalize(dealer)}, announced by {normalize(account)}"
        )
    return hiding, announcement, DealtShares(normalize(dealer), normalize(holder), seed, key)


# ------------------------------------------------------------------ MASKED_ROOT, ROWS_COMPLETE


def encode_masked_root(root: bytes, signature: bytes) -> bytes:
    """The Merkle root of the sender's masked chunk hashes and its signature over it
    (opaque here, at most MAX_SIGNATURE bytes)."""
    if len(signature) > MAX_SIGNATURE:
        raise MalformedBody(f"MASKED_ROOT: a signature of {len(signature)} bytes, at most 128")
    return (
        MASKED_ROOT
        + _fixed(root, HASH, "MASKED_ROOT root")
        + bytes((len(signature),))
        + (bytes(signature))
    )


def decode_masked_root(body: bytes) -> tuple[bytes, bytes]:
    """(root, signature)."""
    read = _Reader(body, "MASKED_ROOT", MASKED_ROOT)
    root = read.take(HASH, "the root")
    (size,) = read.take(1, "the signature's length")
    if size > MAX_SIGNATURE:
        raise read.refused(f"a signature of {size} bytes, at most {MAX_SIGNATURE}")
    signature = read.take(size, "the signature")
    read.end()
    return root, signature


SignedRoot = tuple[str, bytes, bytes]
"""(account, masked root, the account's signature over it)."""


def _signed_roots(signed: Sequence[SignedRoot], what: str) -> bytes:
    if len(signed) > MAX_PARTICIPANTS:
        raise MalformedBody(f"{what}: {len(signed)} signed roots do not fit a u16 count")
    return _COUNT.pack(len(signed)) + b"".join(
        _account(account, what)
        + _fixed(root, HASH, f"{what} root")
        + _fixed(signature, SIGNATURE, f"{what} signature")
        for account, root, signature in signed
    )


def _read_signed_roots(read: _Reader, participants: int | None) -> list[SignedRoot]:
    (count,) = read.unpack(_COUNT, "the count of signed roots")
    limit = MAX_PARTICIPANTS if participants is None else participants
    if count > limit:
        raise read.refused(f"{count} signed roots, more than the round's {limit} participants")
    if len(read.data) - read.at != count * SIGNED_ROOT:
        left, need = len(read.data) - read.at, count * SIGNED_ROOT
        raise read.refused(f"{left} bytes left, the layout takes {need} for {count} signed roots")
    return [
        (
            normalize(read.account("a signed root's account")),
            read.take(HASH, "a root"),
            read.take(SIGNATURE, "a signature"),
        )
        for _ in range(count)
    ]


def encode_rows_complete(digest: bytes, signed: Sequence[SignedRoot] = ()) -> bytes:
    """The digest of the masked roots an owner checked its rows against; `signed`: the
    owner's signed copies of roots a receiver holds otherwise (proof their signer signed
    two), sent after that receiver's EVIDENCE reply."""
    what = "ROWS_COMPLETE"
    return ROWS_COMPLETE + _fixed(digest, HASH, f"{what} digest") + _signed_roots(signed, what)


def decode_rows_complete(
    body: bytes, *, participants: int | None = None
) -> tuple[bytes, list[SignedRoot]]:
    """(digest, signed roots); `participants`: the most signed roots it may carry."""
    read = _Reader(body, "ROWS_COMPLETE", ROWS_COMPLETE)
    digest = read.take(HASH, "the digest")
    signed = _read_signed_roots(read, participants)
    read.end()
    return digest, signed


def encode_evidence(signed: Sequence[SignedRoot]) -> bytes:
    """ROWS_COMPLETE's reply when the receiver's digest differs: the signed roots behind its
    own (each that differs, with the owner's copy, proves its signer signed two)."""
    return EVIDENCE + _signed_roots(signed, "EVIDENCE")


def decode_evidence(body: bytes, *, participants: int | None = None) -> list[SignedRoot]:
    read = _Reader(body, "EVIDENCE", EVIDENCE)
    signed = _read_signed_roots(read, participants)
    read.end()
    return signed


# ------------------------------------------------------------------ FETCH_ANNOUNCEMENT


def encode_fetch(account: str) -> bytes:
    """Asks a peer for `account`'s announcement and hiding hash (the opening of its join
    commitment, without the shares only their holder gets)."""
    return FETCH + _account(account, "FETCH_ANNOUNCEMENT")


def decode_fetch(body: bytes) -> str:
    read = _Reader(body, "FETCH_ANNOUNCEMENT", FETCH)
    account = read.account("the account")
    read.end()
    return normalize(account)


def encode_opened(hiding: bytes, announcement: Announcement) -> bytes:
    """FETCH_ANNOUNCEMENT's answer; the asker checks it against the join commitment."""
    what = "OPENED"
    return b"".join(
        (
            OPENED,
            _fixed(hiding, HASH, f"{what} opening"),
            _account(announcement.account, what),
            _fixed(announcement.public_key, KEY, f"{what} public key"),
            _fixed(announcement.seed_commitment, HASH, f"{what} seed commitment"),
        )
    )


def decode_opened(body: bytes) -> tuple[bytes, Announcement]:
    read = _Reader(body, "OPENED", OPENED)
    hiding = read.take(HASH, "the opening")
    account = normalize(read.account("the account"))
    announcement = Announcement(
        account, read.take(KEY, "the public key"), read.take(HASH, "the commitment")
    )
    read.end()
    return hiding, announcement


# ------------------------------------------------------------------ REVEAL


def _accounts(accounts: Iterable[str], what: str) -> list[bytes]:
    return sorted(_account(normalize(a) if is_address(a) else a, what) for a in accounts)


def _request(request: RevealRequest, what: str) -> bytes:
    elements = request.elements
    if elements.step != 1 or not 0 <= elements.start <= elements.stop < 1 << 64:
        raise MalformedBody(f"{what}: elements {elements} are not a forward range")
    stayed, dropped = _accounts(request.stayed, what), _accounts(request.dropped, what)
    if len(stayed) + len(dropped) > MAX_PARTICIPANTS or not 0 <= request.round < 1 << 64:
        raise MalformedBody(f"{what}: round {request.round} or its accounts do not fit")
    head = _REQUEST_HEAD.pack(
        request.round, elements.start, elements.stop, len(stayed), len(dropped)
    )
    return head + b"".join(stayed) + b"".join(dropped)


def _read_request(read: _Reader, participants: int | None) -> RevealRequest:
    round_, start, stop, stayed, dropped = read.unpack(_REQUEST_HEAD, "the request's head")
    limit = MAX_PARTICIPANTS if participants is None else participants
    if stayed + dropped > limit:
        raise read.refused(
            f"{stayed} stayed and {dropped} dropped accounts, more than the round's {limit}"
        )
    if start > stop:
        raise read.refused(f"elements [{start}, {stop}) run backwards")
    need = (stayed + dropped) * ACCOUNT
    if read.at + need > len(read.data):
        raise read.refused(f"{len(read.data)} bytes cannot hold {stayed + dropped} accounts")
    lists = []
    for count, name in ((stayed, "stayed"), (dropped, "dropped")):
        raw = [read.take(ACCOUNT, f"a {name} account") for _ in range(count)]
        if any(a >= b for a, b in itertools.pairwise(raw)):
            raise read.refused(f"the {name} accounts are not ascending without repeats")
        lists.append(frozenset(normalize("0x" + a.hex()) for a in raw))
    if lists[0] & lists[1]:
        raise read.refused("an account is both stayed and dropped")
    return RevealRequest(round_, range(start, stop), lists[0], lists[1])


def encode_reveal_request(request: RevealRequest, digest: bytes) -> bytes:
    """An owner's request, with the digest of the masked roots its rows were checked
    against (the one its ROWS_COMPLETE carried)."""
    return REVEAL_REQUEST + _request(request, "REVEAL request") + _fixed(digest, HASH, "digest")


def decode_reveal_request(
    body: bytes, *, participants: int | None = None
) -> tuple[RevealRequest, bytes]:
    """(request, digest); `participants`: the most accounts the request may list."""
    read = _Reader(body, "REVEAL request", REVEAL_REQUEST)
    request = _read_request(read, participants)
    digest = read.take(HASH, "the digest")
    read.end()
    return request, digest


def encode_reveal(reveal: Reveal) -> bytes:
    """A revealer's answer: its shares of the stayed inputs' seeds and the dropped ones'
    keys, for exactly the request it answers."""
    what = "REVEAL answer"
    request = reveal.request
    if set(map(normalize, reveal.seeds)) != set(request.stayed) or set(
        map(normalize, reveal.keys)
    ) != set(request.dropped):
        raise MalformedBody(f"{what}: shares for other accounts than its request names")
    parts = [
        REVEAL,
        _account(reveal.revealer, what),
        _request(request, what),
        struct.pack(">HH", len(reveal.seeds), len(reveal.keys)),
    ]
    for shares, name in ((reveal.seeds, "seed"), (reveal.keys, "key")):
        for account, share in _sorted_shares(shares):
            parts += [_account(account, what), _share(share, f"{what} {name} share")]
    return b"".join(parts)


def _sorted_shares(shares: Mapping[str, Share]) -> list[tuple[str, Share]]:
    return sorted(((normalize(a), s) for a, s in shares.items()), key=lambda p: p[0].lower())


def decode_reveal(body: bytes, *, participants: int | None = None) -> Reveal:
    """The answer; its seed shares must be for exactly the request's stayed inputs and its
    key shares for exactly the dropped ones, each once, in ascending account order."""
    read = _Reader(body, "REVEAL answer", REVEAL)
    revealer = normalize(read.account("the revealer"))
    request = _read_request(read, participants)
    seeds_count, keys_count = read.unpack(struct.Struct(">HH"), "the share counts")
    if seeds_count != len(request.stayed) or keys_count != len(request.dropped):
        raise read.refused(
            f"{seeds_count} seed and {keys_count} key shares for a request of "
            f"{len(request.stayed)} stayed and {len(request.dropped)} dropped"
        )
    if read.at + (seeds_count + keys_count) * (ACCOUNT + SHARE) != len(read.data):
        raise read.refused(
            f"{len(read.data) - read.at} bytes for {seeds_count + keys_count} shares of "
            f"{ACCOUNT + SHARE} bytes each"
        )
    found: list[dict[str, Share]] = []
    for count, wanted, name in (
        (seeds_count, request.stayed, "seed"),
        (keys_count, request.dropped, "key"),
    ):
        raw = [(read.take(ACCOUNT, f"a {name} share's account"), read.share(f"a {name} share"))
               for _ in range(count)]  # fmt: skip
        if any(a[0] >= b[0] for a, b in itertools.pairwise(raw)):
            raise read.refused(f"the {name} shares are not in ascending account order")
        shares = {normalize("0x" + account.hex()): share for account, share in raw}
        if set(shares) != wanted:
            raise read.refused(f"{name} shares for other accounts than the request's")
        found.append(shares)
    read.end()
    return Reveal(revealer, request, found[0], found[1])
