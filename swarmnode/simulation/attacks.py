"""Byzantine nodes, for the simulator's attack scenarios.

Two kinds (docs/simulator.md#attacks; what the protocol does and does not defend:
docs/trust.md#threat-model). A contribution attacker takes part in every round by the
protocol's rules and commits to and sends a poisoned vector; the robust merge rules are what
stand against it. A protocol attacker (`PROTOCOL_ATTACKS`, `ProtocolAttackers`) contributes
its honest update and lies in messages instead, through swarmnode/p2p/byzantine.py's
wrappers; the checked owners, relays and evidence-only votes are what stand against it.
Five contribution attacks:

- ``sign_flip``: sends the last merged model minus ``scale`` x its honest update.
- ``noise``: sends Gaussian noise of ``scale`` standard deviations around the last merged model.
- ``label_flip``: trains on its own rows with every label y replaced by classes - 1 - y, and
  sends the update that training produced. Its vector looks like any other node's update; only
  the data behind it is wrong, so it tests what the rules do with a plausible but harmful peer.
- ``alie``: "a little is enough" (Baruch, Baruch and Goldberg, NeurIPS 2019). The colluders
  send mean - z x std of the updates, coordinate by coordinate: a shift small enough to stay
  inside the spread of honest updates in every coordinate, where coordinate-wise rules cannot
  tell it from an honest vector, but the same way in every coordinate and from every colluder,
  so it adds up. See `Colluders` for where their mean and std come from and `alie_z` for z.
- ``ipm``: inner product manipulation (Xie, Koyejo and Gupta, "Fall of Empires", UAI 2020).
  The colluders send the last merged model minus epsilon x the mean of their honest updates:
  a vector whose inner product with the true update is negative. With a small epsilon
  (``IPM_EPSILON``, 0.1, the paper's choice against Krum) the colluders' identical vectors sit
  close to each other and to every honest one, so distance-based rules pick them; a large
  epsilon (about the node count) drags the mean and coordinate-wise rules backwards. The
  scenario's ``attack_scale`` is epsilon.

Four protocol attacks (the scenario's ``attack_scale`` is the shift, 1.0 by default):

- ``forge_partials``: partial sums no longer exist on the wire, so it forges what numbers it
  still sends: update frames whose values do not match its commitment, and merged data
  shifted for every other participant.
- ``lying_owner``: merges its segments wrongly and consistently (every merged value shifted),
  so its merger data and its checker hashes agree with each other and with nothing else.
- ``false_blame``: sends no merged data and no hashes, and answers ``Info`` naming an honest
  participant (node 0) as the one it waits for.
- ``withhold_one``: sends its update rows to every owner but one honest participant
  (node 0), whichever segments that one owns; serves everything else.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from statistics import NormalDist

import numpy as np
import numpy.typing as npt
import torch

from swarmnode.exceptions import ConfigError
from swarmnode.merge import MergeRule
from swarmnode.p2p.byzantine import Lies, LyingInbox, LyingRule, LyingTransport
from swarmnode.p2p.inbox import Inbox
from swarmnode.p2p.transport import Transport

Vector = npt.NDArray[np.float32]
Attack = Callable[[Vector, Vector], Vector]  # (honest snapshot, last merged model) -> sent

PROTOCOL_ATTACKS = ("forge_partials", "lying_owner", "false_blame", "withhold_one")
"""Attacks that lie in messages, not in the contribution (`ProtocolAttackers`)."""
ATTACKS = ("none", "sign_flip", "noise", "label_flip", "alie", "ipm", *PROTOCOL_ATTACKS)
COLLUDING = ("alie", "ipm")  # attacks whose nodes share their honest updates (`Colluders`)

IPM_EPSILON = 0.1
SCALES = {
    "sign_flip": 4.0,
    "noise": 4.0,
    "ipm": IPM_EPSILON,
    "forge_partials": 1.0,
    "lying_owner": 1.0,
}
"""Each sized attack's scale when the scenario names none (its ``attack_scale``)."""


def attack_scale(attack: str, scale: float | None) -> float:
    """`scale`, or the attack's own default: one number means sign flip's multiple and IPM's
    epsilon, which differ by forty times, so a shared default would fit neither."""
    return SCALES.get(attack, 0.0) if scale is None else scale


