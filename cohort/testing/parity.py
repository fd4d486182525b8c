"""Run TotalSegmentator's own CLI on the same weights and compare label maps voxel by voxel.

Used by the parity test and ``benchmarks/bench_segment.py``; TotalSegmentator is an optional
extra (``pip install "cohort[parity]"``), never a runtime dependency. It runs offline on a
random-weight folder when ``<home>/config.json`` says ``"send_usage_stats": false``.

nnU-Net finds a trainer class by importing every trainer module; its Primus module imports
``timm`` and so ``torchvision``, and the PyPI torchvision wheel (built for CUDA torch) does not
load beside the CPU torch wheel. The CLI is therefore started with a ``sitecustomize`` that
registers that one module as empty; the TotalSegmentator trainers do not live there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cohort.config import ClassMap

SHIM = ('import sys, types\n_name = "nnunetv2.training.nnUNetTrainer.primus.primus_trainers"\n'
        'sys.modules.setdefault(_name, types.ModuleType(_name))\n')


def totalsegmentator_env(home: Path) -> dict[str, str]:
    """Environment for the CLI: ``home`` as TotalSegmentator's home, no telemetry, the shim."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.json").write_text(json.dumps({"send_usage_stats": False}))
    shim = Path(tempfile.mkdtemp(prefix="cohort_ts_shim_"))
    (shim / "sitecustomize.py").write_text(SHIM)
    env = {k: v for k, v in os.environ.items() if k != "TOTALSEG_WEIGHTS_PATH"}
    env.update(TOTALSEG_HOME_DIR=str(home), PYTHONPATH=os.pathsep.join(filter(None, [str(shim), env.get("PYTHONPATH")])))
    return env


def run_totalsegmentator(ct: Path, out: Path, env: dict[str, str], options: list[str], device: str = "cpu",
                         timeout_s: float | None = None) -> None:
    """``TotalSegmentator -i ct -o out --ml -d <device> <options>`` (``device``: ``cpu`` or ``gpu``);
    raises with its output on failure, or ``subprocess.TimeoutExpired`` after ``timeout_s``."""
    command = [*totalsegmentator_command(), "-i", str(ct), "-o", str(out), "--ml", "-d", device, *options]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def totalsegmentator_command() -> list[str]:
    """The CLI beside this Python, else its entry point run by this Python (a ``--target`` install)."""
    script = Path(sys.executable).with_name("TotalSegmentator")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from totalsegmentator.bin.TotalSegmentator import main; sys.exit(main())"]


@dataclass(frozen=True)
class Agreement:
    """Share of identical voxels overall, and per structure over the union of both masks."""

    identical: float
    per_structure: dict[str, float]

    def lines(self) -> list[str]:
        worst = sorted(self.per_structure.items(), key=lambda item: item[1])[:5]
        return [f"voxels identical: {100 * self.identical:.4f} %",
                (f"structures: {len(self.per_structure)}, min per-structure agreement: "
                 f"{100 * min(self.per_structure.values(), default=1.0):.3f} %"),
                "lowest: " + ", ".join(f"{name} {100 * value:.2f} %" for name, value in worst)]


def compare(ours: np.ndarray, theirs: np.ndarray, classes: ClassMap) -> Agreement:
    """Voxel agreement of two label maps of the same grid."""
    if ours.shape != theirs.shape:
        raise ValueError(f"label maps differ in shape: {ours.shape} vs {theirs.shape}")
    per_structure = {}
    for label, name in classes.names.items():
        union = (ours == label) | (theirs == label)
        if union.any():
            per_structure[name] = float(np.mean(ours[union] == theirs[union]))
    return Agreement(float(np.mean(ours == theirs)), per_structure)
