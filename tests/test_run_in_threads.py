"""run_in_threads, the helper that runs nodes as threads: the first error is raised at once
and stops the other jobs through the stop signal their rounds honour (issue 15 point 4)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from swarmnode import canonical
from swarmnode.merge import make_rule
from swarmnode.round import Round, RoundResult, RoundSettings
from swarmnode.rules import MergeRuleId, Rule, SwarmParams
from swarmnode.simulation.local import memory_swarm, run_in_threads

NUMEL = canonical.CHUNK_ELEMENTS + 7


class SetupFailed(RuntimeError):
    pass


def test_a_job_that_fails_at_setup_is_raised_at_once_and_stops_the_others() -> None:
    """Three seats are needed and the clock never moves: the two nodes that join would wait
    for the third forever. The third fails before joining: the call raises its error within
    seconds, and the two waiting rounds see the stop and end (left), not hang."""
    params = SwarmParams(min_peers=3, max_peers=3)
    swarm = memory_swarm(params, 3)  # a manual clock: the join window never ends by itself
    stop = threading.Event()
    ended: dict[int, RoundResult] = {}
    both_ended = threading.Barrier(3)  # the two waiting jobs and this test
    joined = threading.Semaphore(0)

    def waiting(i: int) -> RoundResult:
        peer = swarm.peers[i]
        round_ = Round(
            ledger=peer.ledger,
            transport=peer.transport,
            inbox=peer.inbox,
            vector=np.full(NUMEL, float(i), dtype=np.float32),
            weight=1,
            val_loss=0.5,
            rule=make_rule(Rule(MergeRuleId.MEAN)),
            reference=np.zeros(NUMEL, dtype=np.float32),
            settings=RoundSettings(poll=0.01, stop=stop),
        )
        joined.release()
        try:
            result = round_.run()
            ended[i] = result
            return result
        finally:
            both_ended.wait(timeout=30)

    def failing() -> RoundResult:
        for _ in range(2):  # fail once the others are on their way into the round
            assert joined.acquire(timeout=30)
        raise SetupFailed("node 2: no such task")

    t0 = time.monotonic()
    try:
        with pytest.raises(SetupFailed, match="no such task"):
            run_in_threads([lambda: waiting(0), lambda: waiting(1), failing], stop=stop)
        raised_after = time.monotonic() - t0
        assert stop.is_set()
        both_ended.wait(timeout=30)  # bounded: BrokenBarrierError if a round did not end
    finally:
        stop.set()
        swarm.close()
    assert raised_after < 20.0, raised_after  # its jobs wait up to 30 s; a loaded machine lags
    assert sorted(ended) == [0, 1]
    assert {r.status for r in ended.values()} <= {"left", "stopped"}, ended


def test_the_error_does_not_wait_for_a_job_that_never_ends() -> None:
    """Without a stop the others cannot honour, the error is still raised at once: the
    blocked job is a daemon thread the caller no longer waits for."""
    release = threading.Event()
    try:
        t0 = time.monotonic()
        with pytest.raises(SetupFailed):
            run_in_threads([lambda: release.wait(60), _fail], timeout=60)
        assert time.monotonic() - t0 < 30.0  # not the blocked job's 60 s
    finally:
        release.set()


def test_results_in_order_and_a_timeout_sets_the_stop() -> None:
    assert run_in_threads([lambda: 1, lambda: 2, lambda: 3], timeout=30) == [1, 2, 3]
    stop = threading.Event()
    try:
        with pytest.raises(TimeoutError, match="still running"):
            run_in_threads([lambda: stop.wait(60)], timeout=0.2, stop=stop)
        assert stop.is_set()  # the job it gave up on is told to end
    finally:
        stop.set()


def _fail() -> None:
    raise SetupFailed("setup failed")
