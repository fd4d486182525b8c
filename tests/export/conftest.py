"""A PACS-like export built once per module (see ``pacs.py``), with what each series should become."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.export.pacs import Patient, Study, example_slices, write_series

JANE = Patient("DOE^JANE^Q", "PID-493817", "19580312", sex="F")  # no PatientAge: age from the birth date
JANE_LATER = Patient("DOE^JANE^Q", "PID-493817", "19580312", sex="F", age="065Y")
JOHN = Patient("ROE^RICHARD", "PID-120044", "19701105", sex="M", age="052Y")
SECRETS = ("DOE^JANE", "DOE", "PID-493817", "ROE^RICHARD", "PID-120044", "19580312", "19701105", "ACC-77321",
           "St Elsewhere Hospital")
# Small series (the example has 20 slices of 2 mm): a policy with lower limits than the shipped one.
TEST_POLICY = """\
modalities: [CT]
required_image_type: [ORIGINAL, PRIMARY]
rejected_image_type: [LOCALIZER, DERIVED, SECONDARY]
max_tilt_from_axial_deg: 10
slice_thickness_mm: {min: 0.5, max: 5.0}
min_slices: 8
min_z_coverage_mm: 15
kernel_preference: [Br38, B30]
tie_break: [kernel_preference, thinnest, largest_coverage]
series_per_study: 1
"""


def coronal(ds, k: int) -> None:
    """A coronal stack: rows along x, columns down the body axis, slices stepping along y."""
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.ImagePositionPatient = [-249.5, -100.0 + 2.0 * k, -500.0]


@dataclass(frozen=True)
class Export:
    root: Path
    uids: dict[str, str]  # role -> SeriesInstanceUID


@pytest.fixture(scope="package")
def pacs_export(tmp_path_factory, examples: Path) -> Export:
    root = tmp_path_factory.mktemp("pacs") / "export"
    slices = example_slices(examples)
    first, repeat, other = Study(JANE, date="20221208"), Study(JANE_LATER, date="20231110"), Study(JOHN)
    uids = {
        "soft": write_series(root / "A" / "ct_soft", slices, first),
        "localizer": write_series(root / "A" / "scout", slices[:2], first, image_type="ORIGINAL\\PRIMARY\\LOCALIZER"),
        "derived": write_series(root / "A" / "mixed", slices, first, image_type="DERIVED\\SECONDARY\\AXIAL"),
        "thick": write_series(root / "A" / "mixed", slices[::2], first, thickness=5.0),
        "bone": write_series(root / "A" / "ct_bone", slices, first, kernel="Br64f",  # typed in by an operator
                             description="CT Body Doe Jane PID-493817"),
        "split": write_series([root / "B" / "series_part1", root / "B" / "series_part2"], slices, repeat),
        "gap": write_series(root / "C" / "ct", slices[:10] + slices[11:], other),
        "mr": write_series(root / "C" / "mr", slices, other, modality="MR"),
        "coronal": write_series(root / "C" / "coronal", slices, other, edit=coronal),
        "slab": write_series(root / "C" / "slab", slices, other, thickness=10.0),
    }
    (root / "README.txt").write_text("export made by the PACS")
    (root / "C" / "junk.dcm").write_bytes(b"\x00" * 64 + b"not dicom at all")
    truncated = next((root / "A" / "ct_soft").iterdir()).read_bytes()
    (root / "C" / "truncated.dcm").write_bytes(truncated[:len(truncated) // 2])
    return Export(root, uids)
