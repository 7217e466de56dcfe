"""The local trainer: device choice, learning, bit-identical determinism, the vector round trip
(integer buffers stay local), evaluation without side effects, and the CUDA path.

Only torch and numpy are imported: the gpu-marked test runs on the GPU machine, which has no
web3, eth-tester or flwr.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from swarmnode import canonical
from swarmnode.exceptions import ConfigError
from swarmnode.training import LocalTrainer, Task, accuracy, example_task, pick_device

BATCHES_PER_EPOCH = 512 // 32  # example_task defaults


def norm_of(trainer: LocalTrainer) -> nn.BatchNorm1d:
    norm = trainer.model.norm
    assert isinstance(norm, nn.BatchNorm1d)
    return norm


def first_weight(trainer: LocalTrainer) -> torch.Tensor:
    layer = trainer.model.fc1
    assert isinstance(layer, nn.Linear)
    return layer.weight


def tracked(trainer: LocalTrainer) -> int:
    counter = norm_of(trainer).num_batches_tracked
    assert counter is not None
    return int(counter.item())


# ----------------------------------------------------------------------------- devices


def test_pick_device_defaults_to_what_is_there() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device().type == expected
    assert pick_device("auto").type == expected
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(torch.device("cpu")) == torch.device("cpu")


def test_asking_for_cuda_without_cuda_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for preference in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match="CUDA is not available"):
            pick_device(preference)
    assert pick_device().type == "cpu"


def test_a_missing_gpu_index_and_unknown_devices_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert pick_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match="only 1 GPU"):
        pick_device("cuda:1")
    for bad in ("banana", "mps", "meta"):
        with pytest.raises(ConfigError):
            pick_device(bad)


# ----------------------------------------------------------------------------- learning


def test_training_reduces_the_validation_loss() -> None:
    trainer = LocalTrainer(example_task(), "cpu", seed=1)
    before = trainer.evaluate()
    assert trainer.train_batches(96) == 96
    after = trainer.evaluate()
    assert after["loss"] < 0.5 * before["loss"]
    assert after["accuracy"] > 0.85 > before["accuracy"]
    assert trainer.last_train_loss is not None and trainer.last_train_loss < before["loss"]
    assert trainer.batches_done == 96
    assert trainer.epochs_done == 96 // BATCHES_PER_EPOCH
    assert trainer.num_samples == 512


def test_epochs_are_counted_as_their_last_batch_is_trained() -> None:
    trainer = LocalTrainer(example_task(), "cpu", seed=0)
    trainer.train_batches(BATCHES_PER_EPOCH - 1)
    assert trainer.epochs_done == 0
    trainer.train_batches(1)
    assert trainer.epochs_done == 1
    assert trainer.train_batches(100, max_epochs=2) == BATCHES_PER_EPOCH
    assert trainer.epochs_done == 2
    assert trainer.train_batches(5, max_epochs=2) == 0
    assert trainer.train_batches(0) == 0
    with pytest.raises(ConfigError):
        trainer.train_batches(-1)


# ----------------------------------------------------------------------------- determinism


def test_same_seed_gives_bit_identical_snapshots_even_interleaved() -> None:
    task = example_task(batchnorm=True)
    rng_before = torch.get_rng_state()
    a = LocalTrainer(task, "cpu", seed=7)
    b = LocalTrainer(task, "cpu", seed=7)
    assert np.array_equal(a.snapshot(), b.snapshot())
    for k in (3, 20, 1):  # stop mid-epoch, cross epochs, interleave the two trainers
        a.train_batches(k)
        torch.rand(5)  # the global RNG moving must not matter
        b.train_batches(k)
    assert a.snapshot().tobytes() == b.snapshot().tobytes()
    c = LocalTrainer(task, "cpu", seed=7)
    c.train_batches(24)  # one call for what a and b did in three
    assert c.snapshot().tobytes() == a.snapshot().tobytes()
    other = LocalTrainer(task, "cpu", seed=8)
    other.train_batches(24)
    assert not np.array_equal(other.snapshot(), a.snapshot())
    torch.set_rng_state(rng_before)


def test_trainers_leave_the_global_rng_alone_and_share_an_init_seed() -> None:
    state = torch.get_rng_state()
    a = LocalTrainer(example_task(), "cpu", seed=1, init_seed=42)
    b = LocalTrainer(example_task(), "cpu", seed=2, init_seed=42)
    a.train_batches(4)
    assert torch.equal(torch.get_rng_state(), state)
    assert np.array_equal(
        LocalTrainer(example_task(), "cpu", seed=9, init_seed=42).snapshot(), b.snapshot()
    )


class _DropoutNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(self.drop(torch.relu(self.fc1(x))))
        return out


def test_random_layers_draw_from_the_trainers_own_rng() -> None:
    base = example_task()
    task = Task(
        model_factory=_DropoutNet,
        train_data=base.train_data,
        val_data=base.val_data,
        loss_fn=nn.CrossEntropyLoss(),
        optimizer_factory=lambda params: torch.optim.SGD(params, lr=0.05),
    )
    a = LocalTrainer(task, "cpu", seed=3)
    b = LocalTrainer(task, "cpu", seed=3)
    a.train_batches(5)
    torch.manual_seed(12345)  # a different global stream between the two runs
    b.train_batches(2)
    torch.rand(100)
    b.train_batches(3)
    assert a.snapshot().tobytes() == b.snapshot().tobytes()


class _PlainDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A map-style Dataset that is not a TensorDataset: batched through default_collate."""

    def __init__(self, data: TensorDataset) -> None:
        self.x, self.y = data.tensors

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]


