"""swarmnode/secagg/wire.py: every body round-trips, and every truncation, extension, wrong
tag and wrong count is refused by name (MalformedBody) before any of it is used.

Hypothesis runs derandomized (a fixed sequence of examples), as
tests/test_secagg_primitives.py does, so a failure is the same on every run.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmnode.address import normalize
from swarmnode.exceptions import PeerError
from swarmnode.secagg import wire
from swarmnode.secagg.fixedpoint import FixedPoint
from swarmnode.secagg.masking import Announcement, DealtShares, Masker, RoundContext
from swarmnode.secagg.reveal import Reveal, Revealer, RevealRequest
from swarmnode.secagg.shamir import PRIME, Share
from swarmnode.secagg.wire import MalformedBody

DERANDOMIZED = settings(max_examples=40, deadline=None, derandomize=True)

accounts = st.binary(min_size=20, max_size=20).map(lambda raw: normalize("0x" + raw.hex()))
hashes = st.binary(min_size=32, max_size=32)
shares = st.builds(Share, st.integers(1, 0xFFFF), st.integers(0, PRIME - 1))


@st.composite
def announces(draw: st.DrawFn) -> tuple[bytes, Announcement, DealtShares]:
    dealer = draw(accounts)
    announcement = Announcement(dealer, draw(hashes), draw(hashes))
    return (
        draw(hashes),
        announcement,
        DealtShares(dealer, draw(accounts), draw(shares), draw(shares)),
    )


@st.composite
def requests(draw: st.DrawFn) -> RevealRequest:
    everyone = draw(st.lists(accounts, min_size=1, max_size=12, unique=True))
    cut = draw(st.integers(0, len(everyone)))
    start = draw(st.integers(0, 1 << 40))
    stop = start + draw(st.integers(0, 1 << 20))
    return RevealRequest(draw(st.integers(0, (1 << 64) - 1)), range(start, stop),
                         frozenset(everyone[:cut]), frozenset(everyone[cut:]))  # fmt: skip


@st.composite
def reveals(draw: st.DrawFn) -> Reveal:
    request = draw(requests())
    seeds = {account: draw(shares) for account in request.stayed}
    keys = {account: draw(shares) for account in request.dropped}
    return Reveal(draw(accounts), request, seeds, keys)


def refused_everywhere(body: bytes, decode: Callable[[bytes], object], what: str) -> None:
    """Every proper prefix, the body with a byte more, and the body under another tag are
    refused, each naming the layout; the whole body decodes."""
    decode(body)
    named = rf"^{what} body: "
    for size in range(len(body)):
        with pytest.raises(MalformedBody, match=named):
            decode(body[:size])
    extended = r".*(after the layout's end|layout takes|bytes for .* shares)"
    with pytest.raises(MalformedBody, match=named + extended):
        decode(body + b"\0")
    with pytest.raises(MalformedBody, match=named + "tag b'Z'"):
        decode(b"Z" + body[1:])


@DERANDOMIZED
@given(announces())
def test_announce_round_trips(case: tuple[bytes, Announcement, DealtShares]) -> None:
    body = wire.encode_announce(*case)
    assert len(body) == wire.ANNOUNCE_BYTES
    assert wire.decode_announce(body) == case


signed_roots = st.lists(
    st.tuples(accounts, hashes, st.binary(min_size=wire.SIGNATURE, max_size=wire.SIGNATURE)),
    max_size=4,
)


@DERANDOMIZED
@given(hashes, st.binary(max_size=wire.MAX_SIGNATURE), hashes, signed_roots)
def test_roots_and_digests_round_trip(
    root: bytes, signature: bytes, digest: bytes, signed: list[wire.SignedRoot]
) -> None:
    assert wire.decode_masked_root(wire.encode_masked_root(root, signature)) == (root, signature)
    assert wire.decode_rows_complete(wire.encode_rows_complete(digest, signed)) == (digest, signed)
    assert wire.decode_evidence(wire.encode_evidence(signed)) == signed


@DERANDOMIZED
@given(announces())
def test_fetched_announcements_round_trip(case: tuple[bytes, Announcement, DealtShares]) -> None:
    hiding, announcement, _ = case
    assert wire.decode_fetch(wire.encode_fetch(announcement.account)) == announcement.account
    opened = wire.encode_opened(hiding, announcement)
    assert wire.decode_opened(opened) == (hiding, announcement)


@DERANDOMIZED
@given(requests(), hashes, reveals())
def test_reveal_requests_and_answers_round_trip(
    request: RevealRequest, digest: bytes, reveal: Reveal
) -> None:
    body = wire.encode_reveal_request(request, digest)
    assert wire.decode_reveal_request(body) == (request, digest)
    assert wire.decode_reveal(wire.encode_reveal(reveal)) == reveal


def test_real_messages_round_trip_and_every_cut_or_extension_is_refused() -> None:
    """The library's own announcement, shares and reveal for a round of four."""
    people = [normalize(f"0x{i:040x}") for i in range(1, 5)]
    fixed = FixedPoint(peers=8, max_weight=4, bound=2.0, fraction_bits=12)
    context = RoundContext.of(b"swarm", 3, people, fixed)
    maskers = {p: Masker(context, p) for p in people}
    revealer = Revealer(context, people[0])
    for masker in maskers.values():
        revealer.receive(masker.deal()[0])
    announce = wire.encode_announce(b"\x07" * 32, maskers[people[1]].announcement,
                                    maskers[people[1]].deal()[0])  # fmt: skip
    request = RevealRequest.of(3, range(16, 48), people[:3], people[3:])
    answer = wire.encode_reveal(revealer.reveal(request))
    decoded = wire.decode_reveal(answer, participants=4)
    assert decoded.revealer == people[0] and set(decoded.seeds) == set(people[:3])
    assert set(decoded.keys) == {people[3]}

    for body, decode, what in [
        (announce, wire.decode_announce, "ANNOUNCE"),
        (wire.encode_masked_root(b"\1" * 32, b"sig"), wire.decode_masked_root, "MASKED_ROOT"),
        (
            wire.encode_rows_complete(b"\2" * 32, [(people[1], b"\5" * 32, b"\6" * 65)]),
            wire.decode_rows_complete,
            "ROWS_COMPLETE",
        ),
        (
            wire.encode_evidence([(people[2], b"\5" * 32, b"\6" * 65)]),
            wire.decode_evidence,
            "EVIDENCE",
        ),
        (wire.encode_fetch(people[3]), wire.decode_fetch, "FETCH_ANNOUNCEMENT"),
        (
            wire.encode_opened(b"\7" * 32, maskers[people[1]].announcement),
            wire.decode_opened,
            "OPENED",
        ),
        (
            wire.encode_reveal_request(request, b"\3" * 32),
            wire.decode_reveal_request,
            "REVEAL request",
        ),
        (answer, wire.decode_reveal, "REVEAL answer"),
    ]:
        refused_everywhere(body, decode, what)
    assert issubclass(MalformedBody, PeerError)  # a handler letting it through: INVALID_ARGUMENT


