"""A peer serving catch-up cannot feed a node a model other than the one on chain
(docs/trust.md#checks-on-received-data, docs/round-protocol.md#catch-up).

The attacks run on real mutual-TLS gRPC: the dishonest peer is a PeerServer whose model
stream is rewritten (chunk 0 twice and never chunk 1; a wrong chunk under the honest hash
list; a stream that stops early; overlapping frames), next to an honest peer holding the
model whose digest the chain finalized.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import numpy as np
import numpy.typing as npt
import pytest

from swarmnode import canonical
from swarmnode.address import normalize
from swarmnode.exceptions import PeerError
from swarmnode.identity import TlsIdentity
from swarmnode.p2p import peer_pb2
from swarmnode.p2p.errors import InvalidMessage
from swarmnode.p2p.frames import Frame, frames_for
from swarmnode.p2p.grpc_transport import GrpcTransport, PeerServer
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.roster import PeerRecord, Roster
from swarmnode.round import catch_up

if TYPE_CHECKING:
    from swarmnode.ledger.types import RoundState
    from swarmnode.node import SwarmNode

CHUNK = 16  # a model this small has chunks of 16 elements (canonical.chunk_elements)
NUMEL = 3 * CHUNK + 7  # 4 chunks, the last one short
ROUND = 4
MODEL = np.random.default_rng(1).standard_normal(NUMEL).astype(np.float32)
DIGEST = canonical.digest(MODEL)
HASHES = canonical.chunk_hashes(MODEL)

assert canonical.chunk_elements(NUMEL) == CHUNK and canonical.num_chunks(NUMEL) == 4

Stream = Callable[[str], list[Frame]]  # the serving account -> the frames it sends


def _frames(
    chunks: range, vector: npt.NDArray[np.float32], sender: str, *, frame_chunks: int = 128
) -> list[Frame]:
    return list(
        frames_for(
            vector,
            chunks,
            kind=peer_pb2.KIND_MODEL,
            round=ROUND,
            attempt=0,
            segment=0,
            sender=sender,
            chunk_hashes=HASHES,  # the honest list: it matches the chain's digest
            frame_chunks=frame_chunks,
        )
    )


def chunk_zero_twice(sender: str) -> list[Frame]:
    """The attack seen on main: as many elements as the model, chunk 1 never sent."""
    one = _frames(range(4), MODEL, sender, frame_chunks=1)
    return [one[0], one[0], one[2], one[3]]


def wrong_chunk(sender: str) -> list[Frame]:
    forged = MODEL.copy()
    forged[CHUNK + 5] += 1.0
    return _frames(range(4), forged, sender, frame_chunks=1)


def stops_early(sender: str) -> list[Frame]:
    return _frames(range(4), MODEL, sender, frame_chunks=1)[:-1]


def overlapping(sender: str) -> list[Frame]:
    """Chunks 0-1, then 1-2, then 3: every chunk covered, chunk 1 twice, in the right count
    of frames but one chunk too many."""
    pairs = _frames(range(3), MODEL, sender, frame_chunks=2)
    middle = _frames(range(1, 3), MODEL, sender, frame_chunks=2)
    last = _frames(range(3, 4), MODEL, sender, frame_chunks=1)
    return [pairs[0], middle[0], last[0]]


ATTACKS = [chunk_zero_twice, wrong_chunk, stops_early, overlapping]


class DishonestServer(PeerServer):
    """Serves its model through `stream` instead of every chunk once."""

    stream: Stream = staticmethod(chunk_zero_twice)

    def _model_frames(
        self, round: int, vector: npt.NDArray[np.float32], hashes: bytes
    ) -> Iterator[Frame]:
        return iter(self.stream(self.account))


class Peers:
    """A fetching node, a dishonest server and an honest one, all on one roster."""

    def __init__(self, stream: Stream) -> None:
        self.roster = Roster()
        self.servers: list[PeerServer] = []
        self.bad = self._serve(DishonestServer, stream)
        self.good = self._serve(PeerServer, None)
        account, identity = self._identity()
        self.roster.upsert(PeerRecord(account, "fetcher", identity.cert_der))
        self.transport = GrpcTransport(account, identity.key_pem, identity.cert_pem, self.roster)

    @staticmethod
    def _identity() -> tuple[str, TlsIdentity]:
        account = normalize("0x" + secrets.token_hex(20))
        return account, TlsIdentity.generate(account)

    def _serve(self, kind: type[PeerServer], stream: Stream | None) -> str:
        account, identity = self._identity()
        inbox = Inbox(account)
        inbox.publish_model(ROUND, MODEL, HASHES)
        server = kind(account, identity.key_pem, identity.cert_pem, self.roster, inbox)
        if stream is not None:
            server.stream = stream  # type: ignore[attr-defined]
        self.servers.append(server.start())
        self.roster.upsert(PeerRecord(account, server.endpoint, identity.cert_der))
        return account

    def close(self) -> None:
        self.transport.close()
        for server in self.servers:
            server.stop(0)


@pytest.fixture(params=ATTACKS, ids=[a.__name__ for a in ATTACKS])
def peers(request: pytest.FixtureRequest) -> Iterator[Peers]:
    built = Peers(request.param)
    yield built
    built.close()


def test_a_dishonest_stream_is_refused(peers: Peers) -> None:
    with pytest.raises(InvalidMessage, match=peers.bad):
        peers.transport.fetch_model(peers.bad, ROUND, DIGEST, NUMEL, timeout=10)


def test_catch_up_skips_the_dishonest_peer_and_ends_on_the_chains_digest(
    peers: Peers, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="swarmnode.round"):
        got = catch_up(peers.transport, ROUND, DIGEST, NUMEL, [peers.bad, peers.good], timeout=10)
    # skipped, not merely lucky: np.empty may hand back a freed copy of the same model
    assert f"catch-up of round {ROUND} from {peers.bad} refused" in caplog.text
    assert canonical.digest(got) == DIGEST
    assert got.tobytes() == MODEL.tobytes()


def test_with_only_dishonest_peers_catch_up_names_them(peers: Peers) -> None:
    with pytest.raises(PeerError, match=f"no peer had round {ROUND}.*{peers.bad}"):
        catch_up(peers.transport, ROUND, DIGEST, NUMEL, [peers.bad], timeout=10)


def test_the_honest_stream_still_arrives_in_frames_of_one_chunk() -> None:
    built = Peers(lambda sender: _frames(range(4), MODEL, sender, frame_chunks=1))
    try:
        got = built.transport.fetch_model(built.bad, ROUND, DIGEST, NUMEL, timeout=10)
        assert got.tobytes() == MODEL.tobytes()
    finally:
        built.close()


def test_a_node_whose_digest_lost_keeps_its_model_when_only_dishonest_peers_serve(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Round._fetch_winner with the dishonest peer as the only other participant: the round
    ends lost for this node (logged), instead of a PeerError ending its process."""
    from swarmnode.round import Round

    built = Peers(chunk_zero_twice)
    me = SimpleNamespace(
        me="0x" + "0" * 40,
        transport=built.transport,
        vector=MODEL,
        seconds={"transfer": 0.0},
        params=SimpleNamespace(transfer_deadline=60),  # bounds each fetch
    )
    state = SimpleNamespace(number=ROUND, live_participants=(me.me, built.bad))
    try:
        with caplog.at_level(logging.WARNING, logger="swarmnode.round"):
            got = Round._fetch_winner(cast(Round, me), cast("RoundState", state), DIGEST)
    finally:
        built.close()
    assert got is None
    assert f"no peer had round {ROUND}'s final model" in caplog.text and built.bad in caplog.text