def flip_labels(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """y -> classes - 1 - y: every row gets a wrong class (for an odd class count, all but
    the middle class), and the mapping is its own inverse, so nothing about it is random."""
    return (classes - 1) - labels


def trains_on_flipped_labels(attack: str) -> bool:
    return attack == "label_flip"


def alie_z(nodes: int, attackers: int) -> float:
    """The paper's z_max for n nodes of which m collude: s = floor(n/2 + 1) - m honest nodes
    must be won over, and z is the largest shift at which a value is still closer to the mean
    than that many honest values are expected to be: z = Phi^-1((n - s) / n).

    For 2 of 8 this is Phi^-1(5/8) = 0.32. The shift is deliberately small: the attack works by
    passing for honest, not by size. With s <= 0 (colluders are a majority, which a robust
    rule cannot stand anyway) s is taken as 1, so z stays finite."""
    if not 0 < attackers < nodes:
        raise ConfigError(f"alie needs 0 < attackers < nodes, got {attackers} of {nodes}")
    s = max(1, nodes // 2 + 1 - attackers)
    return NormalDist().inv_cdf((nodes - s) / nodes)


class Colluders:
    """The ALIE and IPM colluders' private channel: each puts in its honest update and gets back all
    the colluders' updates of the same round.

    The colluders estimate the honest mean and std from their own honest updates of the
    round, and from nothing else: they do not see the honest nodes' vectors before sending
    theirs (the protocol gives them no way to), but each trains on real data exactly as an
    honest node does, so their updates are honest samples of the same distribution. A round
    is recognised by the last merged model every colluder holds (its SHA-256), so a colluder
    that missed a round never mixes rounds up. The wait for the others is bounded by `wait`
    seconds: a colluder that is late or gone is left out and the others go on with what
    they have (a single colluder alone has std 0 and sends its honest update).

    It is shared memory, so the colluders must run in one process (the in-process engine's
    threads); vectors are combined in member order, never arrival order, so the result does
    not depend on thread timing.
    """

    def __init__(self, members: int, z: float = 0.0, *, wait: float = 30.0) -> None:
        if members < 1:
            raise ConfigError(f"colluders need at least one member, got {members}")
        self.members = members
        self.z = z
        self.wait = wait
        self._cond = threading.Condition()
        self._rounds: OrderedDict[bytes, dict[int, Vector]] = OrderedDict()

    def share(self, member: int, reference: Vector, honest: Vector) -> list[Vector]:
        """Adds `honest` for the round after `reference`; returns every member's update that
        arrived before all were in or the wait ran out, in member order."""
        key = hashlib.sha256(reference.tobytes()).digest()
        deadline = time.monotonic() + self.wait
        with self._cond:
            pool = self._rounds.setdefault(key, {})
            pool[member] = honest
            while len(self._rounds) > 4:  # old rounds: every member has long taken its copy
                self._rounds.popitem(last=False)
            self._cond.notify_all()
            while len(pool) < self.members:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return [pool[m] for m in sorted(pool)]

    def updates(self, member: int, reference: Vector, honest: Vector) -> npt.NDArray[np.float64]:
        """The colluders' honest updates of this round, one row each, in float64."""
        shared = self.share(member, reference, honest)
        return np.stack([v.astype(np.float64) - reference for v in shared])

    def attack(self, member: int) -> Attack:
        """Colluder `member`'s ALIE contribution: reference + mean(updates) - z x std(updates)."""

        def alie(honest: Vector, reference: Vector) -> Vector:
            updates = self.updates(member, reference, honest)
            shifted = updates.mean(axis=0) - self.z * updates.std(axis=0)
            sent: Vector = (reference + shifted).astype(np.float32)
            return sent

        return alie

    def ipm(self, member: int, epsilon: float) -> Attack:
        """Colluder `member`'s IPM contribution: reference - epsilon x mean(updates), the
        honest direction reversed and shrunk (or grown) by epsilon."""

        def ipm(honest: Vector, reference: Vector) -> Vector:
            mean = self.updates(member, reference, honest).mean(axis=0)
            sent: Vector = (reference - epsilon * mean).astype(np.float32)
            return sent

        return ipm


def make_attack(
    name: str,
    *,
    seed: int,
    scale: float | None = None,
    colluders: Colluders | None = None,
    member: int = 0,
) -> Attack | None:
    """One Byzantine node's contribution hook; None where it sends its honest update (no
    attack, `label_flip`, whose harm is in its training data, or a protocol attack, whose
    harm is in its messages). `alie` and `ipm` need the
    `colluders` they belong to and their `member` number there; `scale` None is the
    attack's default (`SCALES`)."""
    if name in ("none", "label_flip", *PROTOCOL_ATTACKS):
        return None
    rng = np.random.default_rng(seed)
    scale = attack_scale(name, scale)
    if name == "sign_flip":

        def flip(honest: Vector, reference: Vector) -> Vector:
            return (reference - scale * (honest - reference)).astype(np.float32)

        return flip
    if name == "noise":

        def noise(honest: Vector, reference: Vector) -> Vector:
            return (reference + scale * rng.standard_normal(len(reference))).astype(np.float32)

        return noise
    if name in COLLUDING:
        if colluders is None:
            raise ConfigError(f"the {name} attack needs its colluders")
        return colluders.attack(member) if name == "alie" else colluders.ipm(member, scale)
    raise ConfigError(f"unknown attack {name!r} (known: {', '.join(ATTACKS)})")


def byzantine_hooks(
    attack: str, nodes: int, byzantine: int, *, seed: int, scale: float | None
) -> list[Attack | None]:
    """The contribution hooks of the last `byzantine` of `nodes` nodes, in node order; ALIE
    and IPM colluders are wired to one shared `Colluders`."""
    colluders = None
    if attack in COLLUDING and byzantine:
        z = alie_z(nodes, byzantine) if attack == "alie" else 0.0
        colluders = Colluders(byzantine, z)
    return [
        make_attack(attack, seed=seed * 1000 + i, scale=scale, colluders=colluders, member=i)
        for i in range(byzantine)
    ]


class ProtocolAttackers:
    """How the last `byzantine` of `nodes` virtual nodes lie in messages for a protocol
    attack (none for any other attack): what the in-process runners build each node's inbox
    (its server side), transport (client side) and merge rule with. An honest node gets
    what it would have had; an attacker gets swarmnode/p2p/byzantine.py's wrappers."""

    def __init__(self, attack: str, nodes: int, byzantine: int, scale: float | None) -> None:
        self.attack = attack
        self.first = nodes - byzantine if attack in PROTOCOL_ATTACKS else nodes
        self.shift = attack_scale(attack, scale)
        self._lies: dict[int, Lies] = {}

    def attacks(self, node: int) -> bool:
        return node >= self.first

    def lies(self, node: int, accounts: Sequence[str]) -> Lies:
        """Attacker `node`'s lies, given every node's account (the honest participant it
        blames or withholds from is node 0)."""
        honest, others = accounts[0], [a for i, a in enumerate(accounts) if i != node]
        if self.attack == "forge_partials":
            return Lies(forge_updates=True, tamper_merged_to=frozenset(others), shift=self.shift)
        if self.attack == "false_blame":
            return Lies(withhold_merged=True, claims_waiting_for=(honest,))
        if self.attack == "withhold_one":
            return Lies(withhold_updates_from=frozenset([honest]))
        return Lies()  # lying_owner lies in its merge rule alone

    def inbox(self, node: int, accounts: Sequence[str]) -> Inbox:
        """Node `node`'s inbox; an attacker's answers Info and FetchUpdate as it lies. Its
        lies are kept for `transport`, which the node is built with after its inbox."""
        if not self.attacks(node):
            return Inbox(accounts[node])
        self._lies[node] = self.lies(node, accounts)
        return LyingInbox(accounts[node], self._lies[node])

    def transport(self, node: int, transport: Transport) -> Transport:
        """Node `node`'s client side: an attacker's lies in what it pushes."""
        lies = self._lies.get(node)
        return transport if lies is None or lies == Lies() else LyingTransport(transport, lies)

    def rule(self, node: int, rule: MergeRule) -> MergeRule:
        """Node `node`'s merge rule: a lying owner's shifts all it merges."""
        if self.attack == "lying_owner" and self.attacks(node):
            return LyingRule(rule, self.shift)
        return rule
