"""What the `swarmnode` command lets reach a person's terminal, and how wide it prints.

Two things a user should never have to read around:

- gRPC's C core logs through absl straight to stderr ("Got goaway ... Cancelling all calls"
  when a peer's server shuts down, and the like): news to a gRPC developer, noise to
  everyone else. The core reads GRPC_VERBOSITY once, when grpc is imported, so the command
  sets it before any command runs (nothing in swarmnode/cli imports grpc at the top): off,
  unless `swarmnode --verbose` asks for it or the user set GRPC_VERBOSITY themselves. The
  processes a command starts (the simulator's daemons) inherit the setting.
- rich wraps and cuts at the terminal's width, or at 80 columns when there is none, so a
  table or a help page sent through a pipe lost the end of addresses and defaults. Off a
  terminal, the command prints as wide as the text is: a program or a file reading it gets
  whole lines.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, TextIO

from rich.console import Console

GRPC_VERBOSITY = "GRPC_VERBOSITY"
QUIET = "NONE"  # no C-core line at all, errors included: the Python side reports those
VERBOSE = "INFO"  # what the core prints when left alone (and what GRPC_TRACE adds)

PIPE_WIDTH = 1000  # columns for rich output that no terminal wraps: wider than any line
HELP_WIDTH = 160  # help pages are boxes as wide as the page: wide enough, not absurd
HELP_WIDTH_ENV = "TERMINAL_WIDTH"  # typer reads it when it first formats a help page


_chosen_here = False  # GRPC_VERBOSITY was set by before_commands, not by the user


def before_commands() -> None:
    """Called first by the entry point: gRPC's core quiet, help whole in a pipe."""
    global _chosen_here
    if GRPC_VERBOSITY not in os.environ:
        os.environ[GRPC_VERBOSITY] = QUIET
        _chosen_here = True
    if HELP_WIDTH_ENV not in os.environ and not _is_terminal(sys.stdout):
        os.environ[HELP_WIDTH_ENV] = str(HELP_WIDTH)


def verbose() -> None:
    """`swarmnode --verbose`: gRPC's core logs again (unless the user chose a level)."""
    if _chosen_here or GRPC_VERBOSITY not in os.environ:
        os.environ[GRPC_VERBOSITY] = VERBOSE


def console(*, stderr: bool = False) -> Console:
    """A rich console for stdout (or stderr): the terminal's width on a terminal, else as
    wide as the text, so that nothing piped is wrapped or cut."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if _is_terminal(stream) else PIPE_WIDTH)


def print_json(data: Any) -> None:
    """`--json`: the data on stdout, indented, and nothing else there."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _is_terminal(stream: TextIO | None) -> bool:
    return stream is not None and stream.isatty()
