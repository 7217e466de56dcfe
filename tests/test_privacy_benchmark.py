"""simulations/privacy_benchmark.py measures what it says: its main path, run in this
process on the demo's 19 KB model with 4 nodes on the in-memory transport (it counts the
bytes gRPC counts, tests/test_wire_bytes.py), prints a plain and a secure round and their
comparison, with bytes that come from the wire rather than from a formula. No timing is
asserted (the benchmark's own business)."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from rich.console import Console

SCRIPT = Path(__file__).resolve().parents[1] / "simulations" / "privacy_benchmark.py"


@pytest.fixture(scope="module")
def benchmark() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("privacy_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_both_settings_are_measured_on_the_wire(
    benchmark: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--nodes", "4", "--models", "19KB", "--transport", "memory", "--no-warm-up"]
    benchmark.main([*args, "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    rounds = {line["setting"]: line for line in lines if line["kind"] == "round"}
    (comparison,) = (line for line in lines if line["kind"] == "comparison")
    plain, secure = rounds["plain"], rounds["secure"]
    assert (plain["n"], secure["n"], plain["word"], secure["word"]) == (4, 4, 4, 8)
    # plain: the checked protocol's (3n - 4) / n = 2 x the model, plus hashes and framing
    assert 2.0 < plain["sent_median"] < 2.3, plain
    # secure: 8-byte words where the plain round moves float32 rows, plus its own messages
    for key in ("sent_max", "sent_median", "received_max", "received_median"):
        assert plain[key] * 1.3 < secure[key] < plain[key] * 3, (key, plain, secure)
    assert comparison["bytes_ratio"] == pytest.approx(secure["ratio"] / plain["ratio"])
    assert comparison["verdict"] == ("ok" if comparison["bytes_ratio"] <= 2.0 else "OVER")
    # the masked sum decoded to the plain mean within the stated bound, and not by accident
    assert 0 <= comparison["max_difference"] <= comparison["bound"] < 1e-5
    assert comparison["within"] is True

    # the tables print the same rows
    console = Console(width=240, record=True)
    fields = {f for f in benchmark.Row.__dataclass_fields__}
    console.print(
        benchmark.rows_table([benchmark.Row(**{k: r[k] for k in fields}) for r in (plain, secure)])
    )
    kept = {f for f in benchmark.Comparison.__dataclass_fields__}
    console.print(
        benchmark.comparison_table([benchmark.Comparison(**{k: comparison[k] for k in kept})])
    )
    text = console.export_text()
    assert "plain" in text and "secure" in text and f"{comparison['bytes_ratio']:.3f} x" in text


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--nodes", "2"], "at least 3 nodes"),
        (["--models", "3MB"], "bad value"),
        (["--secagg-fraction-bits", "60"], "fraction bits"),
    ],
)
def test_a_bad_setting_is_one_line(benchmark: ModuleType, args: list[str], says: str) -> None:
    with pytest.raises(SystemExit) as exited:
        benchmark.main(args)
    message = str(exited.value)
    assert message.startswith("privacy_benchmark: ") and says in message
    assert "\n" not in message
