"""Reading a node's Prometheus metrics page: the text exposition format, samples only.

The dashboard shows a few of a node's numbers (its last final round, validation loss and
metrics, live peers) beside what the chain says. A full parser is not needed for that: each
sample line is `name{labels} value`, comments start with `#`.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    value: float = 0.0


def parse(text: str) -> list[Sample]:
    """The samples of a text exposition page; lines that are not samples are skipped."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        samples.append(Sample(name, dict(_LABEL.findall(labels or "")), number))
    return samples


def scrape(url: str, timeout: float = 2.0) -> list[Sample] | None:
    """The samples at `url`, or None when nothing answered there (the node is down, or
    its metrics are off): the page then says "unreachable" for it."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body: bytes = response.read()
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return parse(body.decode("utf-8", errors="replace"))
