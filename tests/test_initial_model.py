"""The initial model comes from the chain, not from every node seeding alike (issue 15 point 3).

`swarmnode deploy --initial-model FILE` records the digest of the model in a state_dict or
safetensors file; a node whose own start differs takes the swarm's initial model from the
file named in node.toml or from a peer, checked against the chain as catch-up checks a final
model, before it trains (docs/canonical-vector.md#initial-model-files). Real in-memory
ledger and transport, real gRPC with mutual TLS on the embedded chain, the real CLI."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from torch import nn

from swarmnode import canonical
from swarmnode.cli import main
from swarmnode.config import NodeConfig
from swarmnode.exceptions import ConfigError
from swarmnode.flower import FlowerNode
from swarmnode.node import OWN_MODEL, SwarmCallback, SwarmNode
from swarmnode.round import RoundSettings
from swarmnode.rules import Rule, SwarmParams, SyncPolicyId
from swarmnode.simulation.local import LocalPeer, grpc_swarm, memory_swarm, run_in_threads
from swarmnode.training import LocalTrainer, example_task


class SmallCnn(nn.Module):
    """Conv (4-D weights), BatchNorm (an integer buffer), Linear: what np.concatenate of the
    parameters cannot flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.conv(x))).flatten(1))


def cnn(seed: int) -> SmallCnn:
    torch.manual_seed(seed)
    return SmallCnn()


def vector(model: nn.Module) -> npt.NDArray[np.float32]:
    return canonical.flatten(model).numpy()


def params_for(initial: nn.Module, n: int, *, join_window: int = 30) -> SwarmParams:
    return SwarmParams(
        min_peers=2,
        max_peers=n,
        join_window=join_window,
        sync_policy=Rule(SyncPolicyId.EVERY_N_BATCHES, (2, 0, 0, 0)),
        initial_model_digest=canonical.digest(vector(initial)),
    )


def hook(model: nn.Module, peer: LocalPeer, **kwargs: object) -> SwarmCallback:
    return SwarmCallback(
        model,
        ledger=peer.ledger,
        transport=peer.transport,
        inbox=peer.inbox,
        num_samples=16,
        settings=RoundSettings(poll=0.01),
        **kwargs,  # type: ignore[arg-type]
    )


