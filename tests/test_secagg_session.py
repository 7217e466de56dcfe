"""One round's secure-aggregation state per node (swarmnode/secagg/session.py), with the
nodes' sessions talking to each other in process: openings checked against the join
commitment, masked roots, reveals held back until every owner said its rows are complete,
and refused for the wrong inputs, the wrong roots or after a failure past the first reveal
(docs/secure-aggregation.md#in-a-round)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from eth_keys.datatypes import PrivateKey

from swarmnode.address import normalize
from swarmnode.ledger.types import RoundStatus
from swarmnode.merge import make_rule
from swarmnode.p2p.faults import InjectedCrash
from swarmnode.round import Round, RoundResult, RoundSettings
from swarmnode.rules import SecureAggregation, SwarmParams
from swarmnode.secagg.errors import Equivocation, NotYet, RevealRefused, SecAggError, SumRefused
from swarmnode.secagg.fixedpoint import FixedPoint
from swarmnode.secagg.masking import RoundContext
from swarmnode.secagg.reveal import RevealRequest
from swarmnode.secagg.session import Opening, Prepared, Session
from swarmnode.secagg.signing import root_message, sign_with_key
from swarmnode.secagg.unmask import sum_rows
from swarmnode.simulation.local import LocalPeer, LocalSwarm, memory_swarm, run_in_threads

N = 5
SIZE = 200
KEYS = [bytes([i + 1]) * 32 for i in range(N)]  # each account's signing key
ACCOUNTS = [normalize(PrivateKey(k).public_key.to_checksum_address()) for k in KEYS]
SIGNERS = {a: partial(sign_with_key, k) for a, k in zip(ACCOUNTS, KEYS, strict=True)}
FIXED = FixedPoint(peers=8, max_weight=100, bound=4.0, fraction_bits=20)
SWARM = b"\x18" * 20
ROUND = 3


class Swarm:
    """N sessions after close, every opening and masked root exchanged."""

    def __init__(self, seed: int = 18) -> None:
        rng = np.random.default_rng(seed)
        self.updates = {a: rng.uniform(-4, 4, SIZE).astype(np.float32) for a in ACCOUNTS}
        self.weights = {a: int(rng.integers(1, 100)) for a in ACCOUNTS}
        digest = {a: bytes([i]) * 32 for i, a in enumerate(ACCOUNTS)}
        self.prepared = {a: Prepared(SWARM, ROUND, a, digest[a]) for a in ACCOUNTS}
        joins = {a: p.commitment for a, p in self.prepared.items()}
        context = RoundContext.of(SWARM, ROUND, ACCOUNTS, FIXED)
        self.sessions = {
            a: Session(p, context, joins, self.weights, sign=SIGNERS[a])
            for a, p in self.prepared.items()
        }
        for a, session in self.sessions.items():
            for b, other in self.sessions.items():
                if a != b:
                    other.receive_opening(a, session.opening(b))
        for a, session in self.sessions.items():
            session.mask(self.updates[a])
            for b, other in self.sessions.items():
                if a != b:
                    other.receive_root(a, session.roots[a], session.signatures[a])

    def begin(self, attempt: int, live: list[str]) -> bytes:
        digests = {s.begin_attempt(attempt, live, live) for s in self.sessions.values()}
        assert len(digests) == 1
        return digests.pop()

    def complete(self, attempt: int, owners: list[str], digest: bytes) -> None:
        for owner in owners:
            for session in self.sessions.values():
                session.receive_rows_complete(owner, attempt, digest)

    def merge(self, owner: str, attempt: int, live: list[str], elements: range) -> np.ndarray:
        session = self.sessions[owner]
        request = session.request(attempt, elements)
        rows = [self.sessions[a].masked[elements.start : elements.stop] for a in live]
        t = session.context.threshold
        reveals = [
            self.sessions[r].answer_reveal(owner, attempt, request, session.digest(attempt), 0.0)
            for r in live[:t]
        ]
        return session.unmask(request, sum_rows(FIXED, rows), reveals)


@pytest.fixture(scope="module")
def swarm() -> Swarm:
    return Swarm()


def test_an_opening_must_match_the_join_commitment(swarm: Swarm) -> None:
    a, b = ACCOUNTS[0], ACCOUNTS[1]
    honest = swarm.sessions[a].opening(b)
    forged_key = replace(honest.announcement, public_key=bytes(32))
    with pytest.raises(SecAggError, match="does not open the commitment"):
        swarm.sessions[b].receive_opening(a, replace(honest, announcement=forged_key))
    with pytest.raises(SecAggError, match="does not open the commitment"):
        swarm.sessions[b].receive_opening(a, Opening(bytes(32), honest.announcement, honest.dealt))
    with pytest.raises(SecAggError, match="in another's name"):
        swarm.sessions[b].receive_opening(ACCOUNTS[2], honest)
    swarm.sessions[b].receive_opening(a, honest)  # the same again: a retry, kept
    with pytest.raises(SecAggError, match=f"{a}'s masked root is not signed by {a}"):
        swarm.sessions[b].receive_root(a, bytes(32), b"")
    forged = sign_with_key(KEYS[2], root_message(SWARM, ROUND, bytes(32)))  # c's key, a's name
    with pytest.raises(SecAggError, match=f"{a}'s masked root is not signed by {a}"):
        swarm.sessions[b].receive_root(a, bytes(32), forged)
    assert swarm.sessions[b].equivocators == {}


def test_two_signed_roots_of_one_node_prove_it_equivocated_and_no_reveal_covers_it() -> None:
    """X's root as node c holds it is another one X signed: c answers an owner's
    rows-complete digest with the signed roots behind its own, the owner finds X's two and
    sends c its copy, and both keep X as an equivocator; no reveal covers X, a root relayed
    with a signature that is not its account's is refused, and the next attempt without X
    ends on the mean of the rest."""
    swarm = Swarm(seed=13)
    a, b, c, x = ACCOUNTS[0], ACCOUNTS[1], ACCOUNTS[2], ACCOUNTS[4]
    other = bytes(range(32))
    swarm.sessions[c].roots[x] = other  # as if X had sent c this root, signed
    swarm.sessions[c].signatures[x] = sign_with_key(KEYS[4], root_message(SWARM, ROUND, other))
    for session in swarm.sessions.values():
        session.begin_attempt(0, ACCOUNTS, ACCOUNTS)
    owner = swarm.sessions[a]
    digest = owner.digest(0)
    for receiver in (b, c):
        swarm.sessions[receiver].receive_rows_complete(a, 0, digest)
    assert swarm.sessions[b].roots_unless(0, digest) == []  # the same roots: nothing more
    # c does not keep a's other digest before the proof comes: still waiting, no refusal
    assert a in swarm.sessions[c].wait_owners(0, time.monotonic())
    theirs = swarm.sessions[c].roots_unless(0, digest)  # c's reply
    assert theirs == swarm.sessions[c].signed_roots(ACCOUNTS)
    forged = [(p, bytes(32) if p == x else r, sig) for p, r, sig in theirs]  # X's sig kept
    with pytest.raises(SecAggError, match=f"{c} relayed a masked root {x} did not sign"):
        owner.check_roots(c, forged)
    assert owner.equivocators == {}
    proof = owner.check_roots(c, theirs)
    assert [account for account, _, _ in proof] == [x] and set(owner.equivocators) == {x}
    swarm.sessions[c].receive_rows_complete(a, 0, digest, proof)  # the owner sends its copy
    assert set(swarm.sessions[c].equivocators) == {x}
    assert swarm.sessions[b].equivocators == {}  # b was shown nothing
    request = owner.request(0, range(16))
    for asked in (a, c):
        with pytest.raises(Equivocation, match=f"{x} signed two different masked roots"):
            swarm.sessions[asked].answer_reveal(a, 0, request, digest, 0.0)
    with pytest.raises(Equivocation):
        owner.wait_owners(0, time.monotonic() + 30)  # at once, not at the deadline
    assert all(not s.revealer.history() for s in swarm.sessions.values())
    live = [p for p in ACCOUNTS if p != x]
    digest = swarm.begin(1, live)
    swarm.complete(1, live, digest)
    mean = swarm.merge(a, 1, live, range(0, SIZE))
    total = sum(swarm.weights[p] for p in live)
    exact = sum(swarm.weights[p] * swarm.updates[p].astype(np.float64) for p in live) / total
    assert np.max(np.abs(mean - exact)) < 1e-4


def test_an_announcement_relayed_by_another_lets_a_node_mask_without_shares() -> None:
    """d never got X's opening: it takes X's announcement from a (checked against X's join
    commitment; a forged one is refused), masks with it, and refuses reveals it holds no
    share for, which the owner then asks of others."""
    x, a, d = ACCOUNTS[4], ACCOUNTS[0], ACCOUNTS[3]
    swarm = Swarm(seed=15)
    prepared = swarm.prepared
    context = swarm.sessions[a].context
    joins = {p: q.commitment for p, q in prepared.items()}
    late = Session(prepared[d], context, joins, swarm.weights, sign=SIGNERS[d])
    for p, session in swarm.sessions.items():
        if p not in (d, x):
            late.receive_opening(p, session.opening(d))
    with pytest.raises(NotYet, match="no announcement yet"):
        late.mask(swarm.updates[d])
    hiding, announcement = swarm.sessions[a].opened(x, time.monotonic())
    with pytest.raises(SecAggError, match="does not open its join commitment"):
        late.receive_announcement(x, bytes(32), announcement)
    late.receive_announcement(x, hiding, announcement)
    assert late.mask(swarm.updates[d]).tobytes() == swarm.sessions[d].masked.tobytes()
    with pytest.raises(RevealRefused, match=f"holds no shares from {x}"):
        late.revealer.reveal(RevealRequest.of(ROUND, range(16), ACCOUNTS, []))


def test_reveals_wait_for_every_owner_then_the_mean_is_exact_within_the_bound() -> None:
    swarm = Swarm(seed=7)
    digest = swarm.begin(0, ACCOUNTS)
    owner, revealer = ACCOUNTS[0], swarm.sessions[ACCOUNTS[1]]
    request = swarm.sessions[owner].request(0, range(0, 64))
    with pytest.raises(NotYet, match="rows complete not yet said"):
        revealer.answer_reveal(owner, 0, request, digest, time.monotonic())
    swarm.complete(0, ACCOUNTS[:-1], digest)
    # the last owner's notice arrives while the revealer waits for it
    answered = threading.Event()
    got: list[object] = []

    def ask() -> None:
        got.append(revealer.answer_reveal(owner, 0, request, digest, time.monotonic() + 30))
        answered.set()

    asker = threading.Thread(target=ask)
    asker.start()
    assert not answered.is_set()
    swarm.complete(0, ACCOUNTS[-1:], digest)
    assert answered.wait(30), "the reveal never came after the last owner's notice"
    asker.join(30)
    elements = range(0, SIZE)
    mean = swarm.merge(owner, 0, ACCOUNTS, elements)
    total = sum(swarm.weights.values())
    exact = sum(swarm.weights[a] * swarm.updates[a].astype(np.float64) for a in ACCOUNTS) / total
    slack = FIXED.error_bound(N, total) + np.spacing(np.float32(4.0))
    assert np.max(np.abs(mean - exact)) <= slack
    # another owner merges the same elements to the same bits (revealers answer again)
    assert swarm.merge(ACCOUNTS[3], 0, ACCOUNTS, elements).tobytes() == mean.tobytes()


def test_reveals_are_refused_for_other_inputs_other_roots_and_after_a_failure() -> None:
    swarm = Swarm(seed=9)
    digest = first = swarm.begin(0, ACCOUNTS)
    swarm.complete(0, ACCOUNTS, digest)
    owner, revealer = ACCOUNTS[0], swarm.sessions[ACCOUNTS[1]]
    session = swarm.sessions[owner]
    fewer = replace(session.request(0, range(16)), stayed=frozenset(ACCOUNTS[:-1]))
    with pytest.raises(RevealRefused, match="exactly its live participants"):
        revealer.answer_reveal(owner, 0, fewer, digest, 0.0)
    with pytest.raises(RevealRefused, match="other masked roots"):
        revealer.answer_reveal(owner, 0, session.request(0, range(16)), bytes(32), 0.0)
    swarm.merge(owner, 0, ACCOUNTS, range(0, 16))  # seed shares of everyone went out
    # the attempt fails after that; the next one, without the last node, cannot reveal
    live = ACCOUNTS[:-1]
    digest = swarm.begin(1, live)
    swarm.complete(1, live, digest)
    with pytest.raises(RevealRefused, match="self-mask share and the key share"):
        swarm.merge(owner, 1, live, range(16, 32))
    with pytest.raises(RevealRefused, match="not live in attempt 1"):  # the dropped asking
        revealer.answer_reveal(ACCOUNTS[-1], 1, session.request(1, range(16)), digest, 0.0)
    with pytest.raises(RevealRefused, match="is over here"):
        revealer.answer_reveal(owner, 0, session.request(0, range(16)), first, 0.0)


def test_a_sum_with_a_row_left_out_is_refused() -> None:
    swarm = Swarm(seed=11)
    digest = swarm.begin(0, ACCOUNTS)
    swarm.complete(0, ACCOUNTS, digest)
    owner = swarm.sessions[ACCOUNTS[0]]
    elements = range(0, 64)
    request = owner.request(0, elements)
    rows = [swarm.sessions[a].masked[0:64] for a in ACCOUNTS[:-1]]  # one row skipped
    reveals = [
        swarm.sessions[r].answer_reveal(ACCOUNTS[0], 0, request, digest, 0.0)
        for r in ACCOUNTS[: owner.context.threshold]
    ]
    with pytest.raises(SumRefused, match="a mask left out"):
        owner.unmask(request, sum_rows(FIXED, rows), reveals)


def _secure_swarm(n: int, transfer_deadline: int) -> LocalSwarm:
    """n nodes of a secure swarm on the in-memory ledger and transport (wall clock)."""
    params = SwarmParams(
        min_peers=3,
        max_peers=n,
        join_window=30,
        transfer_deadline=transfer_deadline,
        round_deadline=60,
        secure_aggregation=SecureAggregation(bound=4, fraction_bits=16, max_weight=64),
    )
    return memory_swarm(params, n, clock=time.time)


def _round(peer: LocalPeer, vector: npt.NDArray[np.float32], weight: int, **settings: Any) -> Round:
    """`peer`'s part in round 1, contributing `vector` with `weight`."""
    return Round(
        ledger=peer.ledger,
        transport=peer.transport,
        inbox=peer.inbox,
        rule=make_rule(peer.ledger.params().merge_rule),
        vector=vector,
        weight=weight,
        val_loss=0.5,
        settings=RoundSettings(poll=0.02, **settings),
    )