def _with_train_data(task: Task, data: Any, **extra: Any) -> Task:
    return Task(
        model_factory=task.model_factory,
        train_data=data,
        val_data=task.val_data,
        loss_fn=task.loss_fn,
        optimizer_factory=task.optimizer_factory,
        batch_size=task.batch_size,
        metrics=task.metrics,
        **extra,
    )


def test_any_map_style_dataset_gives_the_same_batches_as_a_tensor_dataset() -> None:
    task = example_task()
    assert isinstance(task.train_data, TensorDataset)
    plain = _with_train_data(task, _PlainDataset(task.train_data))
    a = LocalTrainer(task, "cpu", seed=5)
    b = LocalTrainer(plain, "cpu", seed=5)
    a.train_batches(20)
    b.train_batches(20)
    assert a.snapshot().tobytes() == b.snapshot().tobytes()


def test_a_dataloader_is_iterated_as_it_is() -> None:
    task = example_task()
    assert isinstance(task.train_data, TensorDataset)
    loader = DataLoader(
        task.train_data, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    trainer = LocalTrainer(_with_train_data(task, loader), "cpu", seed=0)
    assert trainer.num_samples == 512
    trainer.train_batches(8)
    assert trainer.epochs_done == 1  # 512 / 64 batches per pass
    trainer.train_batches(1)
    assert trainer.evaluate(loader)["loss"] > 0


def test_task_settings_that_cannot_work_are_refused() -> None:
    task = example_task()
    parts: dict[str, Any] = {
        "model_factory": task.model_factory,
        "train_data": task.train_data,
        "loss_fn": task.loss_fn,
        "optimizer_factory": task.optimizer_factory,
    }
    with pytest.raises(ConfigError, match="loss"):
        Task(**parts, metrics={"loss": accuracy})
    with pytest.raises(ConfigError, match="batch_size"):
        Task(**parts, batch_size=0)
    with pytest.raises(ConfigError, match="num_samples"):
        Task(**parts, num_samples=0)
    with pytest.raises(ConfigError, match="validation data"):
        LocalTrainer(Task(**parts), "cpu").evaluate()
    empty = _with_train_data(task, TensorDataset(torch.zeros(0, 16), torch.zeros(0)), num_samples=1)
    with pytest.raises(ConfigError, match="no batches"):
        LocalTrainer(empty, "cpu")


# ----------------------------------------------------------------------------- vectors


def test_snapshot_is_the_canonical_vector_and_load_round_trips_exactly() -> None:
    trainer = LocalTrainer(example_task(batchnorm=True), "cpu", seed=0)
    trainer.train_batches(10)
    vector = trainer.snapshot()
    assert vector.dtype == np.float32 and vector.ndim == 1
    assert vector.size == trainer.layout.numel
    assert canonical.digest(vector) == canonical.digest(canonical.flatten(trainer.model))
    trainer.train_batches(3)
    assert not np.array_equal(trainer.snapshot(), vector)  # a snapshot is a copy
    trainer.load(vector)
    assert trainer.snapshot().tobytes() == vector.tobytes()
    trainer.load(torch.from_numpy(vector))
    assert trainer.snapshot().tobytes() == vector.tobytes()


def test_load_keeps_integer_buffers_parameters_and_optimizer_state() -> None:
    task = example_task(batchnorm=True)
    ahead = LocalTrainer(task, "cpu", seed=1)
    ahead.train_batches(30)
    mine = LocalTrainer(task, "cpu", seed=2)
    mine.train_batches(4)
    weight = first_weight(mine)
    momentum = mine.optimizer.state[weight]["momentum_buffer"].clone()
    assert tracked(mine) == 4 and tracked(ahead) == 30

    mine.load(ahead.snapshot())
    assert tracked(mine) == 4  # integer buffers keep their local value
    assert first_weight(mine) is weight  # written in place: the optimizer still holds it
    assert torch.equal(mine.optimizer.state[weight]["momentum_buffer"], momentum)
    assert mine.snapshot().tobytes() == ahead.snapshot().tobytes()
    mine_var, ahead_var = norm_of(mine).running_var, norm_of(ahead).running_var
    assert mine_var is not None and ahead_var is not None
    assert torch.equal(mine_var, ahead_var)  # a float buffer: merged like the weights
    mine.train_batches(1)
    mine.reset_optimizer()
    assert not mine.optimizer.state


def test_load_takes_read_only_and_big_endian_arrays_and_refuses_wrong_vectors() -> None:
    trainer = LocalTrainer(example_task(), "cpu", seed=0)
    vector = trainer.snapshot() + np.float32(0.5)
    readonly = np.frombuffer(vector.tobytes(), dtype=np.float32)
    assert not readonly.flags.writeable
    trainer.load(readonly)
    assert np.array_equal(trainer.snapshot(), vector)
    trainer.load(vector.astype(">f4"))
    assert np.array_equal(trainer.snapshot(), vector)
    with pytest.raises(ConfigError):
        trainer.load(vector[:-1])
    with pytest.raises(ConfigError):
        trainer.load(vector.astype(np.float64))
    with pytest.raises(ConfigError):
        trainer.load(vector.reshape(1, -1))


def test_evaluate_changes_nothing() -> None:
    trainer = LocalTrainer(example_task(batchnorm=True), "cpu", seed=0)
    trainer.train_batches(12)
    vector, count = trainer.snapshot(), tracked(trainer)
    first = trainer.evaluate()
    assert set(first) == {"loss", "accuracy"}
    assert trainer.evaluate() == first  # no hidden state moved
    assert trainer.snapshot().tobytes() == vector.tobytes()
    assert tracked(trainer) == count
    assert trainer.model.training
    trainer.model.eval()
    trainer.evaluate(trainer.task.train_data)
    assert not trainer.model.training  # the caller's mode is put back, whichever it was


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_cuda_and_loading_a_cpu_vector() -> None:
    task = example_task(batchnorm=True)
    cpu = LocalTrainer(task, "cpu", seed=0)
    gpu = LocalTrainer(task, "cuda", seed=0)
    assert next(gpu.model.parameters()).device.type == "cuda"
    assert cpu.snapshot().tobytes() == gpu.snapshot().tobytes()  # same init on both

    before = gpu.evaluate()
    gpu.train_batches(160)
    after = gpu.evaluate()
    assert after["loss"] < 0.5 * before["loss"] and after["accuracy"] > 0.8
    assert gpu.epochs_done == 160 // BATCHES_PER_EPOCH

    cpu.train_batches(5)
    vector = cpu.snapshot()
    gpu.load(vector)
    assert tracked(gpu) == 160
    snap = gpu.snapshot()
    assert snap.dtype == np.float32 and snap.tobytes() == vector.tobytes()
    assert next(gpu.model.parameters()).device.type == "cuda"
    gpu.load(torch.from_numpy(vector).cuda())
    assert gpu.snapshot().tobytes() == vector.tobytes()
    assert gpu.train_batches(3) == 3  # the optimizer still drives the same cuda parameters
    assert not np.array_equal(gpu.snapshot(), vector)

    again = LocalTrainer(task, "cuda", seed=0)
    twin = LocalTrainer(task, "cuda", seed=0)
    again.train_batches(10)
    twin.train_batches(10)
    # Same shuffle and init; the kernels may still differ in the last bits run to run unless
    # torch.use_deterministic_algorithms is on, so this is close, not bit-identical.
    np.testing.assert_allclose(again.snapshot(), twin.snapshot(), rtol=0, atol=1e-4)
