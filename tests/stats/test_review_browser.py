"""The report and the review page in a real headless Chromium (Debian's, driven by Playwright).

A real ``cohort run`` over the shipped examples gives real CTs and label maps: the report must
load without console errors with an overlay image for every flagged series; a reject click on
the review page must land in ``review.parquet``; and ``cohort stats`` rerun afterwards must
exclude the rejected rows under ``rejected_in_review``.
"""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from testkit import cohort_cli

from cohort.stats import run_stats, write_report
from cohort.stats.review_server import ReviewSite, make_server
from cohort.testing.cohorts import make_cohort

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright (test extra)")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def run_dir(examples: Path, tmp_path_factory: pytest.TempPathFactory, prefect_server: str) -> Path:
    out = tmp_path_factory.mktemp("review-run") / "results"
    done = cohort_cli("run", "--manifest", str(examples / "manifest.csv"), "--out", str(out), api=prefect_server)
    assert done.returncode == 0, done.stderr[-2000:]
    run_stats(out, figures="none")
    return out


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright.sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield chromium
        chromium.close()


def _page(browser):  # type: ignore[no-untyped-def]
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return page, errors


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Screenshots to look at: <pytest base temp>/screenshots (e.g. /tmp/pytest-of-$USER/pytest-current/)."""
    return tmp_path_factory.getbasetemp() / "screenshots"


def test_report_loads_clean_with_an_overlay_per_flagged_series(run_dir: Path, browser, shots: Path) -> None:  # type: ignore[no-untyped-def]
    report = write_report(run_dir)
    page, errors = _page(browser)
    page.goto(report.as_uri(), wait_until="load")
    assert errors == []
    assert "Stale" not in page.inner_text(".banner")
    cards = page.locator("h3:has-text('most flagged') + .cards .card")
    assert cards.count() >= 1
    for i in range(cards.count()):
        card = cards.nth(i)
        card.scroll_into_view_if_needed()
        card.locator("img").evaluate("img => img.decode()")
        assert card.locator("img").evaluate("img => img.naturalWidth") == 360
    broken = page.evaluate("Array.from(document.images).filter(i => i.complete && i.naturalWidth === 0).length")
    assert broken == 0
    shots.mkdir(exist_ok=True)
    page.screenshot(path=shots / "report.png", full_page=True)


def test_a_report_moved_elsewhere_opens_its_full_size_overlays(run_dir: Path, browser,  # type: ignore[no-untyped-def]
                                                                tmp_path: Path) -> None:
    """Thumbnails link to their mosaic in ``qc/``, relative to the page: the folder moved whole keeps them."""
    write_report(run_dir)
    moved = tmp_path / "moved" / "results"
    shutil.copytree(run_dir, moved, ignore=shutil.ignore_patterns("labels.zarr"))
    page, errors = _page(browser)
    page.goto((moved / "report.html").as_uri(), wait_until="load")
    link = page.locator(".card a").first
    assert link.get_attribute("href").startswith("qc/")
    link.click()
    page.wait_for_load_state("load")
    assert page.url.startswith((moved / "qc").as_uri())
    assert page.evaluate("document.images[0].naturalWidth") == 900
    assert errors == []


@pytest.fixture()
def review_url(run_dir: Path) -> Iterator[str]:
    server = make_server(ReviewSite.load(run_dir), port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_reject_click_lands_in_review_parquet_and_stats_exclude_it(run_dir: Path, browser, review_url: str,  # type: ignore[no-untyped-def]
                                                                   shots: Path) -> None:  # type: ignore[no-untyped-def]
    page, errors = _page(browser)
    page.goto(review_url + "/series/example_full", wait_until="load")
    row = page.locator("tr", has_text="liver").first
    row.locator("input[name=comment]").fill("leaks into the right kidney")
    row.locator("button[value=reject]").click()
    page.wait_for_load_state("load")
    page.goto(review_url + "/", wait_until="load")
    whole = page.locator(".card[data-series=example_dicom]").first
    whole.locator("button[value=accept]").click()
    page.wait_for_load_state("load")
    assert errors == []
    assert "leaks into the right kidney" in page.inner_text("body")
    shots.mkdir(exist_ok=True)
    page.screenshot(path=shots / "review.png", full_page=True)

    review = pd.read_parquet(run_dir / "review.parquet")
    assert review[["series_id", "structure", "decision", "comment"]].values.tolist()[:1] == [
        ["example_full", "liver", "reject", "leaks into the right kidney"]]
    assert review["reviewer"].str.len().min() > 0 and review["decided_at"].notna().all()

    stale = write_report(run_dir)
    assert "Stale statistics" in stale.read_text()
    run_stats(run_dir, figures="none")
    exclusions = pd.read_parquet(run_dir / "aging" / "exclusions.parquet")
    rejected = exclusions[(exclusions["reason"] == "rejected_in_review") & (exclusions["n_series"] > 0)]
    assert rejected[["structure", "n_series"]].values.tolist() == [["liver", 1]]


def test_review_cards_without_an_image_say_why_instead_of_a_broken_picture(browser,  # type: ignore[no-untyped-def]
                                                                           tmp_path: Path) -> None:
    results = make_cohort(n_subjects=40, n_structures=3, seed=5).write(tmp_path / "results")  # no manifest
    server = make_server(ReviewSite.load(results), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page, errors = _page(browser)
        page.goto(f"http://127.0.0.1:{server.server_address[1]}/", wait_until="load")
        images = page.locator(".card img")
        assert images.count() > 0
        for i in range(images.count()):
            images.nth(i).scroll_into_view_if_needed()
            images.nth(i).evaluate("img => img.decode()")
        assert images.first.evaluate("img => img.naturalWidth") == 360
        assert page.evaluate("Array.from(document.images).filter(i => i.naturalWidth === 0).length") == 0
        assert errors == []
    finally:
        server.shutdown()
        server.server_close()


def test_a_flagged_card_opens_its_structure_overlay_and_the_decision_shows_there(  # type: ignore[no-untyped-def]
        browser, review_url: str, run_dir: Path) -> None:
    page, errors = _page(browser)
    page.goto(review_url + "/", wait_until="load")
    card = page.locator("h2:has-text('most flagged') + .cards .card").first
    series_id, structure = card.locator("a").inner_text().split(" / ")
    card.locator("a").click()
    page.wait_for_load_state("load")
    assert page.locator("h2").first.inner_text() == structure
    overlay = page.locator(f"img[src='/qc/{series_id}/{structure}.png']")
    overlay.evaluate("img => img.decode()")
    assert overlay.evaluate("img => img.naturalWidth") == 900  # the full-size mosaic through that structure
    form = page.locator("form.decide").first
    form.locator("input[name=comment]").fill("misses the tail")
    form.locator("button[value=reject]").click()
    page.wait_for_load_state("load")
    assert page.locator("p:has-text('Decision:')").first.inner_text().endswith(": misses the tail")
    assert errors == []
    newest = pd.read_parquet(run_dir / "review.parquet").iloc[-1]
    assert [newest["series_id"], newest["structure"], newest["decision"]] == [series_id, structure, "reject"]


def test_each_overlay_and_button_says_which_structure(browser, review_url: str, run_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """To a screen reader the 117 rows of a series page were 117 buttons "accept" and "reject", and every
    thumbnail of a series "overlay <series>", whichever structure it highlights."""
    page, errors = _page(browser)
    page.goto(review_url + "/series/example_full", wait_until="load")
    assert page.get_by_role("button", name="reject liver of example_full", exact=True).count() == 1
    assert page.get_by_role("button", name="accept the whole series example_full", exact=True).count() == 1
    assert page.get_by_role("textbox", name="comment on liver of example_full", exact=True).count() == 1
    assert page.get_by_role("img", name="overlay of example_full: all structures", exact=True).count() == 1
    page.goto(write_report(run_dir).as_uri(), wait_until="load")
    alts = page.eval_on_selector_all(".card img", "images => images.map(i => i.alt)")
    assert "overlay of example_dicom: all structures" in alts  # a spot check
    assert any(re.fullmatch(r"overlay of example_\w+: aorta highlighted", alt) for alt in alts)  # a failing structure
    assert errors == []


def test_enter_in_the_comment_field_decides_nothing(browser, review_url: str, run_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """Enter in a form field presses the form's first submit button, "accept": a reviewer who typed why they
    reject and pressed Enter recorded an accept with that reason."""
    before = pd.read_parquet(run_dir / "review.parquet") if (run_dir / "review.parquet").exists() else None
    page, errors = _page(browser)
    page.goto(review_url + "/series/example_full?structure=stomach", wait_until="load")
    comment = page.get_by_role("textbox", name="comment on stomach of example_full", exact=True).first
    comment.fill("leaks into the spleen")
    comment.press("Enter")
    page.wait_for_timeout(500)
    after = pd.read_parquet(run_dir / "review.parquet") if (run_dir / "review.parquet").exists() else None
    assert (0 if after is None else len(after)) == (0 if before is None else len(before))
    page.get_by_role("button", name="reject stomach of example_full", exact=True).first.click()
    page.wait_for_load_state("load")
    assert page.locator("p:has-text('Decision:')").first.inner_text().startswith("Decision: reject")
    assert errors == []