def test_a_node_whose_update_breaks_the_bound_is_dropped_and_the_others_finish() -> None:
    """In whole rounds (in-memory ledger and transport): the node cannot encode its update,
    so its masked root never comes; the others vote it out at setup and the next attempt
    ends on the mean of the rest, its pair masks removed with its key share."""
    swarm = _secure_swarm(4, transfer_deadline=2)
    rng = np.random.default_rng(4)
    updates = [rng.uniform(-4, 4, 1000).astype(np.float32) for _ in range(4)]
    updates[3][5] = 9.0  # outside B = 4
    rounds = [_round(peer, updates[i], 10) for i, peer in enumerate(swarm.peers)]
    results = run_in_threads([r.run for r in rounds], timeout=60)
    state = swarm.peers[0].ledger.round(1)
    assert state.status == RoundStatus.FINAL and state.attempt == 2
    assert swarm.peers[3].ledger.account not in state.live_participants
    assert [r.status for r in results[:3]] == ["final"] * 3
    assert {r.digest for r in results[:3]} == {state.final_digest}
    merged = results[0].merged
    assert merged is not None
    assert float(np.max(np.abs(merged - np.mean(np.stack(updates[:3]), axis=0)))) < 1e-4


def test_a_model_with_fewer_chunks_than_nodes_merges_its_empty_segments_too() -> None:
    """40 values, 3 chunks, 6 nodes: three segments are empty, and their owners merge them
    without asking anyone to reveal (a reveal of no elements is refused by rule)."""
    swarm = _secure_swarm(6, transfer_deadline=20)
    rng = np.random.default_rng(6)
    updates = [rng.uniform(-4, 4, 40).astype(np.float32) for _ in range(6)]
    rounds = [_round(peer, updates[i], i + 1) for i, peer in enumerate(swarm.peers)]
    results = run_in_threads([r.run for r in rounds], timeout=60)
    state = swarm.peers[0].ledger.round(1)
    assert state.status == RoundStatus.FINAL and state.attempt == 1
    assert {r.digest for r in results} == {state.final_digest}
    exact = sum((i + 1) * u.astype(np.float64) for i, u in enumerate(updates)) / 21
    assert results[0].merged is not None
    assert float(np.max(np.abs(results[0].merged - exact))) < 1e-4


