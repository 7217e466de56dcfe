"""The README walk-through as a new user meets it (issue 15 point 5): node.toml refuses what
it would ignore, `init` gives each node its own slice, and three `swarmnode run` processes,
started from a folder outside the checkout, train on different data, show each round's loss
and metrics, agree on every round (a late report included) and stop cleanly at INFO."""

from __future__ import annotations

from pathlib import Path

import pytest

from swarmnode.config import NodeConfig
from swarmnode.exceptions import ConfigError

NODE = (
    '[node]\nidentity_dir = "."\ndeployment = "../deployment.json"\n'
    'task = "swarmnode.training:example_task"\n'
)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("rounds = 3\n" + NODE, "rounds"),  # above [node]: read by no one before
        (NODE + "[task_args]\nnode = 1\n", "task_args"),  # a table beside [node], not in it
    ],
)
def test_node_toml_refuses_a_key_outside_node(tmp_path: Path, text: str, named: str) -> None:
    config = tmp_path / "node.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        NodeConfig.load(config)
    message = str(caught.value)
    assert str(config) in message and named in message and "[node]" in message
    assert "\n" not in message


def test_node_toml_refuses_an_unknown_key_inside_node(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(NODE + "roundz = 3\n")
    with pytest.raises(ConfigError, match="roundz"):
        NodeConfig.load(config)
