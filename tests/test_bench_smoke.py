"""The benchmark runs: one tiny run of `python -m tests.bench` (both packages), its JSON complete.

Not a timed assertion: the numbers only have to be there and positive.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests import bench

TOP = Path(__file__).resolve().parent.parent
SIZE = 100


@pytest.mark.root
def test_bench_smoke_run_writes_every_measurement(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "tests.bench", "--sizes", str(SIZE), "--runs", "1", "--json", str(out),
         "--workdir", str(work)],
        cwd=TOP, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"
    report = json.loads(out.read_text())

    assert sorted(report["results"]) == sorted(bench.DEFAULT_PACKAGES)
    for package in bench.DEFAULT_PACKAGES:
        result = report["results"][package][str(SIZE)]
        assert len(result["runs"]) == 1
        for key in (*bench.MEASURED_KEYS, *bench.EXTRA_KEYS):
            for where in (result["runs"][0], result["median"]):
                value = where[key]
                assert isinstance(value, float) and math.isfinite(value) and value > 0, (package, key, value)
        for key in bench.MEASURED_KEYS:
            assert result["vs_smallest"][key] == pytest.approx(1.0), (package, key)
        for key in bench.RATIO_KEYS:
            value = result["ratios"][key]
            assert math.isfinite(value) and value > 0, (package, key, value)

    m = report["machine"]
    assert m["kernel"] and m["cpu_model"] and m["date"]
    assert isinstance(m["nproc"], int) and m["nproc"] > 0
    assert len(report["targets"]) == 2 * len(bench.DEFAULT_PACKAGES) + 1
    assert all(t["met"] in (True, False, None) and t["detail"] for t in report["targets"])
    assert report["config"]["cache"] == bench.CACHE_METHOD
    # The table went to stdout; the clones are gone.
    assert "install --live" in proc.stdout and "usable" in proc.stdout and "targets" in proc.stdout
    assert list(work.iterdir()) == []
