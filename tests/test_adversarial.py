"""The adversarial suite (issue 14 point 4): one Byzantine participant (f = 1) per round, on
real mutual-TLS gRPC between in-process nodes, with the in-memory ledger (one test on
anvil), playing whole rounds (swarmnode.round.Round in threads) against the honest ones.

The liar runs the honest code wrapped by swarmnode/p2p/byzantine.py: its transport lies in
what it pushes (withholds, equivocates, forges), its inbox lies in what it answers (Info,
FetchUpdate), its merge rule lies about what it merged. What the honest participants must
still get (docs/trust.md#threat-model), checked after every round here:

(a) every honest node ends the round on the same merged model;
(b) none adopts a model whose digest the chain did not finalize;
(c) none is voted out (or even accused) while it delivered: an honest peer gets at most f
    drop votes on chain, and the liar is dropped where the round did not finalize first,
    or accused in the honest nodes' all-reduce results;
(d) each segment of the merged model is moved by the liar no more than the rule allows: a
    lying owner moves nothing (the result equals the honest merge bit for bit), a far-off
    contribution under the median or Krum stays within the honest rows;
(e) the inbox holds no more than the preallocated buffers of the segments the node expects.

Forged partial sums have no message any more: a call to the removed PushPartials is
answered UNIMPLEMENTED (tests/test_transport_fuzz.py,
test_the_removed_partial_sums_call_is_unimplemented), so that attack is not repeated here.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pytest
import torch

from swarmnode import canonical
from swarmnode.address import normalize
from swarmnode.allreduce import AllReduceResult
from swarmnode.identity import TlsIdentity
from swarmnode.ledger.base import Ledger
from swarmnode.ledger.memory import InMemoryChain
from swarmnode.ledger.types import RoundState, RoundStatus
from swarmnode.merge import MergeRule, make_rule
from swarmnode.ownership import Owners
from swarmnode.p2p.byzantine import Lies, LyingInbox, LyingRule, LyingTransport
from swarmnode.p2p.errors import NotFound
from swarmnode.p2p.frames import DEFAULT_FRAME_CHUNKS, Frame
from swarmnode.p2p.grpc_transport import GrpcTransport, PeerServer
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.roster import PeerRecord, Roster
from swarmnode.p2p.transport import Transport
from swarmnode.round import Round, RoundResult, RoundSettings
from swarmnode.rules import MergeRuleId, Rule, SwarmParams
from swarmnode.simulation.local import run_in_threads

if TYPE_CHECKING:
    from swarmnode.ledger.devchain import AnvilChain

F = 1  # Byzantine participants per round in every test here
NUMEL = 9 * 16 + 7  # 10 chunks of 16 (the last short): a few per segment at n = 4 and 8
LIAR = 0  # the liar's index; which segments it owns is drawn from the round's seed


class PeakInbox(Inbox):
    """An honest Inbox that remembers the most it ever held, after every frame it took in
    (guarantee (e)); what it accepts is unchanged."""

    def __init__(self, account: str) -> None:
        super().__init__(account)
        self.peak = 0

    def receive(self, frame: Frame, sender: str, wait: float | None = None) -> int:
        try:
            return super().receive(frame, sender, wait)
        finally:
            self.peak = max(self.peak, self.held_bytes())


class WithholdingInbox(LyingInbox):
    """The liar's inbox refusing FetchUpdate of its own rows to the peers its transport
    withholds them from (`Lies.withhold_updates_from`), and serving everyone else: those
    owners can get its rows only through a third node's relay
    (docs/round-protocol.md#relays)."""

    def update_frames(
        self,
        round: int,
        caller: str,
        sender: str,
        first_chunk: int,
        chunks: int,
        frame_chunks: int = DEFAULT_FRAME_CHUNKS,
    ) -> Iterator[Frame]:
        if (
            normalize(caller) in self.lies.withhold_updates_from
            and normalize(sender) == self.account
        ):
            raise NotFound(f"no update of {sender} here (for {caller})")
        return super().update_frames(round, caller, sender, first_chunk, chunks, frame_chunks)


@dataclass
class Node:
    ledger: Ledger
    inbox: Inbox
    transport: Transport
    server: PeerServer

    @property
    def account(self) -> str:
        return self.ledger.account


@dataclass
class Swarm:
    """n nodes over mutual-TLS gRPC on 127.0.0.1, node LIAR lying as `lies` says."""

    nodes: list[Node]
    lies: Lies
    events: Callable[[], list[tuple[int, str, str]]]  # (attempt, voter, peer) of DropVoted
    played: list[Round] = field(default_factory=list)

    @property
    def liar(self) -> Node:
        return self.nodes[LIAR]

    @property
    def honest(self) -> list[Node]:
        return [n for i, n in enumerate(self.nodes) if i != LIAR]

    def close(self) -> None:
        for node in self.nodes:
            node.transport.close()
            node.server.stop(0)


LiarInbox = Callable[[str, Lies], Inbox]


def _wire(ledgers: Sequence[Ledger], lies: Lies, liar_inbox: LiarInbox) -> list[Node]:
    """A TLS identity, a gRPC server and a transport per ledger's account, all on one roster;
    registered on chain as a daemon would be. Servers started here are stopped on failure."""
    roster = Roster()
    nodes: list[Node] = []
    try:
        for i, ledger in enumerate(ledgers):
            identity = TlsIdentity.generate(ledger.account)
            inbox: Inbox = (
                liar_inbox(ledger.account, lies) if i == LIAR else PeakInbox(ledger.account)
            )
            server = PeerServer(
                ledger.account, identity.key_pem, identity.cert_pem, roster, inbox
            ).start()
            roster.upsert(PeerRecord(ledger.account, server.endpoint, identity.cert_der))
            transport: Transport = GrpcTransport(
                ledger.account, identity.key_pem, identity.cert_pem, roster
            )
            if i == LIAR:
                transport = LyingTransport(transport, lies)
            nodes.append(Node(ledger, inbox, transport, server))
            ledger.register(server.endpoint, identity.cert_der)
    except BaseException:
        for node in nodes:
            node.transport.close()
            node.server.stop(0)
        raise
    return nodes


def params_for(n: int, rule: Rule, transfer_deadline: int = 2, min_peers: int = 2) -> SwarmParams:
    """The round closes when the n-th node joins (max_peers = n), not on a timer."""
    return SwarmParams(
        min_peers=min_peers,
        max_peers=n,
        join_window=30,
        transfer_deadline=transfer_deadline,
        round_deadline=60,
        merge_rule=rule,
    )


LiesFor = Callable[[Sequence[str]], Lies]  # the liar's lies, given every node's account


@contextmanager
def grpc_swarm_over(
    ledgers: Sequence[Ledger],
    reader: Ledger,
    lies_for: LiesFor,
    liar_inbox: LiarInbox = LyingInbox,
) -> Iterator[Swarm]:
    """The nodes of `ledgers` talking real mutual-TLS gRPC; `reader` reads the drop votes."""

    def drop_votes() -> list[tuple[int, str, str]]:
        events, _ = reader.events(reader.start_cursor())
        return [
            (int(e.args["attempt"]), normalize(e.args["voter"]), normalize(e.args["peer"]))
            for e in events
            if e.name == "DropVoted"
        ]

    lies = lies_for([ledger.account for ledger in ledgers])
    swarm = Swarm(_wire(ledgers, lies, liar_inbox), lies, drop_votes)
    try:
        yield swarm
    finally:
        swarm.close()


@contextmanager
def memory_grpc_swarm(
    params: SwarmParams, n: int, lies_for: LiesFor, liar_inbox: LiarInbox = LyingInbox
) -> Iterator[Swarm]:
    """n nodes on the in-memory ledger (wall clock) talking real mutual-TLS gRPC."""
    chain = InMemoryChain(time.time)
    owner = chain.new_account()
    address = chain.deploy(params, owner)
    ledgers = [chain.ledger(address, chain.new_account()) for _ in range(n)]
    with grpc_swarm_over(ledgers, chain.ledger(address, owner), lies_for, liar_inbox) as swarm:
        yield swarm


def updates_for(n: int, seed: int = 14) -> list[npt.NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(NUMEL).astype(np.float32) for _ in range(n)]


def play(
    swarm: Swarm,
    updates: Sequence[npt.NDArray[np.float32]],
    rule: MergeRule,
    liar_rule: MergeRule | None = None,
) -> list[RoundResult]:
    """Round 1 on every node at once, the liar included (with `liar_rule` if given)."""
    rounds = [
        Round(
            ledger=node.ledger,
            transport=node.transport,
            inbox=node.inbox,
            rule=liar_rule if (i == LIAR and liar_rule is not None) else rule,
            vector=updates[i],
            weight=10 + i,
            val_loss=0.5,
            settings=RoundSettings(poll=0.02, frame_chunks=1),
        )
        for i, node in enumerate(swarm.nodes)
    ]
    swarm.played[:] = rounds
    return run_in_threads([r.run for r in rounds], timeout=60)


def reduced(played: Round, attempt: int | None = None) -> AllReduceResult | None:
    """The last all-reduce a node reported (if of `attempt`, when given): what it accused is
    there (RoundResult does not carry it; the round logs it and votes on it once votes
    count)."""
    last = played._reduced
    if last is None or (attempt is not None and last[0].attempt != attempt):
        return None
    return last[1]


def honest_merge(
    state: RoundState, updates: dict[str, npt.NDArray[np.float32]], rule: MergeRule
) -> npt.NDArray[np.float32]:
    """Every segment of the final attempt merged from its committed rows as an honest owner
    merges it (same rows, order, weights and segments): what the liar may not move."""
    live = state.live_participants
    seats = {s.account: s for s in state.seats}
    weights = [seats[p].weight for p in live]
    owners = Owners.of(live, state.seed, state.attempt, NUMEL)
    merged = np.empty(NUMEL, dtype=np.float32)
    for chunks in owners.chunks:
        span = canonical.element_range(chunks, NUMEL)
        rows = np.stack([updates[p][span.start : span.stop] for p in live])
        merged[span.start : span.stop] = rule.merge_segment(torch.from_numpy(rows), weights).numpy()
    return merged


def held_bound(state: RoundState, account: str, attempts: Sequence[int]) -> int:
    """The bytes node `account`'s inbox preallocates in the largest of `attempts`: every other
    contributor's rows of the segments it owns, the data and hashes of every other segment."""
    participants = state.participants
    seats = {s.account: s for s in state.seats}
    bound = 0
    for attempt in attempts:
        live = [
            p for p in participants if seats[p].dropped_at == 0 or seats[p].dropped_at >= attempt
        ]
        owners = Owners.of(live, state.seed, attempt, NUMEL)
        mine = owners.owned_by(account)
        size = 0
        for s, chunks in enumerate(owners.chunks):
            span = canonical.element_range(chunks, NUMEL)
            nbytes = len(span) * canonical.ELEMENT_BYTES
            size += (len(live) - 1) * nbytes if s in mine else nbytes + 32 * len(chunks)
        bound = max(bound, size)
    return bound


def check_guarantees(
    swarm: Swarm,
    results: list[RoundResult],
    updates: Sequence[npt.NDArray[np.float32]],
    rule: MergeRule,
) -> RoundState:
    """(a), (b), (c) and (e) for every honest node, and (d) for a rule where the honest merge
    is exact: the merge of every live participant's committed update, the liar's included."""
    state = swarm.honest[0].ledger.round(1)
    assert state.status == RoundStatus.FINAL, state
    honest = [r for i, r in enumerate(results) if i != LIAR]
    # (a) and (b): one model, the one whose digest the chain finalized: each node's own merge
    # (final), or for a node the others' quorum left behind (as on a loaded machine) the
    # final model fetched from a peer and checked against that digest (caught_up)
    assert {r.status for r in honest} <= {"final", "caught_up"} and "final" in {
        r.status for r in honest
    }
    assert {r.digest for r in honest} == {state.final_digest}
    for r in honest:
        assert r.merged is not None and canonical.digest(r.merged) == state.final_digest
    # (c): no honest peer accused by an honest node, nor given more than f votes, nor dropped
    accounts = {node.account for node in swarm.honest}
    assert accounts <= set(state.live_participants)
    for r in honest:  # a node left behind accused nobody here: its votes are on chain, below
        assert not set(r.accused) & accounts, r.accused
    votes = Counter((attempt, peer) for attempt, _, peer in swarm.events())
    assert all(count <= F for (_, peer), count in votes.items() if peer in accounts), votes
    # (d): exactly the honest merge of the committed rows
    by_account = {node.account: updates[i] for i, node in enumerate(swarm.nodes)}
    expected = honest_merge(state, by_account, rule)
    assert honest[0].merged is not None and honest[0].merged.tobytes() == expected.tobytes()
    # (e): nothing held beyond the segments' buffers
    for node in swarm.honest:
        assert isinstance(node.inbox, PeakInbox)
        bound = held_bound(state, node.account, range(1, state.attempt + 1))
        assert 0 < node.inbox.peak <= bound, (node.inbox.peak, bound)
        assert node.inbox.held_bytes() == 0  # the round is over: nothing kept
    return state


def assert_liar_caught(swarm: Swarm, state: RoundState, why: str = "", every: bool = True) -> None:
    """The liar was voted out on chain (the honest accusations counted before their reports
    finalized the round, as on a loaded machine), or the honest nodes' all-reduce of the final
    attempt accused it, saying `why`: every one that merged, or at least one."""
    if swarm.liar.account not in state.live_participants:
        return
    said = [
        seen.accused.get(swarm.liar.account, "")
        for played in swarm.played[LIAR + 1 :]
        if (seen := reduced(played, state.attempt)) is not None
    ]
    caught = [w for w in said if w and why in w]
    assert caught and (not every or len(caught) == len(said)), said


MEAN = Rule(MergeRuleId.MEAN)


# ---------------------------------------------------------------- attacks


@pytest.mark.parametrize("n", [4, 8])
def test_a_lying_owner_moves_nothing_and_is_accused(n: int) -> None:
    """The liar merges the segment it owns (and the one it checks) wrongly and sends the same
    wrong result to everyone: its data as merger, its hashes as checker. Each honest node sees
    them differ from the co-owner's, re-merges the segment itself, and accuses the liar; the
    honest digests finalize the round without it, bit for bit the honest merge."""
    rule = make_rule(MEAN)
    updates = updates_for(n)
    with memory_grpc_swarm(params_for(n, MEAN), n, lambda _: Lies()) as swarm:
        results = play(swarm, updates, rule, liar_rule=LyingRule(rule, 0.5))
        state = check_guarantees(swarm, results, updates, rule)
        assert results[LIAR].status == "caught_up"  # its own digest lost; it took the winner
        assert_liar_caught(swarm, state, "wrong")  # everyone saw it


def test_an_equivocating_owner_cannot_split_the_honest_nodes() -> None:
    """(a): the liar sends its merged segment shifted to two honest nodes and unchanged to
    the third (one of the three is its checker, who gets no data from it). The tampered
    copies do not match the checker's hashes, so those nodes re-merge, and every honest node
    ends on the same model, the honest merge. A node given a tampered copy accuses the liar
    if it finishes its attempt before the others' reports finalize the round; nothing waits
    for it, so often it only takes the final model."""
    n = 4
    rule = make_rule(MEAN)
    updates = updates_for(n)

    told: set[str] = set()

    def lies(accounts: Sequence[str]) -> Lies:
        told.update(accounts[2:])
        return Lies(tamper_merged_to=frozenset(accounts[2:]))

    with memory_grpc_swarm(params_for(n, MEAN), n, lies) as swarm:
        results = play(swarm, updates, rule)
        state = check_guarantees(swarm, results, updates, rule)
        assert results[LIAR].status in ("final", "caught_up")  # only its copies lied
        seen = [reduced(p, state.attempt) for p in swarm.played[LIAR + 1 :]]
        owners = Owners.of(state.live_participants, state.seed, state.attempt, NUMEL)
        checker = owners.checker(owners.merged_by(swarm.liar.account))  # gets no data from it
        tampered = {normalize(a) for a in told} - {normalize(checker)}
        lied_to = [reduced(p, state.attempt) for p in swarm.played if normalize(p.me) in tampered]
        if all(r is None for r in lied_to):
            # the other reports finalized the round before any node given a tampered copy
            # finished its attempt (nothing waits for it once a quorum agrees): it took the
            # final model, which check_guarantees found honest, and has no accusation to make
            return
        if any(r is not None and r.checked for r in seen) and not any(
            r is not None and r.accused for r in seen
        ):
            # a loaded machine: the tampered copy came after the node had re-merged the
            # segment itself at CHECK_AT, so it never saw the lie (and took its own merge,
            # which check_guarantees found honest): an accusation needs evidence seen
            return
        assert_liar_caught(swarm, state, "merged wrongly", every=False)  # who got a bad copy


@pytest.mark.parametrize("n", [4, 8])
def test_false_blame_costs_the_named_peer_nothing(n: int) -> None:
    """(c): the liar withholds its merged segment and its hashes from everyone and answers
    Info naming an honest peer as the one it waits for. Each honest node re-merges the liar's
    segments itself, fetches the named peer's rows (it serves them) and relays them to the
    liar; the liar stays silent and is accused, the named peer by nobody."""
    rule = make_rule(MEAN)
    updates = updates_for(n)

    def lies(accounts: Sequence[str]) -> Lies:
        return Lies(withhold_merged=True, claims_waiting_for=(accounts[1],))

    with memory_grpc_swarm(params_for(n, MEAN), n, lies) as swarm:
        results = play(swarm, updates, rule)
        state = check_guarantees(swarm, results, updates, rule)
        named = swarm.honest[0].account
        assert named in state.live_participants  # and accused by nobody: check_guarantees
        assert_liar_caught(swarm, state, "even after a relay")


def test_withholding_from_one_owner_costs_a_fetch_not_a_vote() -> None:
    """The liar sends its rows to every owner but one honest node j. j fetches them from each
    segment's other owner (or from the liar, which serves its committed rows), merges and
    sends in time: nobody is accused, the round finalizes in its first attempt with the
    liar's update merged in."""
    n = 4
    rule = make_rule(MEAN)
    updates = updates_for(n)

    def lies(accounts: Sequence[str]) -> Lies:
        return Lies(withhold_updates_from=frozenset(accounts[1:2]))

    with memory_grpc_swarm(params_for(n, MEAN), n, lies) as swarm:
        results = play(swarm, updates, rule)
        state = check_guarantees(swarm, results, updates, rule)
        assert len(state.live_participants) == n  # nobody voted out, the liar included
        assert results[LIAR].status in ("final", "caught_up")


def test_owners_withheld_from_and_refused_get_the_rows_by_relay() -> None:
    """(c), the relay: the liar sends its rows to no owner but one honest node R, and refuses
    the other two honest nodes its rows when they ask. They cannot merge; R can (it asks the
    liar, which serves R), finds their segments silent, asks them (Info) whom they wait for,
    fetches the liar's rows and relays them. They merge and send in time: no honest node is
    accused, none gets more than f votes, the round finalizes with every update merged."""
    n = 4
    rule = make_rule(MEAN)
    updates = updates_for(n)

    def lies(accounts: Sequence[str]) -> Lies:
        return Lies(withhold_updates_from=frozenset(accounts[2:]))

    with memory_grpc_swarm(params_for(n, MEAN), n, lies, WithholdingInbox) as swarm:
        results = play(swarm, updates, rule)
        state = check_guarantees(swarm, results, updates, rule)
        assert len(state.live_participants) == n
        # each merged the round itself: the two whose rows came late by relay did not give
        # up on each other's segments (whose rows the liar refuses them) before those came
        assert [r.status for r in results if r is not results[LIAR]] == ["final"] * (n - 1)


def test_withholding_from_every_owner_and_refusing_fetches_gets_the_liar_dropped() -> None:
    """(c): the liar sends its rows to no owner and answers every FetchUpdate as if it held
    nothing, its own rows included. Every honest owner lacks its rows and nobody can get them,
    so the honest nodes vote it out on chain (the liar's votes against them, one each, evict
    nobody), and the second attempt finalizes the honest merge of the other three."""
    n = 4
    rule = make_rule(MEAN)
    updates = updates_for(n)

    def lies(accounts: Sequence[str]) -> Lies:
        return Lies(withhold_updates_from=frozenset(accounts[1:]), refuses_fetches=True)

    with memory_grpc_swarm(params_for(n, MEAN), n, lies) as swarm:
        results = play(swarm, updates, rule)
        state = check_guarantees(swarm, results, updates, rule)
        assert state.attempt == 2
        assert set(state.live_participants) == {node.account for node in swarm.honest}
        against = {voter for attempt, voter, peer in swarm.events() if peer == swarm.liar.account}
        assert len(against) >= 2  # more than half of the other three
        assert against <= {node.account for node in swarm.honest}
        assert results[LIAR].status in ("caught_up", "lost")


def test_forged_update_frames_are_refused_and_never_held() -> None:
    """(e): every UPDATE frame the liar sends is shifted off its commitment. Each honest owner
    refuses them before they reach a buffer (what it holds stays within its segments' buffers
    the whole round), then fetches the liar's committed rows from the liar itself: the round
    finalizes in its first attempt on the merge of the committed updates."""
    n = 4
    rule = make_rule(MEAN)
    updates = updates_for(n)
    with memory_grpc_swarm(params_for(n, MEAN), n, lambda _: Lies(forge_updates=True)) as swarm:
        results = play(swarm, updates, rule)
        state = check_guarantees(swarm, results, updates, rule)  # (e) checked in there
        assert len(state.live_participants) == n
        assert all(node.inbox.refused >= 1 for node in swarm.honest)


@pytest.mark.parametrize(
    ("rule_id", "n"), [(MergeRuleId.MEDIAN, 4), (MergeRuleId.KRUM, 6)], ids=["median", "krum"]
)
def test_a_far_off_lying_owner_moves_each_segment_within_the_rule(
    rule_id: MergeRuleId, n: int
) -> None:
    """(d): the liar commits a far-off update (+100 in every element) and merges the segments
    it owns wrongly on top. The merged model is the rule's honest merge exactly, and every
    segment of it stays within the honest rows: the coordinate-wise median between the
    smallest and largest honest value, each Krum segment one honest row's segment."""
    rule_params = (F, 0, 0, 0) if rule_id == MergeRuleId.KRUM else (0, 0, 0, 0)
    merge_rule = Rule(rule_id, rule_params)
    rule = make_rule(merge_rule)
    updates = updates_for(n)
    updates[LIAR] = updates[LIAR] + np.float32(100.0)
    with memory_grpc_swarm(params_for(n, merge_rule), n, lambda _: Lies()) as swarm:
        results = play(swarm, updates, rule, liar_rule=LyingRule(rule, 50.0))
        state = check_guarantees(swarm, results, updates, rule)
        merged = results[1].merged
        assert merged is not None
        honest_rows = np.stack([u for i, u in enumerate(updates) if i != LIAR])
        if rule_id == MergeRuleId.MEDIAN:
            assert np.all(merged >= honest_rows.min(axis=0))
            assert np.all(merged <= honest_rows.max(axis=0))
        else:
            owners = Owners.of(state.live_participants, state.seed, state.attempt, NUMEL)
            for chunks in owners.chunks:
                span = slice(*_bounds(chunks))
                assert any(merged[span].tobytes() == row[span].tobytes() for row in honest_rows), (
                    f"segment {chunks} is no honest row"
                )


def _bounds(chunks: range) -> tuple[int, int]:
    span = canonical.element_range(chunks, NUMEL)
    return span.start, span.stop


def test_no_honest_node_adopts_a_model_the_chain_did_not_finalize() -> None:
    """(b): with all four reports needed (min_peers = 4), the lying owner's report makes the
    quorum impossible and the round fails. The honest nodes merged the right model, but the
    chain did not finalize it, so none adopts it: no merged model, nothing published for
    catch-up."""
    n = 4
    rule = make_rule(MEAN)
    updates = updates_for(n)
    params = params_for(n, MEAN, min_peers=n)
    with memory_grpc_swarm(params, n, lambda _: Lies()) as swarm:
        results = play(swarm, updates, rule, liar_rule=LyingRule(rule, 0.5))
        state = swarm.honest[0].ledger.round(1)
        assert state.status == RoundStatus.FAILED and state.final_digest is None
        for node, result in zip(swarm.nodes, results, strict=True):
            assert result.status == "failed_disagreed"
            assert result.merged is None and result.digest is None
            assert node.inbox.model(1) is None
        # the honest nodes that finished merging (the round may fail before the last does)
        # agreed, and still adopted nothing
        merges = [reduced(r) for r in swarm.played[LIAR + 1 :]]
        assert len({m.digest for m in merges if m is not None}) == 1


@pytest.mark.chain
def test_a_lying_owner_on_anvil_moves_nothing(anvil_chain: AnvilChain) -> None:
    """The lying owner once on a real chain (anvil, ContractLedger): owners drawn from the
    closing block's hash, the honest digests finalize the honest merge."""
    n = 4
    rule = make_rule(MEAN)
    updates = updates_for(n)
    deployment, owner = anvil_chain.deploy(params_for(n, MEAN, transfer_deadline=10))
    ledgers = [anvil_chain.ledger(deployment, anvil_chain.new_account()) for _ in range(n)]
    reader = anvil_chain.ledger(deployment, owner)
    with grpc_swarm_over(ledgers, reader, lambda _: Lies()) as swarm:
        results = play(swarm, updates, rule, liar_rule=LyingRule(rule, 0.5))
        state = check_guarantees(swarm, results, updates, rule)
        assert len(state.seed) == 32
        assert_liar_caught(swarm, state, "wrong")
