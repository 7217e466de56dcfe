"""A user's own PyTorch training loop as a real swarm node process (README: "Your own loop as
separate processes"; tests/test_own_loop_processes.py runs it three times against anvil).

    python simulations/own_loop.py hospital-a --node 0 --nodes 3   # one node; b: 1, c: 2
    python simulations/own_loop.py --save-initial initial.pt        # for deploy --initial-model

Everything but the lines marked "swarmnode" is an ordinary loop: a small CNN with BatchNorm
on this node's third of scikit-learn's digits. Started again after a crash, the node goes
on from its last checkpoint: the merged model, the optimizer, the sync policy and the batch
it had reached.
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn

from swarmnode import RoundResult, SwarmCallback  # swarmnode
from swarmnode.canonical import digest, flatten

EPOCHS, BATCH = 3, 32


def make_model() -> nn.Module:
    torch.manual_seed(0)  # every node builds the same initial model, the one deployed
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("node_dir", nargs="?", help="the node folder `swarmnode init` made")
    parser.add_argument("--node", type=int, default=0, help="this node's slice, 0..nodes-1")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--save-initial", metavar="FILE", help="write the initial state_dict")
    args = parser.parse_args()
    if args.save_initial:
        torch.save(make_model().state_dict(), args.save_initial)
        return

    digits = load_digits()
    x = torch.tensor(digits.images / 16, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target)
    xs, ys = x[args.node :: args.nodes], y[args.node :: args.nodes]  # this node's own rows
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    batches = -(-len(xs) // BATCH)  # per epoch

    hook = SwarmCallback.from_node_dir(  # swarmnode: register, serve peers, resume
        args.node_dir, model, num_samples=len(xs), optimizer_state=optimizer
    )
    if hook.resumed is not None:
        print(f"resumed round {hook.resumed.round} at batch {hook.batches_done}", flush=True)
    for step in range(hook.batches_done, EPOCHS * batches):  # swarmnode: go on where it was
        start = step % batches * BATCH
        optimizer.zero_grad()
        loss_fn(model(xs[start : start + BATCH]), ys[start : start + BATCH]).backward()
        optimizer.step()
        report(hook.on_batch_end())  # swarmnode: merges in place when a sync is due
    report(hook.on_train_end())  # swarmnode: one last merge
    hook.close()  # swarmnode

    model.eval()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    print(f"model {digest(flatten(model).numpy()).hex()[:16]} accuracy {accuracy:.2f}")


def report(result: RoundResult | None) -> None:
    """One line per round: what the test and a person read."""
    if result is not None:
        merged = result.digest.hex()[:16] if result.digest else "-"
        print(f"round {result.round} {result.status} digest {merged}", flush=True)


if __name__ == "__main__":
    main()