def test_the_daemon_logs_a_model_that_does_not_match_its_digest_and_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The crash seen on main: the checkpoint store refuses a model whose digest is not the
    chain's; the daemon logs that and counts the round, rather than exit."""
    from swarmnode.checkpoint import CheckpointStore
    from swarmnode.daemon import _save_checkpoint
    from swarmnode.round import RoundOutcome, RoundResult

    store = CheckpointStore(tmp_path)
    node = SimpleNamespace(
        syncer=SimpleNamespace(policy=SimpleNamespace(state=SimpleNamespace(to_dict=dict))),
        trainer=SimpleNamespace(batches_done=3),
    )
    wrong = MODEL.copy()
    wrong[CHUNK:] = 0.0
    result = RoundResult(ROUND, 0, RoundOutcome.CAUGHT_UP, (), wrong, DIGEST)
    with caplog.at_level(logging.ERROR, logger="swarmnode.daemon"):
        assert _save_checkpoint(store, cast("SwarmNode", node), result)
    assert f"checkpoint of round {ROUND} not saved" in caplog.text
    assert store.latest() is None


class _PublishesAfterFirstAsk:
    """A transport whose peer publishes the model only once it has been asked for it: the
    winners of a round are often slower to see it final than the node whose digest lost."""

    def __init__(self, inner: GrpcTransport, publish: Callable[[], None]) -> None:
        self.inner, self.publish, self.asked = inner, publish, 0

    def fetch_model(
        self, peer: str, round: int, digest: bytes, numel: int, timeout: float
    ) -> npt.NDArray[np.float32]:
        self.asked += 1
        try:
            return self.inner.fetch_model(peer, round, digest, numel, timeout)
        finally:
            self.publish()


def test_catch_up_asks_again_a_peer_that_has_not_published_the_model_yet() -> None:
    built = Peers(lambda sender: _frames(range(4), MODEL, sender))
    try:
        account, identity = Peers._identity()
        inbox = Inbox(account)  # it holds nothing yet: NOT_FOUND at first
        server = PeerServer(account, identity.key_pem, identity.cert_pem, built.roster, inbox)
        built.servers.append(server.start())
        built.roster.upsert(PeerRecord(account, server.endpoint, identity.cert_der))
        late = _PublishesAfterFirstAsk(
            built.transport, lambda: inbox.publish_model(ROUND, MODEL, HASHES)
        )
        got = catch_up(cast("GrpcTransport", late), ROUND, DIGEST, NUMEL, [account], timeout=10)
        assert late.asked == 2 and got.tobytes() == MODEL.tobytes()
    finally:
        built.close()