def train(model: nn.Module, callback: SwarmCallback, seed: int) -> SwarmCallback:
    """A user's own loop: four batches of made-up digits, a sync every two."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 1, 6, 6, generator=generator)
    y = torch.randint(0, 3, (16,), generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for start in range(0, 16, 4):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[start : start + 4]), y[start : start + 4]).backward()
        optimizer.step()
        callback.on_batch_end()
    return callback


# ------------------------------------------------------------------------------------------
# A list of arrays in canonical order


def test_flatten_arrays_matches_the_state_dicts_vector_for_a_cnn() -> None:
    model = cnn(0)
    model(torch.randn(2, 1, 6, 6))  # BatchNorm's running stats and its integer counter move
    arrays = [t.numpy() for t in model.state_dict().values()]  # what a Flower client returns
    assert {a.ndim for a in arrays} >= {0, 1, 2, 4}  # 4-D conv weight, 0-D num_batches_tracked
    with pytest.raises(ValueError):
        np.concatenate(arrays)  # README (c)'s old recipe
    flat = canonical.flatten_arrays(arrays)
    assert flat.dtype == np.float32 and flat.ndim == 1
    assert np.array_equal(flat, vector(model))
    assert canonical.digest(flat) == canonical.digest(vector(model))


def test_flatten_arrays_reads_any_float_kind_byte_order_and_stride() -> None:
    rng = np.random.default_rng(0)
    conv = rng.standard_normal((4, 2, 3, 3)).astype(np.float64)
    half = rng.standard_normal((5,)).astype(np.float16)
    big_endian = rng.standard_normal((2, 3)).astype(">f4")
    strided = rng.standard_normal((6, 4)).astype(np.float32)[:, ::2]  # not contiguous
    counter = np.array(7, dtype=np.int64)
    flags = np.array([True, False])
    arrays: list[npt.NDArray[Any]] = [conv, counter, half, big_endian, flags, strided]
    expected = np.concatenate(
        [a.astype(np.float32).ravel() for a in (conv, half, big_endian, strided)]
    )
    assert np.array_equal(canonical.flatten_arrays(arrays), expected)
    state = {
        str(i): torch.from_numpy(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("=")))
        for i, a in enumerate(arrays)
    }
    assert np.array_equal(canonical.flatten_arrays(arrays), canonical.flatten(state).numpy())
    with pytest.raises(ConfigError, match="array 1 is"):
        canonical.flatten_arrays([conv, np.array(["a"])])


# ------------------------------------------------------------------------------------------
# Model files


def test_model_files_of_both_kinds_digest_as_the_model(tmp_path: Path) -> None:
    model = cnn(3)
    want = canonical.digest(vector(model))
    torch.save(model.state_dict(), tmp_path / "initial.pt")
    canonical.save_model_file(model, tmp_path / "initial.safetensors")
    assert canonical.model_file_digest(tmp_path / "initial.pt") == want
    assert canonical.model_file_digest(tmp_path / "initial.safetensors") == want
    # safetensors sorts its tensors: without the recorded order the digest cannot be known
    from safetensors.torch import save_file

    save_file(dict(model.state_dict()), str(tmp_path / "plain.safetensors"))
    with pytest.raises(ConfigError, match="does not keep the state_dict's order"):
        canonical.model_file_digest(tmp_path / "plain.safetensors")
    # a node maps such a file onto its own model by name
    loaded = canonical.load_model_file(tmp_path / "plain.safetensors")
    layout = canonical.layout_of(model)
    assert canonical.digest(canonical.vector_for(loaded, layout)) == want


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(sys, "argv", ["swarmnode", *args])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def one_line(capsys: pytest.CaptureFixture[str], needle: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("swarmnode: ") and needle in err[0], err
    return err[0]


def test_deploy_mistakes_about_the_initial_model_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # the model is read before any chain is asked: nothing answers on this port
    deploy = ["deploy", "--rpc", "http://127.0.0.1:1", "--out", str(tmp_path / "d.json")]
    assert run_cli([*deploy, "--initial-model", str(tmp_path / "none.pt")], monkeypatch) == 1
    one_line(capsys, "no such model file")
    (tmp_path / "notes.txt").write_text("not a model\n")
    assert run_cli([*deploy, "--initial-model", str(tmp_path / "notes.txt")], monkeypatch) == 1
    one_line(capsys, "not a state_dict file")
    torch.save({"model": cnn(0).state_dict(), "epoch": 3}, tmp_path / "checkpoint.pt")
    assert run_cli([*deploy, "--initial-model", str(tmp_path / "checkpoint.pt")], monkeypatch) == 1
    one_line(capsys, "save that state_dict alone")
    torch.save(cnn(0).state_dict(), tmp_path / "ok.pt")
    both = [*deploy, "--initial-model", str(tmp_path / "ok.pt"), "--initial-task", "a:b"]
    assert run_cli(both, monkeypatch) == 1
    one_line(capsys, "--initial-task and --initial-model: give one")
    assert not (tmp_path / "d.json").exists()


@pytest.mark.chain
def test_deploy_records_the_digest_of_the_model_file(
    anvil_chain: object,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = anvil_chain.url  # type: ignore[attr-defined]
    model = cnn(5)
    want = "0x" + canonical.digest(vector(model)).hex()
    torch.save(model.state_dict(), tmp_path / "initial.pt")
    canonical.save_model_file(model, tmp_path / "initial.safetensors")
    for name in ("initial.pt", "initial.safetensors"):
        out = tmp_path / f"{name}.json"
        args = ["deploy", "--rpc", url, "--out", str(out), "--initial-model", str(tmp_path / name)]
        assert run_cli(args, monkeypatch) == 0, capsys.readouterr().err
        assert json.loads(out.read_text())["params"]["initial_model_digest"] == want


def test_node_toml_names_the_initial_model_relative_to_its_folder(tmp_path: Path) -> None:
    (tmp_path / "node.toml").write_text(
        '[node]\nidentity_dir = "."\ndeployment = "deployment.json"\ntask = "my.tasks:task"\n'
        'initial_model = "models/initial.pt"\n'
    )
    config = NodeConfig.load(tmp_path / "node.toml")
    assert config.initial_model == tmp_path.resolve() / "models" / "initial.pt"


# ------------------------------------------------------------------------------------------
# A node that starts elsewhere


def test_a_hook_started_from_other_weights_fetches_the_initial_model_and_trains_from_it() -> None:
    initial = cnn(0)
    swarm = memory_swarm(params_for(initial, 3), 3)
    models = [cnn(0), cnn(0), cnn(99)]  # the third user seeded differently
    assert canonical.digest(vector(models[2])) != canonical.digest(vector(initial))
    hooks = [hook(model, peer) for model, peer in zip(models, swarm.peers, strict=True)]
    assert [h.syncer.start.source for h in hooks[:2]] == [OWN_MODEL, OWN_MODEL]
    assert hooks[2].syncer.start.source == f"peer {swarm.peers[0].ledger.account}"
    assert hooks[2].syncer.start.round == 0
    # the fetched weights are in the user's own module, before any training
    assert np.array_equal(vector(models[2]), vector(initial))
    done = run_in_threads(
        [lambda i=i: train(models[i], hooks[i], seed=i) for i in range(3)], timeout=60
    )
    for number in (1, 2):
        assert {h.rounds[number - 1].status for h in done} == {"final"}
        assert len({h.rounds[number - 1].digest for h in done}) == 1
    assert len({canonical.digest(vector(m)) for m in models}) == 1


def test_a_flower_node_over_grpc_takes_the_initial_model_from_a_peer() -> None:
    initial = cnn(0)
    swarm = grpc_swarm(params_for(initial, 2), 2)
    try:
        good = [t.numpy().copy() for t in initial.state_dict().values()]
        other = [t.numpy().copy() for t in cnn(42).state_dict().values()]
        first = FlowerNode(
            Client(good),
            ledger=swarm.peers[0].ledger,
            transport=swarm.peers[0].transport,
            inbox=swarm.peers[0].inbox,
        )
        second = FlowerNode(
            Client(other),
            ledger=swarm.peers[1].ledger,
            transport=swarm.peers[1].transport,
            inbox=swarm.peers[1].inbox,
        )
        assert first.syncer.start.source == OWN_MODEL
        assert second.syncer.start.source == f"peer {swarm.peers[0].ledger.account}"
        assert np.array_equal(canonical.flatten_arrays(second.parameters), vector(initial))
        # the integer buffer keeps the client's own value; the arrays keep their shapes
        assert [a.shape for a in second.parameters] == [a.shape for a in other]
        assert second.parameters[-3] == other[-3]  # num_batches_tracked
    finally:
        swarm.close()


class Client:
    """A Flower NumPyClient in all but name: parameters in, the same parameters out."""

    def __init__(self, parameters: list[npt.NDArray[np.generic]]) -> None:
        self.parameters = parameters

    def get_parameters(self, config: dict[str, object]) -> list[npt.NDArray[np.generic]]:
        return self.parameters

    def fit(
        self, parameters: list[npt.NDArray[np.generic]], config: dict[str, object]
    ) -> tuple[list[npt.NDArray[np.generic]], int, dict[str, object]]:
        return parameters, 1, {}

    def evaluate(
        self, parameters: list[npt.NDArray[np.generic]], config: dict[str, object]
    ) -> tuple[float, int, dict[str, object]]:
        return 0.0, 1, {}


def test_a_peer_serving_a_wrong_initial_model_is_refused_and_the_next_one_asked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    initial = cnn(0)
    swarm = memory_swarm(params_for(initial, 3), 3)
    liar, honest, newcomer = swarm.peers
    wrong = vector(cnn(7))
    liar.inbox.publish_model(0, wrong, canonical.chunk_hashes(wrong))  # served as round 0's
    hook(cnn(0), honest)
    model = cnn(8)
    with caplog.at_level(logging.WARNING, logger="swarmnode.node"):
        started = hook(model, newcomer)
    assert started.syncer.start.source == f"peer {honest.ledger.account}"
    assert np.array_equal(vector(model), vector(initial))
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and liar.ledger.account in refusals[0]


def test_without_a_peer_or_a_file_the_error_says_what_to_do() -> None:
    initial = cnn(0)
    swarm = memory_swarm(params_for(initial, 2, join_window=1), 2)  # the other never starts
    began = time.monotonic()
    with pytest.raises(ConfigError) as raised:
        hook(cnn(1), swarm.peers[0])
    assert time.monotonic() - began < 30  # bounded by the join window, with room for load
    message = str(raised.value)
    assert "no peer served the initial model within the 1 s join window" in message
    for advice in ("--initial-model", 'initial_model = "FILE"', "node.toml", "manual_seed"):
        assert advice in message, message
    assert "NOT_FOUND" in message  # what the peer that was asked said


def test_a_file_named_by_the_node_is_checked_against_the_chain(tmp_path: Path) -> None:
    initial = cnn(0)
    swarm = memory_swarm(params_for(initial, 2, join_window=1), 2)
    canonical.save_model_file(initial, tmp_path / "initial.safetensors")
    torch.save(cnn(5).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="not the model the swarm was deployed with"):
        hook(cnn(1), swarm.peers[0], initial_model=tmp_path / "other.pt")
    model = cnn(1)
    started = hook(model, swarm.peers[0], initial_model=tmp_path / "initial.safetensors")
    assert started.syncer.start.source == f"file {tmp_path / 'initial.safetensors'}"
    assert np.array_equal(vector(model), vector(initial))
    # it now serves the initial model to the next node that starts elsewhere
    assert hook(cnn(2), swarm.peers[1]).syncer.start.source.startswith("peer ")
    # a Flower client's arrays are named 0, 1, ...: the file is matched by position
    swarm = memory_swarm(params_for(initial, 2, join_window=1), 2)
    node = FlowerNode(
        Client([t.numpy().copy() for t in cnn(3).state_dict().values()]),
        ledger=swarm.peers[0].ledger,
        transport=swarm.peers[0].transport,
        inbox=swarm.peers[0].inbox,
        initial_model=tmp_path / "initial.safetensors",
    )
    assert np.array_equal(canonical.flatten_arrays(node.parameters), vector(initial))


def test_a_task_node_started_from_another_init_seed_trains_from_the_fetched_model() -> None:
    tasks = [example_task(seed=20 + i, samples=64) for i in range(2)]
    initial = LocalTrainer(tasks[0], "cpu", 0, init_seed=0).snapshot()
    params = SwarmParams(
        min_peers=2,
        max_peers=2,
        sync_policy=Rule(SyncPolicyId.EVERY_N_BATCHES, (2, 0, 0, 0)),
        initial_model_digest=canonical.digest(initial),
    )
    swarm = memory_swarm(params, 2)
    nodes = [
        SwarmNode(
            ledger=peer.ledger,
            transport=peer.transport,
            inbox=peer.inbox,
            task=task,
            device="cpu",
            init_seed=init_seed,
            settings=RoundSettings(poll=0.01),
        )
        for peer, task, init_seed in zip(swarm.peers, tasks, (0, 1), strict=True)
    ]
    assert nodes[1].syncer.start.source == f"peer {swarm.peers[0].ledger.account}"
    assert np.array_equal(nodes[1].trainer.snapshot(), initial)
    rounds = run_in_threads([node.step for node in nodes], timeout=60)
    assert {r.result.status for r in rounds} == {"final"}
    assert len({node.trainer.snapshot().tobytes() for node in nodes}) == 1


def test_a_node_that_starts_elsewhere_after_a_final_round_takes_that_rounds_model() -> None:
    initial = cnn(0)
    params = SwarmParams(
        min_peers=2,
        max_peers=2,  # the first two close every round; the third comes later
        sync_policy=Rule(SyncPolicyId.EVERY_N_BATCHES, (2, 0, 0, 0)),
        initial_model_digest=canonical.digest(vector(initial)),
    )
    swarm = memory_swarm(params, 3)
    models = [cnn(0), cnn(0)]
    hooks = [hook(model, peer) for model, peer in zip(models, swarm.peers[:2], strict=True)]
    run_in_threads([lambda i=i: hooks[i].on_train_end() for i in range(2)], timeout=60)
    number, digest = swarm.peers[0].ledger.latest_model()
    assert number == 1
    late = cnn(77)
    started = hook(late, swarm.peers[2])
    assert started.syncer.start.round == 1 and started.syncer.start.source.startswith("peer ")
    assert canonical.digest(vector(late)) == digest
