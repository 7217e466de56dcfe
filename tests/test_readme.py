"""Every Python block of README.md runs as written, each in a fresh process, and prints what
the README says it does. A README example that no longer runs is a bug the first user finds;
this makes it one the test suite finds.

A block meant only as an illustration starts with `# not run: <why>` on its first line; such
blocks must stay few. Every other block must have an entry in CHECKS (its heading and its
position under that heading), so that a new example cannot slip in unchecked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
NOT_RUN = "# not run:"
MAX_NOT_RUN = 2
CHAIN_MARKERS = ("grpc_swarm", "EmbeddedChain", "AnvilChain", "RpcChain")


@dataclass(frozen=True)
class Block:
    heading: str
    index: int  # 1-based, among the Python blocks under the same heading
    line: int  # where the code starts in the README
    code: str

    @property
    def name(self) -> str:
        return f"{self.heading} #{self.index}"

    @property
    def not_run(self) -> bool:
        return self.code.lstrip().startswith(NOT_RUN)


def python_blocks(markdown: str) -> list[Block]:
    """The ```python fences of a markdown text, each named by the heading above it."""
    blocks: list[Block] = []
    counts: dict[str, int] = defaultdict(int)
    heading = "(top)"
    fence: str | None = None  # the language of the fence we are in ("" for a bare one)
    code: list[str] = []
    start = 0
    for number, line in enumerate(markdown.splitlines(), start=1):
        stripped = line.strip()
        if fence is None:
            if stripped.startswith("```"):
                fence, code, start = stripped.removeprefix("```").strip(), [], number + 1
            elif line.startswith("#"):  # outside fences only: `# comment` in bash is no heading
                heading = line.lstrip("#").strip()
        elif stripped == "```":
            if fence == "python":
                counts[heading] += 1
                blocks.append(Block(heading, counts[heading], start, "\n".join(code) + "\n"))
            fence = None
        else:
            code.append(line)
    assert fence is None, f"a ``` fence opened at line {start - 1} is never closed"
    return blocks


# --------------------------------------------------------------------------------------------
# What each runnable block must print


def _rounds(out: str, tail: str) -> dict[int, dict[int, tuple[str, str, float]]]:
    """{round: {node: (status, digest, number)}} from lines 'node I round R S digest D <tail> X'."""
    pattern = re.compile(rf"node (\d+) round (\d+) (\w+) digest ([0-9a-f]{{16}}) {tail} ([0-9.]+)")
    rounds: dict[int, dict[int, tuple[str, str, float]]] = defaultdict(dict)
    for match in pattern.finditer(out):
        node, number, status, digest, value = match.groups()
        rounds[int(number)][int(node)] = (status, digest, float(value))
    return dict(rounds)


def check_task_example(out: str) -> None:
    rounds = _rounds(out, "accuracy")
    assert sorted(rounds) == [1, 2, 3], out
    for nodes in rounds.values():
        assert sorted(nodes) == [0, 1, 2], out
        assert {status for status, _, _ in nodes.values()} == {"final"}, out
        assert len({digest for _, digest, _ in nodes.values()}) == 1, out  # one merged model
    assert len({next(iter(nodes.values()))[1] for nodes in rounds.values()}) == 3, out
    first = sum(v for _, _, v in rounds[1].values()) / 3
    last = sum(v for _, _, v in rounds[3].values()) / 3
    assert last > first and min(v for _, _, v in rounds[3].values()) >= 0.7, out


def check_hook_example(out: str) -> None:
    pattern = re.compile(r"node (\d): rounds \[([^\]]*)\] model ([0-9a-f]{16}) accuracy ([0-9.]+)")
    lines = pattern.findall(out)
    assert [int(node) for node, _, _, _ in lines] == [0, 1, 2], out
    assert {statuses for _, statuses, _, _ in lines} == {"'final', 'final', 'final'"}, out
    assert len({model for _, _, model, _ in lines}) == 1, out  # merged in place, everywhere
    assert min(float(acc) for _, _, _, acc in lines) >= 0.85, out


def check_flower_example(out: str) -> None:
    rounds = _rounds(out, "loss")
    assert sorted(rounds) == [1, 2, 3], out
    for nodes in rounds.values():
        assert sorted(nodes) == [0, 1, 2], out
        assert {status for status, _, _ in nodes.values()} == {"final"}, out
        assert len({digest for _, digest, _ in nodes.values()}) == 1, out
    for node in (0, 1, 2):
        assert rounds[3][node][2] < rounds[1][node][2], out  # each fit starts from a better model


def check_ledger_example(out: str) -> None:
    assert re.fullmatch(r"round 1 open, joined \['0x[0-9a-fA-F]{40}'\]\n", out), out


CHECKS: dict[str, Callable[[str], None]] = {
    "Three ways in, from Python #1": check_task_example,
    "Three ways in, from Python #2": check_hook_example,
    "Three ways in, from Python #3": check_flower_example,
    "Using the ledger from Python #1": check_ledger_example,
}

BLOCKS = python_blocks(README.read_text())
RUNNABLE = [block for block in BLOCKS if not block.not_run]


def _param(block: Block) -> object:
    marks = [pytest.mark.chain] if any(m in block.code for m in CHAIN_MARKERS) else []
    return pytest.param(block, id=block.name, marks=marks)


@pytest.mark.parametrize("block", [_param(block) for block in RUNNABLE])
def test_a_readme_example_runs_and_prints_what_it_says(block: Block, tmp_path: Path) -> None:
    check = CHECKS.get(block.name)
    assert check is not None, (
        f"README.md line {block.line}: no check for {block.name!r}; add one to CHECKS in "
        f"{Path(__file__).name}, or start the block with '{NOT_RUN} <why>'"
    )
    script = tmp_path / "example.py"
    script.write_text(block.code)
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # not the checkout: the example imports the installed package
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, f"README.md line {block.line}:\n{done.stderr}"
    check(done.stdout)


def test_every_check_names_a_block_that_still_exists() -> None:
    assert sorted(CHECKS) == sorted(block.name for block in RUNNABLE)


def test_blocks_not_run_are_few_and_say_why() -> None:
    skipped = [block for block in BLOCKS if block.not_run]
    assert len(skipped) <= MAX_NOT_RUN, [block.name for block in skipped]
    for block in skipped:
        reason = block.code.lstrip().splitlines()[0].removeprefix(NOT_RUN).strip()
        assert reason, f"README.md line {block.line}: say why the block is not run"


def test_blocks_are_found_with_their_heading_and_the_not_run_mark() -> None:
    text = (
        "# Title\n```python\nprint(1)\n```\n## Part\n```bash\n# not a heading\nls\n```\n"
        "```python\n# not run: needs a GPU cluster\nx = 1\n```\n```python\nprint(2)\n```\n"
    )
    blocks = python_blocks(text)
    assert [(b.name, b.line, b.not_run) for b in blocks] == [
        ("Title #1", 3, False),
        ("Part #1", 11, True),
        ("Part #2", 15, False),
    ]
    assert blocks[2].code == "print(2)\n"
