"""benchmarks/gpu_check.sh, the script a GPU node runs for issue G: its syntax, and its CPU fallback
end to end (the same steps with small networks and CTs), so that it is ready when a GPU is."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path


SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def test_gpu_check_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_gpu_check_cpu_fallback_runs_every_step(tmp_path: Path) -> None:
    """Every step but the GPU-only ones; the TotalSegmentator loop where the ``parity`` extra is
    installed (CI runs this file again after installing it)."""
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    done = subprocess.run(["bash", str(SCRIPT), "--cpu"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    for name in ("network_fast", "cohort_run_fast", "totalsegmentator_fast", "cpu_stage_threads"):
        assert "error" not in results[name], results[name]
    assert results["network_fast"]["series_per_h"] > 0
    assert set(results["network_fast"]["one_series_segment_s"]) == {"resample", "predict", "restore"}
    assert results["cohort_run_fast"]["done"] == results["settings"]["n"]
    per_series = results["cohort_run_fast"]["per_series"]
    assert len(per_series) == results["settings"]["n"] and min(row["started_s"] for row in per_series) == 0.0
    assert results["cohort_run_fast"]["steady_series_per_h"] is None  # 2 series have no steady state
    assert set(results["cpu_stage_threads"]["all three"]) == {"1_threads", "2_threads"}
    if importlib.util.find_spec("totalsegmentator") is None:
        assert "not installed" in results["totalsegmentator_fast"]["skipped"]
    else:  # the CPU path keeps TotalSegmentator's arithmetic: every voxel equal on identical weights
        assert results["totalsegmentator_fast"]["voxels_equal_to_cohort"] == [1.0]
        assert results["totalsegmentator_fast"]["totalsegmentator_rerun_voxels_equal"] == 1.0
    assert "gpu_check summary" in done.stdout
