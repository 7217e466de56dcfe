"""simulations/transport_benchmark.py still runs end to end: its peers reach into the Inbox
and the transport (expectations, stream buffers, the gRPC subclasses of the no-TLS case), so
a change there can break it while `--help` keeps working (it did once: the Inbox's
expect_updates and update changed their arguments). One tiny transfer per case; no timing
is asserted (speed is the benchmark's business, docs/architecture.md#transfer-speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "simulations" / "transport_benchmark.py"
CASES = ("tcp", "tls", "grpc-stock", "grpc-mtls", "grpc-plain", "grpc-stock-plain")


def test_every_case_moves_the_payload_and_reports_both_sides(tmp_path: Path) -> None:
    out = tmp_path / "runs.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARK), "--sizes", "1MB", "--reps", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = json.loads(out.read_text())
    assert sorted(run["case"] for run in runs) == sorted(CASES)
    for run in runs:
        assert run["nbytes"] == 1_000_000 and run["seconds"] > 0, run["case"]
        for side in ("sender", "receiver"):
            assert run[side]["peak_kib"] >= run[side]["base_kib"] > 0, (run["case"], side)
    checked = [run for run in runs if run["case"] in ("grpc-mtls", "grpc-plain")]
    for run in checked:  # swarmnode's receiver hashed and checked every frame
        assert run["receiver"]["calls"]["verify"] >= 1 and not run["receiver"]["refused"]
    assert "swarmnode mTLS / stock gRPC bytes mTLS" in done.stdout
