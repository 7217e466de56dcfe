"""The fast engine: every virtual node's model trained in one batched computation.

Full fidelity runs a real SwarmNode per virtual node; here the n models are one stack of
tensors (the first dimension is the node), trained together with torch.func.functional_call
under vmap, so a step of a thousand nodes is a handful of batched matrix products instead of a
thousand Python loops (docs/simulator.md#the-fast-engine). What a node does between syncs is
full fidelity's, step for step, so that the merged models match (tests/test_fast_engine.py):

- its own slice and its label-flipped labels when it is a label_flip attacker (tasks.py);
- its own batch order: epoch e of node i is torch.randperm under the seed LocalTrainer uses
  for (seed * 1000 + i, e), the last batch of an epoch short, epochs running on across rounds;
- SGD with momentum 0.9 and the scenario's learning rate, its buffer kept across rounds as
  LocalTrainer keeps it. A node that trains no batch in a step (it sat the round out) gets no
  update at all: its parameters and momentum stay as they were. Masking its gradient to zero
  would not do, since momentum alone still moves a parameter.

A round then merges the canonical vectors of the nodes taking part, in node order (the
contract's join order in the simulator), weighted by their row counts, segment by segment as
the all-reduce cuts them (canonical.segments), with the scenario's rule from swarmnode.merge
and the last merged model as reference; Byzantine nodes send their attack's vector (attacks.py,
the same hooks); every participant loads the result. Dropout comes from the same FaultPlan,
and a node back from sitting out starts from the last merged model, as catch-up gives it.
What it leaves out is everything between the nodes: chain, messages, checks, faults of the
network. A runner (docs/simulator.md#layers), beside engine.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.nn import functional

from swarmnode import canonical, ownership
from swarmnode.distributed_dp import DistributedDP
from swarmnode.exceptions import ConfigError
from swarmnode.merge import Mean, Median, MergeRule, TrimmedMean, make_rule
from swarmnode.privacy import BudgetSpent
from swarmnode.records import NodeRoundRecord
from swarmnode.secagg.errors import UpdateOutOfBound
from swarmnode.secagg.fixedpoint import FixedPoint
from swarmnode.simulation.attacks import (
    COLLUDING,
    Attack,
    byzantine_hooks,
    flip_labels,
    trains_on_flipped_labels,
)
from swarmnode.simulation.data import Dataset
from swarmnode.simulation.faults import FaultPlan
from swarmnode.simulation.local import run_in_threads
from swarmnode.simulation.results import Curve, RoundRecord, SwarmRun
from swarmnode.simulation.scenario import Scenario
from swarmnode.simulation.tasks import make_task
from swarmnode.sync import loss_to_int, make_policy
from swarmnode.training import LocalTrainer, _mix, pick_device

MOMENTUM = 0.9  # tasks._mlp_task's optimizer: SGD(lr, momentum=0.9)
_EVAL_ELEMENTS = 1 << 24  # hidden activations one evaluation chunk may hold


@dataclass
class Stack:
    """n models of one architecture as stacked tensors, and their momentum buffers."""

    model: nn.Module  # the architecture (its own weights unused)
    layout: canonical.Layout
    params: dict[str, torch.Tensor]  # name -> (n, *shape)
    momentum: dict[str, torch.Tensor]

    @classmethod
    def of(cls, model: nn.Module, n: int, device: torch.device) -> Stack:
        """n copies of `model`'s weights: what torch.func.stack_module_state gives for n
        identical modules, without building n modules."""
        if any(True for _ in model.buffers()):
            raise ConfigError("the fast engine trains models without buffers (no BatchNorm)")
        params = {
            name: p.detach().to(device).unsqueeze(0).repeat(n, *([1] * p.dim()))
            for name, p in model.named_parameters()
        }
        momentum = {name: torch.zeros_like(p) for name, p in params.items()}
        return cls(model.to(device), canonical.layout_of(model), params, momentum)

    def vectors(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The canonical vectors of the nodes in `rows` (all by default), (k, numel) float32
        on the CPU, in the layout's order."""
        count = len(next(iter(self.params.values()))) if rows is None else len(rows)
        out = torch.empty((count, self.layout.numel), dtype=torch.float32)
        for entry in self.layout.entries:
            value = self.params[entry.name] if rows is None else self.params[entry.name][rows]
            out[:, entry.offset : entry.stop].copy_(value.reshape(count, -1))
        return out

    def load(self, rows: torch.Tensor, vector: torch.Tensor) -> None:
        """Writes one canonical vector into the models of the nodes in `rows`."""
        for entry in self.layout.entries:
            param = self.params[entry.name]
            value = vector[entry.offset : entry.stop].to(param.device).view(entry.shape)
            param[rows] = value


