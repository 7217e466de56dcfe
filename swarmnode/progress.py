"""Progress bars for `swarmnode run` on an interactive terminal.

Someone watching a node in a terminal wants to see it work: the batches trained toward the
next sync, and the rounds done. Off a terminal (a pipe, a file, a journal) nothing is drawn,
so that the log stays one readable line per event. On a terminal the log lines are printed
through the same rich console, above the bars, so that neither garbles the other.

The bars read the trainer's batch counter when they redraw, from rich's own refresh thread;
training itself never calls into them.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import TYPE_CHECKING, TextIO

from rich.console import Console, RenderableType
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from swarmnode.node import NodeRound, SwarmNode


def round_line(outcome: NodeRound) -> str:
    """A round as the console shows it: how it ended, with how many nodes, and how the node's
    own model scored on its validation data when it synced (its loss, then each metric of
    the Task), so that someone watching a node sees it learn, not only that rounds end."""
    result = outcome.result
    scores = [f"loss {outcome.val_loss:.4f}"]
    scores += [
        f"{name} {value:.4f}" for name, value in outcome.val_metrics.items() if name != "loss"
    ]
    nodes = len(result.participants)
    return (
        f"round {result.round} {result.status}, {nodes} node{'s' if nodes != 1 else ''}: "
        f"val {', '.join(scores)} (local model at the sync, {outcome.batches} batches)"
    )


def for_stream(stream: TextIO | None = None, *, rounds: int = 0) -> NoProgress | BarProgress:
    """Bars on an interactive terminal, plain log lines anywhere else."""
    stream = stream or sys.stderr
    if not stream.isatty():
        return NoProgress(stream)
    return BarProgress(Console(file=stream), rounds=rounds)


class NoProgress:
    """Off a terminal: log lines as they are, and no bars."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def log_handler(self) -> logging.Handler:
        return logging.StreamHandler(self._stream)

    def step(self, node: SwarmNode) -> NodeRound:
        return node.step()

    def outage(self, down: bool) -> None:
        """Nothing to show: the outage's own log lines say it."""

    def stop(self) -> None:
        """Nothing to stop."""


class _ConsoleLines(logging.Handler):
    """Log lines printed through the console that draws the bars, so they land above them."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self._console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._console.print(self.format(record), markup=False, highlight=False)
        except Exception:  # a log line must never take the node down
            self.handleError(record)


class _Bars(Progress):
    """A rich Progress that has its counts updated before each redraw."""

    def __init__(
        self, poll: Callable[[], None], *columns: ProgressColumn, console: Console, auto: bool
    ) -> None:
        self._poll = poll  # set first: the constructor draws once
        super().__init__(*columns, console=console, auto_refresh=auto, refresh_per_second=4)

    def get_renderables(self) -> Iterable[RenderableType]:
        self._poll()
        yield from super().get_renderables()


class BarProgress:
    """Two bars: local training toward the next sync, and rounds (of `rounds`, if bounded)."""

    def __init__(self, console: Console, *, rounds: int = 0, auto_refresh: bool = True) -> None:
        self.console = console
        self._lock = threading.RLock()  # rich's refresh thread reads under it (poll)
        self._rounds_total = rounds
        self._rounds_done = 0
        self._node: SwarmNode | None = None  # None until the first step: nothing to poll
        self._base = 0  # the trainer's batch counter when the current interval began
        self._interval = 0
        self._down = False
        self._started = False
        self._bars = _Bars(
            self.poll,
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[count]}"),
            TimeElapsedColumn(),
            console=console,
            auto=auto_refresh,
        )
        self._training = self._bars.add_task("training", total=None, count="")
        self._rounds = self._bars.add_task(
            "rounds", total=rounds or None, count=self._rounds_text(0, rounds)
        )

    def log_handler(self) -> logging.Handler:
        return _ConsoleLines(self.console)

    def step(self, node: SwarmNode) -> NodeRound:
        """`node.step()` with the bars following it."""
        self.begin_interval(node)
        outcome = node.step()
        self.round_done(outcome)
        return outcome

    def begin_interval(self, node: SwarmNode) -> None:
        """The node starts training toward its next sync."""
        if not self._started:  # outside the lock: a redraw takes it (see poll)
            self._bars.start()
            self._started = True
        with self._lock:
            self._node = node
            self._base = node.trainer.batches_done
            self._interval = node.syncer.policy.interval

    def round_done(self, outcome: NodeRound) -> None:
        result = outcome.result
        with self._lock:
            if result.merged is not None:
                self._rounds_done += 1
            self._bars.update(
                self._rounds,
                completed=self._rounds_done,
                description=f"round {result.round} {result.status} (loss {outcome.val_loss:.4f})",
                count=self._rounds_text(self._rounds_done, self._rounds_total),
            )

    def outage(self, down: bool) -> None:
        """While the chain is down the node trains on, past its sync point: count freely."""
        with self._lock:
            self._down = down
            if self._node is not None:
                self._base = self._node.trainer.batches_done

    def poll(self) -> None:
        """Reads the trainer's counter into the training bar (called before each redraw)."""
        with self._lock:
            node = self._node
            if node is None:
                return
            done = node.trainer.batches_done - self._base
            if self._down:
                self._bars.update(
                    self._training,
                    total=None,
                    completed=done,
                    description="chain down, training on",
                    count=f"{done} batches",
                )
            elif done < self._interval:
                self._bars.update(
                    self._training,
                    total=self._interval,
                    completed=done,
                    description="training",
                    count=f"{done}/{self._interval} batches",
                )
            else:
                self._bars.update(
                    self._training,
                    total=self._interval,
                    completed=self._interval,
                    description="syncing",
                    count=f"{self._interval}/{self._interval} batches",
                )

    def refresh(self) -> None:
        """Redraws now (rich redraws by itself a few times a second)."""
        self._bars.refresh()

    def stop(self) -> None:
        if self._started:  # outside the lock: stopping waits for a redraw that may take it
            self._bars.stop()
            self._started = False

    @staticmethod
    def _rounds_text(done: int, total: int) -> str:
        return f"{done}/{total} rounds" if total else f"{done} rounds"
