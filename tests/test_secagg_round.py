"""A round of secure aggregation among 8 nodes in one process (swarmnode/secagg/driver.py,
docs/secure-aggregation.md): a node dropped in the middle of the reduce-scatter still
leaves the plain weighted mean of the others within the fixed-point bound, decoded
bit-identically from any t reveals; the revealers refuse every request that would let two
sums differ by one node's update; a sum with a mask left out, or a lying share, is refused."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest

from swarmnode.secagg import shamir
from swarmnode.secagg.driver import LocalRound
from swarmnode.secagg.errors import RevealRefused, ShareError, SumRefused
from swarmnode.secagg.fixedpoint import FixedPoint
from swarmnode.secagg.masking import RoundContext
from swarmnode.secagg.reveal import Reveal, Revealer, RevealRequest
from swarmnode.secagg.unmask import Unmasked, sum_rows, unmask

N = 8
SIZE = 1000
ACCOUNTS = [f"0x{(i + 1) * 0x1111:040x}" for i in range(N)]
FIXED = FixedPoint(peers=32, max_weight=1000, bound=8.0, fraction_bits=24)


def _segments(n: int) -> list[range]:
    """n contiguous element ranges, as the all-reduce cuts a vector among n live nodes."""
    edges = np.linspace(0, SIZE, n + 1).astype(int)
    return [range(int(a), int(b)) for a, b in itertools.pairwise(edges)]


@pytest.fixture(scope="module")
def updates() -> dict[str, tuple[int, np.ndarray]]:
    rng = np.random.default_rng(18)
    return {
        a: (int(rng.integers(1, 1000)), rng.uniform(-8, 8, SIZE).astype(np.float32))
        for a in ACCOUNTS
    }


def _fresh(updates: dict[str, tuple[int, np.ndarray]]) -> LocalRound:
    return LocalRound(RoundContext.of(b"swarm-18", 5, ACCOUNTS, FIXED), updates)


def _plain_mean(updates: dict[str, tuple[int, np.ndarray]], inputs: list[str]) -> np.ndarray:
    weight = sum(updates[a][0] for a in inputs)
    return sum(updates[a][0] * updates[a][1].astype(np.float64) for a in inputs) / weight


def _within_bound(result: Unmasked, exact: np.ndarray) -> bool:
    slack = FIXED.error_bound(len(result.request.stayed), result.weight)
    return bool(np.all(np.abs(result.mean - exact) <= slack + np.spacing(np.float32(8.0))))


def test_a_drop_in_the_middle_ends_on_the_survivors_mean_bit_identically(
    updates: dict[str, tuple[int, np.ndarray]],
) -> None:
    swarm = _fresh(updates)
    dropped = ACCOUNTS[3]
    # attempt 1: every node masked its whole vector; the owners of the first three segments
    # got every row, including the dropped node's, before it fell silent. Nothing was
    # revealed yet, so the chain's drop decides: attempt 2 sums the other seven, on its own
    # segmentation, from rows keyed by element range (the attempt-1 rows stay valid).
    held = {a: swarm.masked[a] for a in ACCOUNTS}
    survivors = [a for a in ACCOUNTS if a != dropped]
    threshold = swarm.context.threshold
    assert threshold == 5
    merged = np.empty(SIZE, dtype=np.float32)
    results = []
    for part in _segments(len(survivors)):
        rows = {a: held[a][part.start : part.stop] for a in survivors}
        result = swarm.aggregate(part, survivors, rows=rows)
        # another node, unmasking from another t of the survivors, gets the same bits
        again = swarm.aggregate(part, survivors, revealers=survivors[-threshold:], rows=rows)
        assert result.mean.tobytes() == again.mean.tobytes()
        merged[part.start : part.stop] = result.mean
        results.append(result)
    exact = _plain_mean(updates, survivors)
    slack = FIXED.error_bound(N - 1, results[0].weight) + np.spacing(np.float32(8.0))
    assert float(np.max(np.abs(merged - exact))) <= slack
    # every revealed sum is over the same seven inputs, so no difference of two sums
    # over overlapping elements is anyone's update
    encoded = {a: FIXED.signed(FIXED.encode(*updates[a])) for a in ACCOUNTS}
    for first in results:
        for second in results:
            lo = max(first.request.elements.start, second.request.elements.start)
            hi = min(first.request.elements.stop, second.request.elements.stop)
            if lo >= hi:
                continue
            difference = _cut(first, lo, hi) - _cut(second, lo, hi)
            assert not any(np.array_equal(difference, encoded[a][lo:hi]) for a in ACCOUNTS)


def _cut(result: Unmasked, lo: int, hi: int) -> np.ndarray:
    start = result.request.elements.start
    return result.total[lo - start : hi - start]


def test_the_revealers_refuse_the_re_sum_that_would_expose_an_update(
    updates: dict[str, tuple[int, np.ndarray]],
) -> None:
    swarm = _fresh(updates)
    x, y = ACCOUNTS[3], ACCOUNTS[6]
    seven = [a for a in ACCOUNTS if a != x]
    six = [a for a in seven if a != y]
    first = swarm.aggregate(range(0, 500), seven)
    # "just sum again without y" over the same elements: refused by every honest revealer
    for account in six:
        with pytest.raises(RevealRefused, match=r"re-sum elements \[200, 300\)"):
            swarm.revealers[account].reveal(swarm.request(range(200, 300), six))
    # the same set again is fine (a second owner, a retry)
    assert swarm.aggregate(range(0, 500), seven).mean.tobytes() == first.mean.tobytes()
    # the trap is real: revealers that keep no record (fresh ones, dealt the same secrets)
    # answer it, and the difference of the two sums is y's update to the last bit
    forgetful = {a: Revealer(swarm.context, a) for a in ACCOUNTS}
    for masker in swarm.maskers.values():
        for dealt in masker.deal():
            forgetful[dealt.holder].receive(dealt)
    request = swarm.request(range(200, 300), six)
    rows = sum_rows(FIXED, (swarm.masked[a][200:300] for a in six))
    second = unmask(
        swarm.context,
        swarm.announcements,
        swarm.weights,
        rows,
        request,
        [forgetful[a].reveal(request) for a in six],
    )
    leaked = first.total[200:300] - second.total
    assert np.array_equal(leaked, FIXED.signed(FIXED.encode(*updates[y]))[200:300])


def test_a_node_revealed_as_stayed_cannot_be_dropped_later_in_the_round(
    updates: dict[str, tuple[int, np.ndarray]],
) -> None:
    swarm = _fresh(updates)
    late = ACCOUNTS[0]
    swarm.aggregate(range(0, 100), ACCOUNTS)  # its seed shares are out
    others = [a for a in ACCOUNTS if a != late]
    with pytest.raises(
        RevealRefused, match=f"both the self-mask share and the key share of {late}"
    ):
        swarm.revealers[ACCOUNTS[1]].reveal(swarm.request(range(500, 600), others))
    # its rows are held, keyed by element range: the round finishes with it included
    rest = swarm.aggregate(range(100, SIZE), ACCOUNTS)
    assert _within_bound(rest, _plain_mean(updates, ACCOUNTS)[100:])


def test_a_request_for_both_shares_of_one_peer_is_refused(
    updates: dict[str, tuple[int, np.ndarray]],
) -> None:
    swarm = _fresh(updates)
    revealer = swarm.revealers[ACCOUNTS[0]]
    request = swarm.request(range(0, 10), ACCOUNTS)
    both = type(request)(request.round, request.elements, request.stayed, frozenset([ACCOUNTS[2]]))
    with pytest.raises(
        RevealRefused, match=f"both the self-mask share and the key share of {ACCOUNTS[2]}"
    ):
        revealer.reveal(both)
    with pytest.raises(RevealRefused, match="missing: " + ACCOUNTS[7]):
        revealer.reveal(type(request)(5, range(0, 10), frozenset(ACCOUNTS[:7]), frozenset()))
    with pytest.raises(RevealRefused, match="fewer than the threshold 5"):
        revealer.reveal(swarm.request(range(0, 10), ACCOUNTS[:4]))
    with pytest.raises(RevealRefused, match="round 6"):
        revealer.reveal(type(request)(6, range(0, 10), request.stayed, frozenset()))
    # nothing refused was recorded: the full set still goes through
    assert revealer.reveal(request).seeds.keys() == set(ACCOUNTS)


def test_a_sum_with_a_mask_left_out_is_refused(
    updates: dict[str, tuple[int, np.ndarray]],
) -> None:
    swarm = _fresh(updates)
    gone = ACCOUNTS[5]
    seven = [a for a in ACCOUNTS if a != gone]
    # a row missing from the sum: its masks do not cancel
    short = {a: swarm.masked[a][0:200] for a in seven[1:]}
    with pytest.raises(SumRefused, match="a mask left out"):
        swarm.aggregate(range(0, 200), seven, rows=short)
    # the dropped node's row summed in anyway: its self-mask is never removed
    extra = {a: swarm.masked[a][0:200] for a in ACCOUNTS}
    with pytest.raises(SumRefused, match="a mask left out"):
        swarm.aggregate(range(0, 200), seven, rows=extra)
    # the honest sum of the same request passes (the refusals recorded nothing wrong)
    assert _within_bound(swarm.aggregate(range(0, 200), seven), _plain_mean(updates, seven)[:200])


def test_a_lying_share_is_caught_against_the_dealers_commitment(
    updates: dict[str, tuple[int, np.ndarray]],
) -> None:
    swarm = _fresh(updates)
    gone = ACCOUNTS[2]
    seven = [a for a in ACCOUNTS if a != gone]
    request = swarm.request(range(0, 50), seven)
    answers = swarm.reveals(request, seven[:5])
    liar = answers[0]
    bent = {k: shamir.Share(s.x, (s.y + 1) % shamir.PRIME) for k, s in liar.keys.items()}
    lying = [Reveal(liar.revealer, request, liar.seeds, bent), *answers[1:]]
    rows = sum_rows(FIXED, (swarm.masked[a][0:50] for a in seven))
    with pytest.raises(ShareError, match=f"shares of {gone}'s"):
        unmask(swarm.context, swarm.announcements, swarm.weights, rows, request, lying)
    # with more than t reveals the bad share is off the others' polynomial
    more = [*lying, *swarm.reveals(request, seven[5:])]
    with pytest.raises(ShareError, match="not on the polynomial"):
        unmask(swarm.context, swarm.announcements, swarm.weights, rows, request, more)


def test_two_owners_asking_at_once_cannot_both_get_conflicting_reveals(
    updates: dict[str, tuple[int, np.ndarray]],
) -> None:
    """Two threads released together ask one revealer for sums over two different sets of
    the same elements; whichever order the lock gives them, exactly one is answered."""
    swarm = _fresh(updates)
    revealer = swarm.revealers[ACCOUNTS[0]]
    requests = [
        swarm.request(range(0, 100), ACCOUNTS[:7]),
        swarm.request(range(50, 150), ACCOUNTS[:6] + ACCOUNTS[7:]),
    ]
    start = threading.Barrier(2, timeout=30)
    outcomes: list[str] = []

    def ask(request: RevealRequest) -> None:
        start.wait()  # both threads go together, or the barrier breaks within 30 s
        try:
            revealer.reveal(request)
            outcomes.append("answered")
        except RevealRefused:
            outcomes.append("refused")

    threads = [threading.Thread(target=ask, args=(r,)) for r in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive(), "a reveal thread did not end within 30 s"
    assert sorted(outcomes) == ["answered", "refused"]
