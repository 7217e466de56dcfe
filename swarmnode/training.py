"""The Task interface and the local training loop: what a node does between rounds.

A Task says what to train (a model factory, data, a loss, an optimizer factory, metrics); a
LocalTrainer owns one model and its optimizer on one device and trains it k batches at a time,
so the node can stop exactly when the sync policy says a round is due, contribute a snapshot
(the canonical vector, float32 on the CPU) and load the merged vector back in place.

Determinism is part of the contract, not a nicety: nodes must start from the same initial
model (its digest is on chain), and tests and simulations compare runs bit for bit. So the
initial weights come from ``init_seed`` (torch.manual_seed around the model_factory call), the
shuffle of epoch e from a CPU torch.Generator seeded from (seed, e), and dropout and other
random layers from RNG states the trainer keeps for itself; none of it touches or depends on
the process's global RNG, so two trainers in one process do not disturb each other. On CUDA,
bit-identical reruns additionally need torch.use_deterministic_algorithms (the caller's
choice: it costs speed).

This module runs on the GPU machine (torch 2.11 there): it uses no newer torch API and imports
neither web3, eth_tester, flwr nor pydantic. Merging happens elsewhere (swarmnode.merge).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from contextlib import contextmanager
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from swarmnode import canonical
from swarmnode.exceptions import ConfigError
from swarmnode.privacy import PrivacySettings, PrivateTraining, fix_model, make_private

__all__ = [
    "Data",
    "LocalTrainer",
    "LossFn",
    "Metric",
    "OptimizerFactory",
    "Task",
    "accuracy",
    "example_task",
    "pick_device",
]

Data: TypeAlias = Dataset[Any] | DataLoader[Any]
"""Training or validation data: a map-style Dataset yielding (input, target) pairs, or a
DataLoader yielding (inputs, targets) batches."""
Metric: TypeAlias = Callable[[torch.Tensor, torch.Tensor], float]
"""A metric over one batch: fn(outputs, targets) -> float, averaged over samples by evaluate."""
LossFn: TypeAlias = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OptimizerFactory: TypeAlias = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]

# A TensorDataset up to this size is copied to the device once, so a small task on a GPU does
# not pay a host-to-device copy per batch (which dominates for models this small).
_DEVICE_CACHE_BYTES = 256 * 1024 * 1024
_SEED_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: distinct (seed, epoch) pairs spread out


# --------------------------------------------------------------------------------------------
# Devices


def pick_device(preference: str | torch.device | None = None) -> torch.device:
    """The device to train on: CUDA when present, else the CPU, unless told otherwise.

    ``preference`` is None or "auto" (pick), "cpu", "cuda" or "cuda:N". Asking for CUDA where
    there is none, or for a GPU index that does not exist, is a ConfigError: silently training
    on the CPU instead would make a node hundreds of times slower without saying why.
    """
    if preference is None or (isinstance(preference, str) and preference.strip() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(preference.strip() if isinstance(preference, str) else preference)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {preference!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ConfigError(f"unsupported device {preference!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {preference!r} asked for, but CUDA is not available here")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(f"device {preference!r} asked for, but only {count} GPU(s) are present")
    return device


# --------------------------------------------------------------------------------------------
# Task


class Task:
    """What to train: the model, the data, the loss, the optimizer and the metrics.

    ``model_factory`` builds the model on the CPU (the trainer seeds it and moves it);
    ``optimizer_factory`` receives the parameters after the move (an optimizer built before
    would hold the CPU copies). ``loss_fn`` must average over the batch (torch's default
    reduction): evaluate weights batch losses by batch size. ``metrics`` maps names to
    fn(outputs, targets) -> float, averaged the same way; "loss" is reserved.

    ``train_data`` / ``val_data`` are map-style Datasets of (input, target) pairs, batched by
    the trainer with ``batch_size`` and a seeded shuffle, or DataLoaders, iterated as they are
    (their batch size and shuffling are their own: give them a seeded generator to keep runs
    deterministic). ``drop_last`` drops a short last training batch (BatchNorm cannot train
    on a batch of one).

    ``num_samples`` is the weight the node joins rounds with; by default the length of the
    training data. Give it for data with no length (an IterableDataset behind a DataLoader).
    """

    def __init__(
        self,
        *,
        model_factory: Callable[[], nn.Module],
        train_data: Data,
        loss_fn: LossFn,
        optimizer_factory: OptimizerFactory,
        val_data: Data | None = None,
        batch_size: int = 32,
        metrics: Mapping[str, Metric] | None = None,
        num_samples: int | None = None,
        drop_last: bool = False,
        name: str = "task",
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        metrics = dict(metrics or {})
        if "loss" in metrics:
            raise ConfigError('"loss" is reported by evaluate itself; name the metric otherwise')
        self.model_factory = model_factory
        self.train_data = train_data
        self.val_data = val_data
        self.loss_fn = loss_fn
        self.optimizer_factory = optimizer_factory
        self.batch_size = batch_size
        self.metrics: dict[str, Metric] = metrics
        self.drop_last = drop_last
        self.name = name
        if num_samples is None:
            num_samples = _length(train_data)
            if num_samples is None:
                raise ConfigError("the training data has no length; give num_samples")
        if num_samples < 1:
            raise ConfigError(f"num_samples must be at least 1, got {num_samples}")
        self.num_samples: int = num_samples

    def __repr__(self) -> str:
        return f"Task({self.name!r}, samples={self.num_samples}, batch_size={self.batch_size})"


def _length(data: Data) -> int | None:
    """Samples in a Dataset or behind a DataLoader; None when it has no length."""
    source = data.dataset if isinstance(data, DataLoader) else data
    if isinstance(source, Sized):
        return len(source)
    return None


def accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of samples whose highest-scoring class is the target (classification logits)."""
    if targets.numel() == 0:
        return 0.0
    return float((outputs.argmax(dim=-1) == targets).float().mean().item())


