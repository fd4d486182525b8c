"""With ``PREFECT_API_URL`` set, the run is recorded on the Prefect server: the flow run (named
after the run id), its write-batch task runs, per-series failures as logs and an artifact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testkit import cohort_cli, write_manifest

pytestmark = pytest.mark.prefect_server


def test_flow_run_task_runs_and_failures_are_recorded(tmp_path: Path, examples: Path, prefect_server: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    rows = [{"series_id": f"nii{i}", "path": str(examples / "example_ct_sm.nii.gz"), "age": 40, "sex": "M",
             "labels": str(examples / "example_seg_fast.nii.gz")} for i in range(3)]
    rows.append({"series_id": "broken", "path": str(tmp_path / "missing.nii.gz"), "age": 50, "sex": "F",
                 "labels": str(examples / "example_seg_fast.nii.gz")})
    manifest = write_manifest(tmp_path / "scans.csv", rows)
    config = tmp_path / "run.yaml"
    config.write_text("execution:\n  batch_size: 2\n")
    out = tmp_path / "results"
    # -v: the CLI otherwise sets PREFECT_LOGGING_LEVEL=ERROR, which also keeps warnings off the server
    result = cohort_cli("-v", "run", "--manifest", str(manifest), "--out", str(out), "--config", str(config),
                        "--workers", "1", api=prefect_server)
    assert result.returncode == 1, result.stderr
    (record,) = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]

    with temporary_settings({PREFECT_API_URL: prefect_server}), get_client(sync_client=True) as client:
        by_name = FlowRunFilter(name=FlowRunFilterName(any_=[record["run_id"]]))
        (flow_run,) = client.read_flow_runs(flow_run_filter=by_name)
        assert flow_run.state.is_completed()
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run.id]}))
        assert len(task_runs) >= 2 and all(t.name.startswith("write-batch") for t in task_runs)
        assert all(t.state.is_completed() for t in task_runs)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))
        failures = [log.message for log in logs if "series failed" in log.message]
        assert failures == ["series failed: line 5 (broken): <path of line 5>: file not found"]  # no input path
        assert any("Dask dashboard: http://" in log.message for log in logs)
        artifacts = client.read_artifacts()
        assert any(a.key == "failed-series" and a.flow_run_id == flow_run.id for a in artifacts)