def test_a_node_dying_before_its_opening_is_dropped_and_the_setup_runs_again() -> None:
    """The victim joins and dies as the round closes: no opening of it reaches anyone, so
    nobody can mask; all vote it out, set up again among the three left in attempt 2 (same
    secrets, same join commitments) and finish on their mean."""
    swarm = _secure_swarm(4, transfer_deadline=2)
    rng = np.random.default_rng(8)
    updates = [rng.uniform(-4, 4, 1000).astype(np.float32) for _ in range(4)]

    def die() -> None:
        raise InjectedCrash("dies as the round closes", 1)

    def node(i: int) -> RoundResult | None:
        peer = swarm.peers[i]
        try:
            return _round(peer, updates[i], 10, on_closed=die if i == 3 else None).run()
        except InjectedCrash:  # what a killed process leaves: no server either
            swarm.extra["network"].detach(peer.ledger.account)
            return None

    results = run_in_threads([lambda i=i: node(i) for i in range(4)], timeout=60)
    state = swarm.peers[0].ledger.round(1)
    assert results[3] is None
    assert state.status == RoundStatus.FINAL and state.attempt == 2
    assert swarm.peers[3].ledger.account not in state.live_participants
    assert {r.digest for r in results[:3] if r is not None} == {state.final_digest}
    merged = results[0].merged if results[0] is not None else None
    assert merged is not None
    assert float(np.max(np.abs(merged - np.mean(np.stack(updates[:3]), axis=0)))) < 1e-4
