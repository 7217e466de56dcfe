"""What a node's sends cost in threads: a one-frame push over real mutual-TLS gRPC starts no
thread on the caller's side (a longer stream does, inside grpc), and an attempt's sends run
on shared workers, at most their limit at once, in the order they were submitted, each
ending with its own result or error (docs/architecture.md#transfer-speed)."""

from __future__ import annotations

import multiprocessing
import os
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import wait

import numpy as np
import pytest

from swarmnode import canonical, merkle
from swarmnode.address import normalize
from swarmnode.allreduce import _Sends
from swarmnode.identity import TlsIdentity
from swarmnode.p2p.frames import Frame, frames_for
from swarmnode.p2p.grpc_transport import GrpcTransport, PeerServer
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.messages import Kind
from swarmnode.p2p.roster import PeerRecord, Roster

NUMEL = 8 * 16  # 8 chunks of 16 elements
ROUND = 3


@pytest.fixture
def pair() -> Iterator[tuple[GrpcTransport, Inbox, str]]:
    """A caller's transport and a receiver's Inbox behind its real PeerServer."""
    roster = Roster()
    accounts = [normalize("0x" + secrets.token_hex(20)) for _ in range(2)]
    identities = [TlsIdentity.generate(a) for a in accounts]
    inbox = Inbox(accounts[1])
    server = PeerServer(
        accounts[1], identities[1].key_pem, identities[1].cert_pem, roster, inbox
    ).start()
    roster.upsert(PeerRecord(accounts[0], "127.0.0.1:1", identities[0].cert_der))
    roster.upsert(PeerRecord(accounts[1], server.endpoint, identities[1].cert_der))
    caller = GrpcTransport(accounts[0], identities[0].key_pem, identities[0].cert_pem, roster)
    vector = np.arange(NUMEL, dtype=np.float32)
    commitment = canonical.digest(vector)
    inbox.expect_updates(ROUND, {0: range(0, 8)}, NUMEL, {accounts[0]: commitment})
    yield caller, inbox, accounts[1]
    caller.close()
    server.stop(0)


def update_frames(frame_chunks: int) -> list[Frame]:
    vector = np.arange(NUMEL, dtype=np.float32)
    tree = merkle.Tree(canonical.chunk_hashes(vector))
    return list(
        frames_for(
            vector,
            range(0, 8),
            kind=Kind.UPDATE,
            round=ROUND,
            attempt=1,
            segment=0,
            sender="",
            prove=tree.proof,
            frame_chunks=frame_chunks,
        )
    )


def threads_started_here(monkeypatch: pytest.MonkeyPatch) -> list[threading.Thread]:
    """The threads that the calling thread starts from now on (grpc's own included)."""
    started: list[threading.Thread] = []
    caller = threading.current_thread()
    start = threading.Thread.start

    def counted(thread: threading.Thread) -> None:
        if threading.current_thread() is caller:
            started.append(thread)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", counted)
    return started


@pytest.mark.parametrize(("frame_chunks", "frames", "threads"), [(8, 1, 0), (2, 4, 1)])
def test_a_one_frame_push_starts_no_thread_and_is_taken_whole(
    pair: tuple[GrpcTransport, Inbox, str],
    monkeypatch: pytest.MonkeyPatch,
    frame_chunks: int,
    frames: int,
    threads: int,
) -> None:
    caller, inbox, receiver = pair
    sent = update_frames(frame_chunks)
    assert len(sent) == frames
    caller.info(receiver, 10.0)  # the channel is up before threads are counted
    started = threads_started_here(monkeypatch)
    accepted = caller.push(receiver, lambda: list(sent), 10.0)
    assert accepted == NUMEL
    assert len(started) == threads
    got = inbox.update(ROUND, caller.account, 0, 0.0)
    assert got is not None
    assert got.tobytes() == np.arange(NUMEL, dtype=np.float32).tobytes()


def test_sends_beyond_the_limit_wait_their_turn_in_order() -> None:
    limit, count = 3, 12
    sends = _Sends(limit)
    lock = threading.Lock()
    together = threading.Barrier(limit, timeout=10)  # breaks unless `limit` run at once
    running, most, order = [0], [0], []

    def send(i: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            order.append(i)
        together.wait()
        with lock:
            running[0] -= 1
        return i * 10

    futures = [sends.submit(lambda i=i: send(i)) for i in range(count)]  # type: ignore[misc]
    assert not wait(futures, timeout=30).not_done
    assert [f.result() for f in futures] == [i * 10 for i in range(count)]
    assert most[0] == limit
    assert sorted(order[:limit]) == list(range(limit))  # the first `limit`, then in order
    assert order[limit:] == sorted(order[limit:])
    assert sends.futures == futures


def test_a_failed_send_fails_its_own_future_only() -> None:
    sends = _Sends(1)

    def fail() -> int:
        raise RuntimeError("this send broke")

    failed = sends.submit(fail)
    after = sends.submit(lambda: 7)
    assert after.result(timeout=10) == 7
    with pytest.raises(RuntimeError, match="this send broke"):
        failed.result(timeout=10)


def _send_once_in_child() -> None:
    """In a forked child: exit 0 if a send runs (the parent's workers do not exist here)."""
    os._exit(0 if _Sends(2).submit(lambda: 5).result(timeout=20) == 5 else 1)


def test_a_forked_child_sends_on_workers_of_its_own() -> None:
    sends = _Sends(2)
    assert [sends.submit(lambda: 1).result(timeout=10) for _ in range(3)] == [1, 1, 1]
    child = multiprocessing.get_context("fork").Process(target=_send_once_in_child)
    child.start()
    child.join(30)
    if child.exitcode is None:  # hung: kill the child we started, by its own handle
        child.kill()
        child.join()
    assert child.exitcode == 0