def test_wrong_counts_and_bad_fields_are_refused_by_name() -> None:
    people = sorted(normalize(f"0x{i:040x}") for i in range(1, 6))
    request = RevealRequest.of(9, range(0, 64), people[:3], people[3:])
    body = wire.encode_reveal_request(request, b"\4" * 32)
    head = 1 + 8 * 3
    with pytest.raises(MalformedBody, match="more than the round's 4"):
        wire.decode_reveal_request(body, participants=4)
    more = body[:head] + struct.pack(">H", 4) + body[head + 2 :]
    with pytest.raises(MalformedBody, match=r"REVEAL request body: .* end inside the digest"):
        wire.decode_reveal_request(more)
    huge = body[:head] + struct.pack(">HH", 0x7FFF, 0x7FFF) + body[head + 4 :]
    with pytest.raises(MalformedBody, match="cannot hold 65534 accounts"):
        wire.decode_reveal_request(huge)  # refused before reading (or allocating) a list
    twice = body[: head + 4] + body[head + 4 : head + 24] * 2 + body[head + 44 :]
    with pytest.raises(MalformedBody, match="stayed accounts are not ascending without repeats"):
        wire.decode_reveal_request(twice)
    backwards = body[:9] + struct.pack(">QQ", 64, 0) + body[25:]
    with pytest.raises(MalformedBody, match=r"elements \[64, 0\) run backwards"):
        wire.decode_reveal_request(backwards)

    seeds = {p: Share(i + 1, 5) for i, p in enumerate(people[:3])}
    keys = {people[3]: Share(1, 6), people[4]: Share(1, 7)}
    answer = wire.encode_reveal(Reveal(people[0], request, seeds, keys))
    counts = 1 + 20 + 8 * 3 + 4 + 20 * 5
    fewer = answer[:counts] + struct.pack(">HH", 2, 2) + answer[counts + 4 :]
    with pytest.raises(MalformedBody, match="2 seed and 2 key shares for a request of 3"):
        wire.decode_reveal(fewer)
    share_at = counts + 4 + 20  # the first seed share's seat
    seat_zero = answer[:share_at] + b"\0\0" + answer[share_at + 2 :]
    with pytest.raises(MalformedBody, match="at seat 0"):
        wire.decode_reveal(seat_zero)
    big = answer[: share_at + 2] + b"\xff" * 66 + answer[share_at + 68 :]
    with pytest.raises(MalformedBody, match="not below the field's prime"):
        wire.decode_reveal(big)
    with pytest.raises(MalformedBody, match="shares for other accounts"):
        wire.encode_reveal(Reveal(people[0], request, keys, seeds))

    with pytest.raises(MalformedBody, match="signature of 129 bytes"):
        wire.encode_masked_root(b"\0" * 32, b"s" * 129)
    long_signature = b"M" + b"\0" * 32 + bytes((129,)) + b"s" * 129
    with pytest.raises(MalformedBody, match="signature of 129 bytes, at most 128"):
        wire.decode_masked_root(long_signature)
    with pytest.raises(MalformedBody, match="ROWS_COMPLETE digest of 31 bytes"):
        wire.encode_rows_complete(b"\0" * 31)
    with pytest.raises(MalformedBody, match="ROWS_COMPLETE signature of 64 bytes"):
        wire.encode_rows_complete(b"\0" * 32, [(people[0], b"\0" * 32, b"\0" * 64)])
    three = wire.encode_rows_complete(b"\0" * 32, [(p, b"\0" * 32, b"\0" * 65) for p in people[:3]])
    with pytest.raises(MalformedBody, match="3 signed roots, more than the round's 2"):
        wire.decode_rows_complete(three, participants=2)
    huge = three[:33] + struct.pack(">H", 0xFFFF) + three[35:]
    with pytest.raises(MalformedBody, match="the layout takes 7667595 for 65535 signed roots"):
        wire.decode_rows_complete(huge)  # refused before reading (or allocating) a list
    announcement = Announcement(people[0], b"\0" * 32, b"\0" * 32)
    stranger = DealtShares(people[1], people[2], Share(1, 1), Share(1, 1))
    with pytest.raises(MalformedBody, match="shares dealt by"):
        wire.encode_announce(b"\0" * 32, announcement, stranger)
    honest = wire.encode_announce(
        b"\0" * 32, announcement, DealtShares(people[0], people[2], Share(1, 1), Share(1, 1))
    )
    dealer_at = 1 + 32 + 20 + 32 + 32
    forged = honest[:dealer_at] + bytes.fromhex(people[1][2:]) + honest[dealer_at + 20 :]
    with pytest.raises(MalformedBody, match=r"shares dealt by .* announced by"):
        wire.decode_announce(forged)