# --------------------------------------------------------------------------------------------
# Batches


class _Batches:
    """One pass over the data, in the order fixed by the trainer's seed, resumable mid-epoch.

    Datasets are batched here rather than through a DataLoader so the order of epoch e depends
    on (seed, e) only: a run stopped after any batch and resumed yields the same batches.
    A TensorDataset is indexed with whole index tensors (no per-sample collate).
    """

    def __init__(
        self,
        data: Data,
        batch_size: int,
        device: torch.device,
        *,
        shuffle: bool,
        seed: int,
        drop_last: bool,
    ) -> None:
        self.loader = data if isinstance(data, DataLoader) else None
        self.dataset: Dataset[Any] | None = None if isinstance(data, DataLoader) else data
        self.tensors: tuple[torch.Tensor, ...] | None = None
        if isinstance(data, TensorDataset):
            tensors = tuple(data.tensors)
            nbytes = sum(t.numel() * t.element_size() for t in tensors)
            if device.type != "cpu" and nbytes <= _DEVICE_CACHE_BYTES:
                tensors = tuple(t.to(device) for t in tensors)
            self.tensors = tensors
        self.batch_size = batch_size
        self.device = device
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last

    def per_epoch(self) -> int | None:
        """Batches in one epoch, when known up front (None for a loader without a length)."""
        if self.loader is not None:
            try:
                return len(self.loader)
            except TypeError:
                return None
        assert self.dataset is not None
        size = _length(self.dataset)
        if size is None:
            return None
        if self.drop_last:
            return size // self.batch_size
        return -(-size // self.batch_size)

    def epoch(self, number: int) -> Iterator[Any]:
        """The batches of epoch ``number``, as the model will see them (on the device)."""
        if self.loader is not None:
            for batch in self.loader:
                yield _to_device(batch, self.device)
            return
        assert self.dataset is not None
        size = _length(self.dataset)
        if size is None:
            raise ConfigError("a Dataset without a length cannot be batched; pass a DataLoader")
        if self.shuffle:
            generator = torch.Generator().manual_seed(_mix(self.seed, number))
            order = torch.randperm(size, generator=generator)
        else:
            order = torch.arange(size)
        stop = size - size % self.batch_size if self.drop_last else size
        for start in range(0, stop, self.batch_size):
            index = order[start : start + self.batch_size]
            if self.tensors is not None:
                on = self.tensors[0].device
                yield tuple(t[index.to(on)] for t in self.tensors)
            else:
                batch = default_collate([self.dataset[int(i)] for i in index])
                yield _to_device(batch, self.device)


def _mix(seed: int, epoch: int) -> int:
    """A 63-bit generator seed for one epoch of one seed (torch seeds are at most 64 bits)."""
    return ((seed * _SEED_MIX) ^ (epoch + 1) * 0xBF58476D1CE4E5B9) % (2**63)


def _to_device(batch: Any, device: torch.device) -> Any:
    """Moves every tensor in a (nested) batch to the device; other values pass through."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(_to_device(item, device) for item in batch))
    if isinstance(batch, tuple | list):
        return type(batch)(_to_device(item, device) for item in batch)
    if isinstance(batch, Mapping):
        return {key: _to_device(value, device) for key, value in batch.items()}
    return batch


def _split(batch: Any) -> tuple[Any, torch.Tensor]:
    """(inputs, targets) from a batch; anything else is a task bug (ConfigError)."""
    if isinstance(batch, tuple | list) and len(batch) == 2:
        inputs, targets = batch
        return inputs, targets
    raise ConfigError("a batch must be an (inputs, targets) pair")


def _batch_size_of(targets: torch.Tensor) -> int:
    return int(targets.shape[0]) if targets.dim() > 0 else 1


# --------------------------------------------------------------------------------------------
# The trainer


class LocalTrainer:
    """One model and its optimizer on one device, trained k batches at a time.

    ``seed`` fixes the shuffle and the RNG of random layers; ``init_seed`` (default: ``seed``)
    fixes the initial weights. Nodes of one swarm pass the same ``init_seed`` (or load the
    swarm's initial vector) and their own ``seed``.

    After ``load`` the optimizer state (momentum, Adam moments and step counts) is KEPT: the
    parameters are overwritten in place, so the optimizer still holds them, and its statistics
    describe the loss landscape near the merged point well enough; resetting them at every
    round would restart Adam's bias correction and give every round a burst of sign-like steps.
    Call ``reset_optimizer`` where a fresh optimizer is wanted.

    With ``privacy`` the trainer runs DP-SGD (swarmnode.privacy, docs/privacy.md): the model
    is fixed for Opacus before its layout is taken, training steps run through Opacus's
    per-sample-gradient wrapper on Poisson batches, and ``privacy`` (a PrivateTraining)
    says the epsilon spent. ``model`` stays the plain module: snapshots, loads and
    evaluation see the plain parameter names.
    """

    def __init__(
        self,
        task: Task,
        device: torch.device | str | None = None,
        seed: int = 0,
        *,
        init_seed: int | None = None,
        privacy: PrivacySettings | None = None,
    ) -> None:
        self.task = task
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        self.seed = seed
        self.init_seed = seed if init_seed is None else init_seed
        with self._forked_rng():
            torch.manual_seed(self.init_seed)
            model = task.model_factory()
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model_factory returned {type(model).__name__}, not an nn.Module")
        if privacy is not None:  # before the layout: every DP node fixes it alike
            model = fix_model(model)
        self.model: nn.Module = model.to(self.device)
        self.model.train()
        self.layout = canonical.layout_of(self.model)
        self.optimizer: torch.optim.Optimizer = task.optimizer_factory(self.model.parameters())
        self.privacy: PrivateTraining | None = None
        self._forward: nn.Module = self.model  # what training runs forward through
        train_data: Data = task.train_data
        if privacy is not None:
            self.privacy = make_private(
                self.model,
                self.optimizer,
                task.train_data,
                privacy,
                batch_size=task.batch_size,
                seed=seed,
            )
            self.optimizer = self.privacy.optimizer
            self._forward = self.privacy.module
            train_data = self.privacy.loader
        with self._forked_rng():
            torch.manual_seed(seed)
            self._rng_states = self._read_rng()
        self._train = _Batches(
            train_data,
            task.batch_size,
            self.device,
            shuffle=True,
            seed=seed,
            drop_last=task.drop_last,
        )
        self._per_epoch = self._train.per_epoch()
        if self._per_epoch == 0:
            raise ConfigError("the training data yields no batches")
        self._epoch_iter: Iterator[Any] | None = None
        self._position = 0
        self._epochs_done = 0
        self._batches_done = 0
        self._last_train_loss: float | None = None

    # ---------------------------------------------------------------------------- counters

    @property
    def epochs_done(self) -> int:
        """Complete passes over the training data so far."""
        return self._epochs_done

    @property
    def batches_done(self) -> int:
        """Training batches so far, over all epochs."""
        return self._batches_done

    @property
    def last_train_loss(self) -> float | None:
        """Mean training loss over the batches of the last ``train_batches`` call."""
        return self._last_train_loss

    @property
    def num_samples(self) -> int:
        """The weight this node joins rounds with."""
        return self.task.num_samples

    # ---------------------------------------------------------------------------- RNG

    @contextmanager
    def _forked_rng(self) -> Iterator[None]:
        """Runs a block with the global RNGs saved and restored around it."""
        devices = list(range(torch.cuda.device_count())) if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            yield

    def _read_rng(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    @contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Runs a block on this trainer's RNG streams (dropout and the like), then saves them."""
        with self._forked_rng():
            cpu, cuda = self._rng_states
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state(cuda, self.device)
            try:
                yield
            finally:
                self._rng_states = self._read_rng()

    # ---------------------------------------------------------------------------- training

    def train_batches(self, k: int, *, max_epochs: int | None = None) -> int:
        """Trains ``k`` batches, going on into new epochs as needed; returns the batches done.

        With ``max_epochs``, stops early at the end of that epoch (the node's "finished its
        epochs" point), so the return value can be below ``k``. The loss is read back once at
        the end, not per batch, so a GPU is not synchronised k times.
        """
        if k < 0:
            raise ConfigError(f"cannot train a negative number of batches ({k})")
        done = 0
        scored = 0  # batches with a loss: an empty Poisson batch (DP) has none
        total: torch.Tensor | None = None
        self.model.train()
        with self._own_rng():
            while done < k:
                if max_epochs is not None and self._epochs_done >= max_epochs:
                    break
                batch = self._next_batch()
                if batch is None:
                    continue  # an epoch just ended; the loop re-checks max_epochs
                loss = self._step(batch)
                self._end_epoch_if_full()
                if loss is not None:
                    total = loss if total is None else total + loss
                    scored += 1
                done += 1
        self._last_train_loss = None if total is None else float(total.item()) / scored
        return done

    def _next_batch(self) -> Any | None:
        """The next training batch, or None when the data ran out (the epoch is counted then).

        Where the epoch's length is known, the epoch is counted as soon as its last batch is
        handed out (``_end_epoch_if_full``), so ``epochs_done`` is exact after every call; a
        loader without a length is only found finished when it runs out.
        """
        if self._epoch_iter is None:
            self._epoch_iter = self._train.epoch(self._epochs_done)
            self._position = 0
        try:
            batch = next(self._epoch_iter)
        except StopIteration:
            self._epoch_iter = None
            if self._position == 0:
                raise ConfigError("the training data yields no batches") from None
            self._epochs_done += 1
            return None
        self._position += 1
        return batch

    def _end_epoch_if_full(self) -> None:
        if self._per_epoch is not None and self._position >= self._per_epoch:
            self._epoch_iter = None
            self._epochs_done += 1

    def _step(self, batch: Any) -> torch.Tensor | None:
        """One optimizer step; its loss, or None for an empty batch (Poisson sampling draws
        them now and then: the DP step still happens, noise and all, and is counted)."""
        inputs, targets = _split(batch)
        self.optimizer.zero_grad(set_to_none=True)
        outputs = self._forward(inputs)
        loss = self.task.loss_fn(outputs, targets)
        torch.autograd.backward(loss)
        self.optimizer.step()
        self._batches_done += 1
        return loss.detach() if _batch_size_of(targets) else None

    def reset_optimizer(self) -> None:
        """A fresh optimizer from the task's factory (drops momentum and moment estimates);
        with DP made private as the first was, its steps counted by the same accountant."""
        optimizer = self.task.optimizer_factory(self.model.parameters())
        if self.privacy is not None:
            optimizer = self.privacy.wrap_optimizer(optimizer)
        self.optimizer = optimizer

    # ---------------------------------------------------------------------------- evaluation

    def evaluate(self, data: Data | None = None) -> dict[str, float]:
        """Mean loss and metrics over ``data`` (default: the task's validation data).

        Runs in eval mode without gradients, in a fixed order, and puts the model back in the
        mode it was in: evaluating changes no weight, buffer or counter, so it can run at any
        point between rounds. Means are weighted by batch size.
        """
        source = self.task.val_data if data is None else data
        if source is None:
            raise ConfigError("the task has no validation data; pass data to evaluate")
        batches = _Batches(
            source, self.task.batch_size, self.device, shuffle=False, seed=0, drop_last=False
        )
        was_training = self.model.training
        self.model.eval()
        count = 0
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        metric_sums = dict.fromkeys(self.task.metrics, 0.0)
        try:
            with torch.no_grad():
                for batch in batches.epoch(0):
                    inputs, targets = _split(batch)
                    outputs = self.model(inputs)
                    n = _batch_size_of(targets)
                    loss_sum += self.task.loss_fn(outputs, targets).double() * n
                    for name, fn in self.task.metrics.items():
                        metric_sums[name] += float(fn(outputs, targets)) * n
                    count += n
        finally:
            self.model.train(was_training)
        if count == 0:
            raise ConfigError("the evaluation data yields no samples")
        result = {"loss": float(loss_sum.item()) / count}
        result.update({name: total / count for name, total in metric_sums.items()})
        return result

    # ---------------------------------------------------------------------------- vectors

    def snapshot(self) -> npt.NDArray[np.float32]:
        """The model's canonical vector: a fresh 1-D float32 array on the CPU.

        What the node commits to and contributes to a round; later training does not change it.
        """
        return canonical.flatten(self.model, self.layout).numpy()

    def load(self, vector: npt.NDArray[np.floating[Any]] | torch.Tensor) -> None:
        """Writes a canonical vector (a merged model) into the model in place.

        Integer buffers (BatchNorm's num_batches_tracked) keep their local values, parameters
        keep their identity, and the optimizer state is kept (see the class docstring). A
        vector of the wrong size or dtype is a ConfigError.
        """
        if isinstance(vector, np.ndarray):
            if vector.ndim != 1 or vector.dtype.kind != "f" or vector.dtype.itemsize != 4:
                raise ConfigError(
                    f"a canonical vector is a 1-D float32 array, got {vector.ndim}-D {vector.dtype}"
                )
            array = np.ascontiguousarray(vector, dtype=np.float32)  # native byte order
            if not array.flags.writeable:
                array = array.copy()  # torch.from_numpy warns on read-only memory
            tensor = torch.from_numpy(array)
        else:
            tensor = vector
        canonical.unflatten_into(tensor, self.model, self.layout)

    def __repr__(self) -> str:
        return (
            f"LocalTrainer({self.task!r}, device={self.device}, seed={self.seed}, "
            f"epochs={self._epochs_done}, batches={self._batches_done})"
        )


# --------------------------------------------------------------------------------------------
# A built-in example task


class _MLP(nn.Module):
    """Two linear layers with an optional BatchNorm between them (to exercise integer buffers)."""

    def __init__(self, features: int, hidden: int, classes: int, batchnorm: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(features, hidden)
        self.norm: nn.Module = nn.BatchNorm1d(hidden) if batchnorm else nn.Identity()
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(torch.relu(self.norm(self.fc1(x))))
        return out


def example_task(
    *,
    seed: int = 0,
    node: int = 0,
    nodes: int = 1,
    samples: int = 512,
    val_samples: int = 256,
    features: int = 16,
    classes: int = 4,
    hidden: int = 32,
    batch_size: int = 32,
    lr: float = 0.05,
    batchnorm: bool = False,
) -> Task:
    """A small, learnable classification task on synthetic data, for tests and demos.

    Points are Gaussian; the label is the argmax of a fixed random linear map, so the classes
    are linearly separable and an MLP learns them in a few hundred batches. The data depend on
    ``seed`` only (a private torch.Generator), so every node and every run can rebuild them;
    nothing is downloaded and scikit-learn is not needed.

    `node` of `nodes` keeps every nodes-th training row from the node-th on: disjoint slices
    of one problem, so that nodes of a swarm train on different data (node.toml's
    `task_args = {node = 1, nodes = 3}`, what `swarmnode init --task-args` writes). The
    validation rows are the same for every node.
    """
    if nodes < 1 or not 0 <= node < nodes:
        raise ConfigError(f"node {node} of {nodes}: need 0 <= node < nodes")
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(features, classes, generator=generator)
    x = torch.randn(samples + val_samples, features, generator=generator)
    y = (x @ weights).argmax(dim=1)
    train = TensorDataset(x[:samples][node::nodes], y[:samples][node::nodes])
    val = TensorDataset(x[samples:], y[samples:])

    def make_model() -> nn.Module:
        return _MLP(features, hidden, classes, batchnorm)

    def make_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=lr, momentum=0.9)

    return Task(
        model_factory=make_model,
        train_data=train,
        val_data=val,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer_factory=make_optimizer,
        batch_size=batch_size,
        metrics={"accuracy": accuracy},
        drop_last=batchnorm,
        name="example-linear",
    )


def import_attribute(spec: str, what: str) -> Any:
    """The object `module:attribute` names; a ConfigError saying `what` it was for if not."""
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{what} {spec}: cannot import {module_name} ({exc})") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigError(f"{what} {spec}: {module_name} has no {attribute}") from None


def load_task(spec: str, args: Mapping[str, Any] | None = None) -> Task:
    """`module:attribute`, a Task or a function that returns one (called with `args`)."""
    value = import_attribute(spec, "task")
    if isinstance(value, Task):
        if args:
            raise ConfigError(f"task {spec}: is a Task, not a function: task_args not allowed")
        task: object = value
    elif callable(value):
        try:
            task = value(**dict(args or {}))
        except TypeError as exc:
            raise ConfigError(f"task {spec}: {exc}") from None
    else:
        task = value
    if not isinstance(task, Task):
        raise ConfigError(f"task {spec}: is a {type(task).__name__}, not a swarmnode Task")
    return task
