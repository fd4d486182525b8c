"""``write_report``: one self-contained HTML page, checked in a real headless browser."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import matplotlib.image
import pytest

from cohort.stats import write_report

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
CHECK_SCRIPT = """<script>window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const ok = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute("data-images", images.length + ":" + ok);
});</script></body>"""


@pytest.fixture(scope="module")
def report(small_results_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    results = tmp_path_factory.mktemp("report")
    shutil.copytree(small_results_dir / "features", results / "features")
    shutil.copytree(small_results_dir / "series", results / "series")
    return write_report(results)


def test_report_is_self_contained(report: Path) -> None:
    text = report.read_text()
    assert report.name == "report.html"
    assert re.search(r"""(src|href)=["'](?!data:)""", text) is None  # nothing fetched from outside
    assert text.count('src="data:image/png;base64,') >= 3  # QC, overview, structure figures
    for heading in ("Run summary", "QC overview", "Aging study", "truncated gzip stream", "below_lower_bound"):
        assert heading in text
    assert (report.parent / "aging" / "correlations.parquet").exists()


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=120, check=True)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_every_image_renders_in_chromium(report: Path, tmp_path: Path) -> None:
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", CHECK_SCRIPT))
    dom = _chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri()).stdout
    found = re.search(r'data-images="(\d+):(\d+)"', dom)
    assert found, dom[-500:]
    total, loaded = map(int, found.groups())
    assert total >= 3 and loaded == total


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_screenshot_is_not_blank(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    _chromium("--window-size=1280,2000", f"--screenshot={shot}", report.as_uri())
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] >= 1000 and pixels[..., :3].std() > 0.05
