"""The transport's roster follows the chain: late joiners get in, deregistered peers get out,
without restarting anything; and a certificate other than the registered one is refused."""

from __future__ import annotations

import datetime

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from swarmnode import canonical
from swarmnode.exceptions import PeerError
from swarmnode.identity import TlsIdentity
from swarmnode.ledger.contract import ContractLedger
from swarmnode.ledger.embedded import EmbeddedChain
from swarmnode.ledger.memory import InMemoryChain
from swarmnode.membership import RosterFeed
from swarmnode.p2p import peer_pb2
from swarmnode.p2p.errors import Unauthorized
from swarmnode.p2p.frames import frames_for
from swarmnode.p2p.grpc_transport import GrpcTransport, PeerServer
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.roster import PeerRecord, Roster
from swarmnode.rules import SwarmParams

pytestmark = pytest.mark.chain


class ChainNode:
    """A node with a ledger account, a TLS identity, its own roster fed from the chain, a
    server and a client."""

    def __init__(self, chain: EmbeddedChain, ledger: ContractLedger) -> None:
        self.ledger = ledger
        self.account = ledger.account
        self.identity = TlsIdentity.generate(self.account)
        self.feed = RosterFeed(ledger)
        self.inbox = Inbox(self.account)
        self.server = PeerServer(
            self.account,
            self.identity.key_pem,
            self.identity.cert_pem,
            self.feed.roster,
            self.inbox,
        ).start()
        self.transport = GrpcTransport(
            self.account, self.identity.key_pem, self.identity.cert_pem, self.feed.roster
        )

    def register(self) -> None:
        self.ledger.register(self.server.endpoint, self.identity.cert_der)

    def stop(self) -> None:
        self.transport.close()
        self.server.stop(0)


def test_the_roster_follows_registrations_and_deregistrations() -> None:
    chain = EmbeddedChain()
    deployment, _ = chain.deploy(SwarmParams())
    nodes = [ChainNode(chain, chain.ledger(deployment, chain.new_account())) for _ in range(3)]
    a, b, late = nodes
    try:
        a.register()
        b.register()
        for n in nodes:
            n.feed.refresh()
        assert a.transport.info(b.account, timeout=5).account == b.account
        with pytest.raises(Unauthorized):
            a.transport.info(late.account, timeout=5)  # not registered yet

        late.register()
        assert a.feed.refresh() == 1 and late.feed.refresh() >= 1
        assert a.transport.info(late.account, timeout=5).account == late.account

        # b opens a connection to a, then leaves the swarm on chain
        assert b.transport.info(a.account, timeout=5).account == a.account
        vector = np.arange(3 * canonical.CHUNK_ELEMENTS, dtype=np.float32)
        a.inbox.expect_updates(
            1, {0: range(0, 3)}, len(vector), {b.account: canonical.digest(vector)}
        )
        b.ledger.deregister()
        a.feed.refresh()
        frames = list(
            frames_for(
                vector,
                range(0, 3),
                kind=peer_pb2.KIND_UPDATE,
                round=1,
                attempt=1,
                segment=0,
                sender=b.account,
                chunk_hashes=canonical.chunk_hashes(vector),
            )
        )
        with pytest.raises(Unauthorized, match="not on the roster"):
            b.transport.push(a.account, lambda: frames, timeout=5)
        assert a.inbox.update(1, b.account, 0, timeout=0.05) is None
        # a new connection does not get past the TLS handshake any more
        fresh = GrpcTransport(b.account, b.identity.key_pem, b.identity.cert_pem, b.feed.roster)
        with pytest.raises(PeerError, match="UNAVAILABLE"):
            fresh.push(a.account, lambda: frames, timeout=5)
        fresh.close()
    finally:
        for n in nodes:
            n.stop()


def test_a_server_presenting_another_certificate_than_registered_is_refused() -> None:
    roster = Roster()
    real = TlsIdentity.generate("0x" + "11" * 20)
    impostor_identity = TlsIdentity.generate("0x" + "11" * 20)  # same name, other key
    caller = TlsIdentity.generate("0x" + "22" * 20)
    impostor = PeerServer(
        "0x" + "11" * 20,
        impostor_identity.key_pem,
        impostor_identity.cert_pem,
        roster,
        Inbox("0x" + "11" * 20),
    ).start()
    try:
        roster.upsert(PeerRecord("0x" + "11" * 20, impostor.endpoint, real.cert_der))
        roster.upsert(PeerRecord("0x" + "22" * 20, "unused:1", caller.cert_der))
        client = GrpcTransport("0x" + "22" * 20, caller.key_pem, caller.cert_pem, roster)
        with pytest.raises(PeerError, match="UNAVAILABLE"):
            client.info("0x" + "11" * 20, timeout=5)
        client.close()
    finally:
        impostor.stop(0)


def _forged_certificate(names: str, also_carries: str) -> bytes:
    """A self-signed certificate whose DNS SubjectAltName names `names`, with `also_carries`
    in its subject: enough for the contract's byte check by `also_carries`, which looks for
    its account anywhere at the offset it is given."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, also_carries.lower())])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(names.lower())]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def test_a_registered_certificate_that_names_another_account_is_not_a_peer() -> None:
    """Before: the feed put whatever certificate an account registered on the roster, so a
    certificate naming another node stood for the account that registered it. Now a peer's
    certificate must name the registering account (docs/trust.md#the-roster)."""
    chain = InMemoryChain()
    address = chain.deploy(SwarmParams(), chain.new_account())
    victim = chain.ledger(address, chain.new_account())
    forger = chain.ledger(address, chain.new_account())
    victim.register("victim:1", TlsIdentity.generate(victim.account).cert_der)
    forger.register("forger:1", _forged_certificate(victim.account, forger.account))

    feed = RosterFeed(victim)

    assert feed.roster.get(victim.account) is not None
    assert feed.roster.get(forger.account) is None
    assert [r.account for r in victim.active_nodes()] == [victim.account, forger.account]


def test_start_with_waits_until_that_many_are_registered_or_a_stop() -> None:
    """node.toml's start_with: the wait ends when the Nth node registers (read from the
    roster events), and a stop request ends it at once (docs/round-protocol.md#closing)."""
    import threading

    from swarmnode.peer import _wait_for_registrations

    chain = InMemoryChain()
    address = chain.deploy(SwarmParams(), chain.new_account())
    ledgers = [chain.ledger(address, chain.new_account()) for _ in range(3)]
    ledgers[0].register("a:1", TlsIdentity.generate(ledgers[0].account).cert_der)
    feed = RosterFeed(ledgers[0])
    stop = threading.Event()
    waited = threading.Thread(target=_wait_for_registrations, args=(feed, 3, stop), daemon=True)
    waited.start()
    ledgers[1].register("b:1", TlsIdentity.generate(ledgers[1].account).cert_der)
    waited.join(timeout=2.5)  # a couple of refreshes: two of three is not enough
    assert waited.is_alive()
    ledgers[2].register("c:1", TlsIdentity.generate(ledgers[2].account).cert_der)
    waited.join(timeout=60)
    assert not waited.is_alive()
    assert len(feed.roster.records()) == 3

    stopped = threading.Thread(target=_wait_for_registrations, args=(feed, 5, stop), daemon=True)
    stopped.start()
    stop.set()
    stopped.join(timeout=60)
    assert not stopped.is_alive()