class Orders:
    """Each node's batches in LocalTrainer's order: epoch e of node i shuffled by the
    generator seeded with (seeds[i], e), epochs going on across rounds."""

    def __init__(self, sizes: list[int], seeds: list[int], batch_size: int) -> None:
        self.sizes = sizes
        self.seeds = seeds
        self.batch_size = batch_size
        self.epoch = [0] * len(sizes)
        self.position = [0] * len(sizes)  # next batch of the epoch
        self._order: list[npt.NDArray[np.int64] | None] = [None] * len(sizes)

    def next(self, i: int) -> npt.NDArray[np.int64]:
        """Node i's next batch: indices into its own rows."""
        order = self._order[i]
        if order is None:
            generator = torch.Generator().manual_seed(_mix(self.seeds[i], self.epoch[i]))
            order = torch.randperm(self.sizes[i], generator=generator).numpy()
            self._order[i] = order
        start = self.position[i] * self.batch_size
        batch = order[start : start + self.batch_size]
        self.position[i] += 1
        if start + self.batch_size >= self.sizes[i]:  # the epoch's last batch
            self.epoch[i] += 1
            self.position[i] = 0
            self._order[i] = None
        return batch


class Swarm:
    """The n virtual nodes: their stacked models, rows, batch orders and optimizer."""

    def __init__(
        self,
        scenario: Scenario,
        data: Dataset,
        parts: list[npt.NDArray[np.int64]],
        ids: list[int] | None = None,
        total: int | None = None,
    ):
        """`ids` (ascending) and `total` make this a shard of a larger swarm: node ids[k] of
        `total` owns parts[k], and its seed and attacker role are that node's."""
        self.scenario = scenario
        self.device = pick_device(None)
        n = len(parts)
        ids = list(range(n)) if ids is None else ids
        total = n if total is None else total
        # one trainer builds the initial model, as every node's does (same init_seed)
        initial = LocalTrainer(
            make_task(scenario, data, parts[0]), "cpu", 0, init_seed=scenario.seed
        )
        self.stack = Stack.of(initial.model, n, self.device)
        self.parts = parts  # each node's rows of data.x_train
        self.sizes = [len(p) for p in parts]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        chosen = torch.as_tensor(np.concatenate(parts), dtype=torch.long)
        labels = data.y_train[chosen].clone()
        honest = sum(1 for i in ids if i < total - scenario.byzantine)
        if trains_on_flipped_labels(scenario.attack) and honest < n:
            first = int(self.offsets[honest])
            labels[first:] = flip_labels(labels[first:], data.classes)
        self.x = data.x_train[chosen].to(self.device)
        self.y = labels.to(self.device)
        self.orders = Orders(
            self.sizes, [scenario.seed * 1000 + i for i in ids], scenario.batch_size
        )
        self._forward = vmap(self._outputs)

    def _outputs(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = functional_call(self.stack.model, params, (x,))
        return out

    def _gradients(
        self, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Every node's gradient of its own batch loss: one backward through the sum of the
        nodes' losses, in which node k's parameters reach node k's loss alone (measured
        equal to vmap(grad(...)) and twice as fast on the CPU)."""
        names = list(self.stack.params)
        leaves = [self.stack.params[k].detach().requires_grad_(True) for k in names]
        out = self._forward(dict(zip(names, leaves, strict=True)), x)
        losses = functional.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none")
        total = (losses.view_as(w) * w).sum()
        grads = torch.autograd.grad(total, leaves)
        return dict(zip(names, grads, strict=True))

    def _loss(
        self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, w: torch.Tensor
    ) -> torch.Tensor:
        """One node's batch loss: the mean over its real rows (w is 1/rows there, 0 on padding),
        so its gradient is CrossEntropyLoss's for the unpadded batch."""
        out = functional_call(self.stack.model, params, (x,))
        return (functional.cross_entropy(out, y, reduction="none") * w).sum()

    def train(self, active: list[int], batches: int) -> None:
        """`batches` SGD steps for every node in `active`; the others do not move."""
        mask = torch.zeros(len(self.sizes), dtype=torch.bool)
        mask[active] = True
        everyone = bool(mask.all())
        mask = mask.to(self.device)
        for _ in range(batches):
            index, weight = self._batch(active)
            grads = self._gradients(self.x[index], self.y[index], weight)
            self._step(grads, None if everyone else mask)

    def _batch(self, active: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Every node's next batch as rows of self.x, (n, batch_size), padded with row 0 at
        weight 0; a node not in `active` is all padding and its order does not move."""
        size = self.scenario.batch_size
        index = np.zeros((len(self.sizes), size), dtype=np.int64)
        weight = np.zeros((len(self.sizes), size), dtype=np.float32)
        for i in active:
            batch = self.orders.next(i)
            index[i, : len(batch)] = batch + self.offsets[i]
            weight[i, : len(batch)] = np.float32(1.0) / np.float32(len(batch))
        return torch.from_numpy(index).to(self.device), torch.from_numpy(weight).to(self.device)

    def _step(self, grads: dict[str, torch.Tensor], mask: torch.Tensor | None) -> None:
        """torch.optim.SGD's update (buf = momentum * buf + grad; p -= lr * buf) on every
        node at once; with `mask`, the nodes outside it keep parameters and buffer."""
        lr = self.scenario.learning_rate
        for name, grad in grads.items():
            param, buf = self.stack.params[name], self.stack.momentum[name]
            stepped = buf.mul(MOMENTUM).add_(grad)
            moved = param.add(stepped, alpha=-lr)
            if mask is not None:
                keep = mask.view(-1, *([1] * (param.dim() - 1)))
                stepped = torch.where(keep, stepped, buf)
                moved = torch.where(keep, moved, param)
            self.stack.momentum[name], self.stack.params[name] = stepped, moved

    def state(self, nodes: list[int]) -> ShardState:
        """What the nodes in `nodes` carry into their next round, on the CPU."""
        rows = torch.as_tensor(nodes, device=self.device)
        return ShardState(
            {k: v[rows].cpu() for k, v in self.stack.params.items()},
            {k: v[rows].cpu() for k, v in self.stack.momentum.items()},
            [self.orders.epoch[i] for i in nodes],
            [self.orders.position[i] for i in nodes],
        )

    def restore(self, nodes: list[int], state: ShardState) -> None:
        """Puts back what state() gave for `nodes`; an epoch's order is drawn again from its
        seed, so the epoch and the position within it are all of it that travels."""
        rows = torch.as_tensor(nodes, device=self.device)
        for k, v in state.params.items():
            self.stack.params[k][rows] = v.to(self.device)
        for k, v in state.momentum.items():
            self.stack.momentum[k][rows] = v.to(self.device)
        for i, epoch, position in zip(nodes, state.epoch, state.position, strict=True):
            self.orders.epoch[i], self.orders.position[i] = epoch, position
            self.orders._order[i] = None

    def own_losses(self, nodes: list[int]) -> list[float]:
        """Each node's mean loss on its own rows (what it joins a round with), in chunks of
        nodes small enough for memory."""
        out: list[float] = []
        if not nodes:
            return out
        largest = max(self.sizes[i] for i in nodes)
        hidden = max(p.shape[1] for p in self.stack.params.values() if p.dim() == 3)
        chunk = max(1, _EVAL_ELEMENTS // (largest * hidden))
        for start in range(0, len(nodes), chunk):
            group = nodes[start : start + chunk]
            rows = np.zeros((len(group), largest), dtype=np.int64)
            weight = np.zeros((len(group), largest), dtype=np.float32)
            for k, i in enumerate(group):
                rows[k, : self.sizes[i]] = np.arange(self.sizes[i]) + self.offsets[i]
                weight[k, : self.sizes[i]] = 1.0 / self.sizes[i]
            index = torch.from_numpy(rows).to(self.device)
            params = {
                k: v[torch.as_tensor(group, device=self.device)]
                for k, v in self.stack.params.items()
            }
            with torch.no_grad():
                losses = vmap(self._loss)(
                    params, self.x[index], self.y[index], torch.from_numpy(weight).to(self.device)
                )
            out.extend(float(v) for v in losses.cpu())
        return out


@dataclass
class ShardState:
    """A shard's nodes between rounds: stacked weights and momentum, and where each node
    is in its batch order (docs/simulator.md#ray)."""

    params: dict[str, torch.Tensor]  # name -> (shard's nodes, *shape)
    momentum: dict[str, torch.Tensor]
    epoch: list[int]
    position: list[int]


def train_shard(
    scenario: Scenario,
    data: Dataset,
    parts: list[npt.NDArray[np.int64]],
    ids: list[int],
    total: int,
    state: ShardState,
    active: list[int],
    batches: int,
) -> tuple[ShardState, list[float]]:
    """One round's training of a shard: nodes `ids` of `total` (owning `parts`), from
    `state`, `batches` steps for those of them in `active`; their new state and, for those
    that trained, their own losses in id order. What FastRounds does for the whole swarm,
    so that shards trained apart merge to the same model (ray_shards.py)."""
    swarm = Swarm(scenario, data, parts, ids, total)
    everyone = list(range(len(ids)))
    swarm.restore(everyone, state)
    taking_part = set(active)
    trained = [k for k, i in enumerate(ids) if i in taking_part]
    swarm.train(trained, batches)
    return swarm.state(everyone), swarm.own_losses(trained)


def run_fast(
    scenario: Scenario,
    data: Dataset,
    parts: list[npt.NDArray[np.int64]],
    on_round: Callable[[RoundRecord], None] = lambda record: None,
    rounds: Callable[[Scenario, Swarm, Dataset], FastRounds] | None = None,
) -> SwarmRun:
    """Runs the scenario's rounds on the fast engine; the same SwarmRun as full fidelity's.
    `rounds` builds another FastRounds (ray_shards.py trains in Ray tasks)."""
    swarm = Swarm(scenario, data, parts)
    run = (rounds or FastRounds)(scenario, swarm, data)
    records: list[RoundRecord] = []
    for k in range(1, scenario.rounds + 1):
        try:
            records.append(run.round(k))
        except EveryBudgetSpent:  # as full fidelity's run ends (engine.run_tasks)
            if not records:
                raise ConfigError(
                    f"dp_budget {scenario.dp_budget}: spent before the first round on every "
                    "node (one round would spend more); raise dp_budget or dp_mean_noise"
                ) from None
            break
        on_round(records[-1])
    return SwarmRun.of(records)


class EveryBudgetSpent(Exception):
    """No node may contribute to another round: their distributed DP budgets are spent."""


class FastRounds:
    """The swarm's rounds: train, attack, merge, load, record."""

    def __init__(self, scenario: Scenario, swarm: Swarm, data: Dataset) -> None:
        s, n = scenario, len(swarm.sizes)
        self.scenario = scenario
        self.swarm = swarm
        self.test = (data.x_test.to(swarm.device), data.y_test.to(swarm.device))
        params = s.swarm_params(n, b"")
        self.rule: MergeRule = make_rule(params.merge_rule)
        secure = params.secure_aggregation
        # with secure aggregation the owners decode a masked sum (masked_mean says why its
        # bits are computed here without masks); the modulus is sized for max_peers = n
        self.fixed_point = (
            None
            if secure is None
            else FixedPoint(n, secure.max_weight, float(secure.bound), secure.fraction_bits)
        )
        self.policy = make_policy(params.sync_policy)
        self.plan = FaultPlan(scenario)
        honest: list[Attack | None] = [None] * (n - s.byzantine)
        self.hooks = honest + byzantine_hooks(
            s.attack, n, s.byzantine, seed=s.seed, scale=s.attack_scale
        )
        self.reference = swarm.stack.vectors(torch.tensor([0]))[0]
        self.model_bytes = self.reference.numel() * canonical.ELEMENT_BYTES
        # distributed DP (docs/privacy.md#distributed-dp): each node's clipping, noise and
        # accountant, its noise seeded from the scenario's seed so that runs repeat
        mean = s.mean_privacy()
        self.private = (
            None
            if mean is None
            else [
                DistributedDP.for_swarm(mean, params, seed=(s.seed * 1000 + i) * 2 + 1)
                for i in range(n)
            ]
        )
        self.spent: set[int] = set()  # nodes out of budget: they contribute no more

    def round(self, k: int) -> RoundRecord:
        t0 = time.perf_counter()
        plan = self.plan.round(k)
        self._check_budgets()

        def away(i: int) -> str | None:
            return "budget_spent" if i in self.spent else plan.away(i)

        active = [i for i in range(len(self.swarm.sizes)) if away(i) is None]
        rows = torch.as_tensor(active, device=self.swarm.device)
        returning = sorted(i for i in plan.returning | plan.restarting if i in active)
        if returning:  # catch-up: the last merged model
            self.swarm.stack.load(torch.as_tensor(returning, device=rows.device), self.reference)
        batches = self.policy.interval
        if self.scenario.fresh_optimizer:  # a new SGD each round: no momentum carried over
            momentum = self.swarm.stack.momentum
            self.swarm.stack.momentum = {k: torch.zeros_like(v) for k, v in momentum.items()}
        losses = self.train(active, batches)
        vectors = self.swarm.stack.vectors(rows)
        weights = [self.swarm.sizes[i] for i in active]
        if self.private is not None:  # clipped, noised, and every node of weight 1
            vectors, weights = self._noised(active, vectors), [1] * len(active)
        sent = self._contributions(active, vectors)
        merged = self._merge(sent, weights)
        self.swarm.stack.load(rows, merged)
        self.reference = merged
        self.policy.after_round([loss_to_int(v) for v in losses])
        digest = canonical.digest(merged).hex()
        accuracy, loss = self._score(merged)
        per_node = _node_records(k, len(self.swarm.sizes), active, away, digest, batches, losses)
        if self.private is not None:
            private = self.private
            per_node = [replace(r, epsilon=private[i].epsilon()) for i, r in enumerate(per_node)]
        return RoundRecord(
            round=k,
            participants=len(active),
            seconds=time.perf_counter() - t0,
            bytes_sent_per_node=0.0,  # nothing goes on a wire
            model_bytes=self.model_bytes,
            digest_agreed=True,
            digest=digest,
            transactions=0,
            gas_used=0,
            accuracy=accuracy,
            loss=loss,
            per_node=per_node,
            faults={"sat_out": sorted(plan.sitting_out), "caught_up": returning},
        )

    def _check_budgets(self) -> None:
        """A node whose next contribution would spend past dp_budget stops contributing, as
        a node does (SwarmNode.step); EveryBudgetSpent when none is left."""
        if self.private is None:
            return
        for i, private in enumerate(self.private):
            if i in self.spent:
                continue
            try:
                private.check_budget()
            except BudgetSpent:
                self.spent.add(i)
        if len(self.spent) == len(self.private):
            raise EveryBudgetSpent

    def _noised(self, active: list[int], vectors: torch.Tensor) -> torch.Tensor:
        """Each participant's update clipped and noised around the last merged model."""
        assert self.private is not None
        reference = self.reference.numpy()
        for row, i in enumerate(active):
            sent = self.private[i].contribute(vectors[row].numpy(), reference)
            vectors[row] = torch.from_numpy(sent)
        return vectors

    def train(self, active: list[int], batches: int) -> list[float]:
        """The round's local training of the nodes in `active` (the others do not move);
        their own losses after it, in `active`'s order."""
        self.swarm.train(active, batches)
        return self.swarm.own_losses(active)

    def _contributions(self, active: list[int], vectors: torch.Tensor) -> torch.Tensor:
        """What each participant sends: its vector, or its attack's (the hooks see the
        honest vector and the last merged model, as a node's contribution hook does)."""
        attackers = [(row, i) for row, i in enumerate(active) if self.hooks[i] is not None]
        if not attackers:
            return vectors
        reference = self.reference.numpy()

        def job(row: int, i: int) -> Callable[[], npt.NDArray[np.float32]]:
            hook = self.hooks[i]
            assert hook is not None
            return lambda: hook(vectors[row].numpy().copy(), reference)

        jobs = [job(row, i) for row, i in attackers]
        # colluders wait for each other's honest updates: they must run side by side
        sent = run_in_threads(jobs) if self.scenario.attack in COLLUDING else [j() for j in jobs]
        for (row, _), vector in zip(attackers, sent, strict=True):
            vectors[row] = torch.from_numpy(np.ascontiguousarray(vector, dtype=np.float32))
        return vectors

    def _merge(self, vectors: torch.Tensor, weights: list[int]) -> torch.Tensor:
        """The rule applied segment by segment, as the all-reduce's owners apply it; a
        coordinate-wise rule in one piece, which gives the same bits (merge/coordinate.py)
        without a Python loop over the rows per segment."""
        if self.fixed_point is not None:
            return masked_mean(self.fixed_point, vectors, weights)
        if isinstance(self.rule, Mean | Median | TrimmedMean):
            return self.rule.merge(vectors, list(weights), self.reference).to("cpu", torch.float32)
        numel = vectors.shape[1]
        merged = torch.empty(numel, dtype=torch.float32)
        # the cut the live owners make (ownership.layout: an unchecked swarm's small
        # segments are cut where proofs are short), so robust rules see the same columns
        for chunks in ownership.layout(numel, len(weights), self.scenario.checked_merge):
            span = canonical.element_range(chunks, numel)
            if len(span) == 0:
                continue
            cols = slice(span.start, span.stop)
            part = self.rule.merge_segment(
                vectors[:, cols].contiguous(), list(weights), self.reference[cols].contiguous()
            )
            merged[cols] = part.to("cpu", torch.float32)
        return merged

    def _score(self, vector: torch.Tensor) -> tuple[float, float]:
        """The merged model's accuracy and mean loss on the held-out test set."""
        model = self.swarm.stack.model
        canonical.unflatten_into(vector.to(self.swarm.device), model, self.swarm.stack.layout)
        x, y = self.test
        with torch.no_grad():
            out = model(x)
            loss = functional.cross_entropy(out, y)
            accuracy = (out.argmax(dim=-1) == y).float().mean()
        return float(accuracy), float(loss)


def masked_mean(fp: FixedPoint, vectors: torch.Tensor, weights: list[int]) -> torch.Tensor:
    """The mean a swarm with secure aggregation merges, to the bit: each update encoded in
    fixed point with its weight (capped at max_weight, as Syncer.join_weight caps it), the
    integers summed modulo 2^k, the sum decoded (docs/secure-aggregation.md#fixed-point). The
    pair masks cancel exactly modulo 2^k and the self-masks are removed exactly, so the
    unmasked sum the owners decode is this sum, element by element: the masks cost the fast
    engine nothing to leave out. A value outside the bound is refused in one line, as the
    node's own encoding refuses it."""
    capped = [min(w, fp.max_weight) for w in weights]
    total = np.zeros(vectors.shape[1], dtype=fp.dtype)
    for vector, weight in zip(vectors.numpy(), capped, strict=True):
        try:
            total += fp.encode(weight, vector)  # wraps modulo the word: a multiple of 2^k
        except UpdateOutOfBound as exc:
            raise ConfigError(
                f"secure aggregation: a participant's model cannot be encoded: {exc}; "
                "raise secagg_bound"
            ) from None
    return torch.from_numpy(fp.decode_mean(total, sum(capped), len(capped)))


def _node_records(
    k: int,
    n: int,
    active: list[int],
    away: Callable[[int], str | None],
    digest: str,
    batches: int,
    losses: list[float],
) -> list[NodeRoundRecord]:
    """Each node's record of round k: final for the participants, why not for the rest."""
    loss_of = dict(zip(active, losses, strict=True))
    return [
        NodeRoundRecord(
            round=k,
            status="final",
            digest=digest,
            participants=len(active),
            batches=batches,
            val_loss=loss_of[i],
            node=i,
        )
        if i in loss_of
        else NodeRoundRecord(round=k, status=away(i) or "away", node=i)
        for i in range(n)
    ]


def fast_local_baselines(
    scenario: Scenario, data: Dataset, parts: list[npt.NDArray[np.int64]]
) -> list[Curve]:
    """Each node alone (baselines.local_baselines' curves), trained as one stack: the same
    batches and steps per round, no merge; scored on the test set after each round."""
    swarm = Swarm(scenario, data, parts)
    n = len(parts)
    everyone = list(range(n))
    x, y = data.x_test.to(swarm.device), data.y_test.to(swarm.device)
    points: list[list[float]] = [[] for _ in range(n)]
    hidden = max(p.shape[1] for p in swarm.stack.params.values() if p.dim() == 3)
    chunk = max(1, _EVAL_ELEMENTS // (len(y) * hidden))

    def scores(params: dict[str, torch.Tensor]) -> torch.Tensor:
        out = functional_call(swarm.stack.model, params, (x,))
        hits: torch.Tensor = (out.argmax(dim=-1) == y).float().mean()
        return hits

    for _ in range(scenario.rounds):
        swarm.train(everyone, scenario.local_batches)
        for start in range(0, n, chunk):
            group = {k: v[start : start + chunk] for k, v in swarm.stack.params.items()}
            with torch.no_grad():
                accuracy = vmap(scores)(group).cpu().tolist()
            for offset, value in enumerate(accuracy):
                points[start + offset].append(float(value))
    return [Curve(p) for p in points]
