"""placeholder"""
from pathlib import Path
def write_report(results_dir: Path, out_path: Path | None = None) -> Path:
    raise NotImplementedError
