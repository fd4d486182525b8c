"""``cohort review`` takes a decision only from its own pages, over a real HTTP server on 127.0.0.1.

Any page open in the reviewer's browser can POST a form to 127.0.0.1 (no CORS preflight), so a
decision needs the token of the page's forms and no foreign ``Origin``/``Referer``; the redirect
after it stays on the site; and a request naming another host (DNS rebinding) is refused.
"""

from __future__ import annotations

import html
import http.client
import re
import socket
import struct
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import pytest

from cohort.cli import main
from cohort.stats import run_stats
from cohort.stats.report_figures import readable
from cohort.stats.review_server import ReviewSite, make_server
from cohort.stats.review_store import read_decisions
from cohort.testing.cohorts import make_cohort

EVIL = "http://evil.example.com"


@dataclass(frozen=True)
class Review:
    """A running review server: its port, results folder, one series it knows and its forms' token."""

    port: int
    results_dir: Path
    series_id: str
    token: str

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                form: dict[str, str] | None = None) -> http.client.HTTPResponse:
        """``method path`` as a browser would send it (Host 127.0.0.1:port unless ``headers`` say otherwise)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        body = urllib.parse.urlencode(form) if form is not None else None
        sent = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
        if body is not None:
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        response.read()
        connection.close()
        return response

    def decide(self, headers: dict[str, str] | None = None, **fields: str) -> http.client.HTTPResponse:
        """POST /decide: a reject of the whole series, with ``fields`` added or overriding."""
        form = {"series_id": self.series_id, "structure": "", "decision": "reject", "reviewer": "tester",
                "comment": "", "back": "/", **fields}
        return self.request("POST", "/decide", headers, form)

    def decisions(self) -> pd.DataFrame:
        return read_decisions(self.results_dir)


@pytest.fixture(scope="module")
def review(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Review]:
    results_dir = make_cohort(n_subjects=40, n_structures=3, seed=5).write(tmp_path_factory.mktemp("review"))
    site = ReviewSite.load(results_dir)
    server = make_server(site, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Review(server.server_address[1], results_dir, str(site.features["series_id"].iloc[0]), site.token)
    server.shutdown()
    server.server_close()


def _page(review: Review, path: str) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", review.port, timeout=30)
    connection.request("GET", path)  # http.client sends Host 127.0.0.1:port, as a browser does
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("X-Frame-Options") == "DENY"
    text = response.read().decode()
    connection.close()
    return text


def test_every_form_of_the_pages_carries_the_token(review: Review) -> None:
    for path in ("/", f"/series/{urllib.parse.quote(review.series_id)}"):
        page = _page(review, path)
        forms = re.findall(r"<form .*?</form>", page, flags=re.DOTALL)
        assert forms and all(f'<input type="hidden" name="token" value="{review.token}">' in form for form in forms)
    assert len(review.token) >= 32


def test_a_forged_post_without_the_token_is_refused_and_writes_nothing(review: Review) -> None:
    before = review.decisions()
    for headers, token in (({"Origin": EVIL}, None), ({}, None), ({}, "x" * 43), ({}, "é"),
                           ({"Origin": review.origin}, review.token[:-1])):
        response = review.decide(headers, **({} if token is None else {"token": token}))
        assert response.status == 403, (headers, token)
    pd.testing.assert_frame_equal(review.decisions(), before)


def test_a_post_from_another_origin_is_refused_even_with_the_token(review: Review) -> None:
    before = review.decisions()
    for headers in ({"Origin": EVIL}, {"Origin": "null"}, {"Origin": f"https://127.0.0.1:{review.port}"},
                    {"Origin": f"http://evil.example.com:{review.port}"}, {"Referer": f"{EVIL}/page"},
                    {"Referer": f"http://127.0.0.1:{review.port}@evil.example.com/"}):
        assert review.decide(headers, token=review.token).status == 403, headers
    pd.testing.assert_frame_equal(review.decisions(), before)


def test_a_same_origin_post_with_the_token_is_taken(review: Review) -> None:
    before = len(review.decisions())
    back = f"/series/{urllib.parse.quote(review.series_id)}"
    tunnel = "localhost:9000"  # ssh -L 9000:127.0.0.1:PORT from the reviewer's machine
    for headers in ({"Origin": review.origin}, {"Origin": f"http://localhost:{review.port}"},
                    {"Referer": f"{review.origin}{back}"}, {}, {"Host": tunnel, "Origin": f"http://{tunnel}"}):
        response = review.decide(headers, token=review.token, back=back, comment=f"via {headers}")
        assert (response.status, response.getheader("Location")) == (303, back), headers
    decisions = review.decisions()
    assert len(decisions) == before + 5
    assert decisions.iloc[-1][["series_id", "decision", "reviewer"]].tolist() == [review.series_id, "reject", "tester"]


@pytest.mark.parametrize("back", ["//evil.example.com/x", "/\\evil.example.com", "http://evil.example.com/",
                                  "/\t/evil.example.com", "/\r\nSet-Cookie: a=b", "", "series/x"])
def test_the_redirect_after_a_decision_stays_on_the_site(review: Review, back: str) -> None:
    response = review.decide({"Origin": review.origin}, token=review.token, back=back)
    assert (response.status, response.getheader("Location")) == (303, "/")
    assert response.getheader("Set-Cookie") is None


def test_a_request_naming_another_host_is_refused(review: Review) -> None:
    before = review.decisions()
    for host in ("evil.example.com", f"evil.example.com:{review.port}", f"127.0.0.1.evil.example.com:{review.port}"):
        assert review.request("GET", "/", {"Host": host}).status == 421, host
        rebound = {"Host": host, "Origin": f"http://{host}"}  # a rebinding page is same-origin with itself
        assert review.decide(rebound, token=review.token).status == 421, host
    pd.testing.assert_frame_equal(review.decisions(), before)
    for host in (f"localhost:{review.port}", "localhost:9000", "127.0.0.1:9000"):  # the last two: an SSH tunnel
        assert review.request("GET", "/", {"Host": host}).status == 200, host


def test_a_structure_name_is_shown_as_text_not_run_as_markup(tmp_path: Path) -> None:
    """A custom class map may name a structure anything; on the series page, which holds the token, a
    name is text: markup in it would run as this site's script and could post decisions."""
    cohort = make_cohort(n_subjects=10, n_structures=3, seed=5, n_failed_series=0, n_without_age=0)
    hostile = '<img src=x onerror="document.title=1">'
    renamed = cohort.features["structure"].iloc[0]
    features = cohort.features.assign(structure=cohort.features["structure"].replace(renamed, hostile))
    results_dir = replace(cohort, features=features).write(tmp_path / "results")
    site = ReviewSite.load(results_dir)
    page = site.series_page(str(features["series_id"].iloc[0]))
    assert hostile not in page and html.escape(hostile) in page
    # escaped once: the form posts the name itself back, so that the decision applies to its rows
    assert f'name="structure" value="{html.escape(hostile)}"' in page
    assert "\\n<input" not in page  # the forms' line breaks are not shown as text in their cells


def test_review_of_a_run_where_every_series_failed_says_why(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``cohort run`` writes no features/ part when nothing was measured: exit 2 with the failures' reasons,
    as ``cohort report`` gives, not a KeyError traceback."""
    results_dir = make_cohort(n_subjects=4, n_structures=3, seed=5, n_failed_series=4).write(tmp_path / "results")
    for part in (results_dir / "features").glob("*.parquet"):
        part.unlink()
    assert main(["review", "--results", str(results_dir), "--port", "0"]) == 2
    assert "no series in" in capsys.readouterr().err


def test_review_on_a_port_in_use_says_so(review: Review, capsys: pytest.CaptureFixture) -> None:
    assert main(["review", "--results", str(review.results_dir), "--port", str(review.port)]) == 2
    assert f"cannot listen on 127.0.0.1:{review.port}" in capsys.readouterr().err


@pytest.mark.parametrize("headers, body", [({"Content-Length": "abc"}, b""), ({}, b"comment=\xff\xfe")])
def test_a_malformed_post_is_a_one_line_400_not_a_traceback(review: Review, headers: dict[str, str], body: bytes) -> None:
    before = review.decisions()
    connection = http.client.HTTPConnection("127.0.0.1", review.port, timeout=30)
    connection.putrequest("POST", "/decide")
    for name, value in {"Content-Length": str(len(body)), "Origin": review.origin, **headers}.items():
        connection.putheader(name, value)
    connection.endheaders(body)
    response = connection.getresponse()
    assert response.status == 400 and response.read().decode().startswith("refused: ")
    connection.close()
    pd.testing.assert_frame_equal(review.decisions(), before)


@pytest.mark.parametrize("fields, reason", [
    ({"structure": "肝臓"}, "unknown series or structure: "),
    ({"decision": "maybe"}, "decision 'maybe' is not one of accept, reject"),
    ({"reviewer": " "}, "a decision needs the reviewer's name"),
])
def test_a_form_the_server_cannot_take_is_a_400_saying_why(review: Review, fields: dict[str, str], reason: str) -> None:
    """The reason is the answer's UTF-8 body: a name outside Latin-1 (a structure of a custom class map) in
    the status line made http.server raise, and the reviewer got an empty reply instead of the reason."""
    before = review.decisions()
    connection = http.client.HTTPConnection("127.0.0.1", review.port, timeout=30)
    form = {"series_id": review.series_id, "structure": "", "decision": "reject", "reviewer": "tester",
            "token": review.token, **fields}
    connection.request("POST", "/decide", body=urllib.parse.urlencode(form),
                       headers={"Origin": review.origin, "Content-Type": "application/x-www-form-urlencoded"})
    response = connection.getresponse()
    text = response.read().decode()
    connection.close()
    assert response.status == 400 and text.startswith("refused: ") and reason in text
    if "structure" in fields:
        assert fields["structure"] in text
    pd.testing.assert_frame_equal(review.decisions(), before)


def test_an_overlay_that_cannot_be_drawn_is_a_picture_saying_why(review: Review) -> None:
    """The synthetic run has no manifest, as a results folder moved away from its images: the ``<img>`` of each
    card got a bare 404 and the reviewer saw broken images without a reason, where the report gives one."""
    connection = http.client.HTTPConnection("127.0.0.1", review.port, timeout=30)
    connection.request("GET", f"/qc/{review.series_id}/series.thumb.png")
    response = connection.getresponse()
    body = response.read().decode()
    connection.close()
    assert response.status == 200 and response.getheader("Content-Type") == "image/svg+xml"
    assert body.startswith("<svg") and 'width="360"' in body and "its image is not in the manifest" in body
    assert review.request("GET", "/qc/no-such-series/series.png").status == 404


def test_a_structure_opens_with_its_own_overlay_and_shows_its_newest_decision(review: Review) -> None:
    """A card of the queue names a structure: its page showed only the whole series' overlay, and a decision
    just taken was nowhere on it (only in the queue's list), so a reviewer could not see what they had decided."""
    structure = str(pd.read_parquet(review.results_dir / "features")["structure"].iloc[-1])
    link = f"/series/{review.series_id}?structure={urllib.parse.quote(structure)}"
    page = _page(review, link)
    assert f'src="/qc/{review.series_id}/{structure}.png"' in page and "Decision: none yet" in page
    response = review.decide({"Origin": review.origin}, token=review.token, structure=structure,
                             comment="leaks into the kidney", back=link)
    assert (response.status, response.getheader("Location")) == (303, link)
    page = _page(review, link)
    assert re.search(rf"<h2>{structure}</h2>\s*<p>Decision: reject \(tester, [\d: -]+ UTC\): leaks into the kidney</p>", page)
    row = page.split(f">{structure}</a>")[1].split("</tr>")[0]
    assert "reject (tester, " in row
    assert review.request("GET", f"/series/{review.series_id}?structure=no_such_structure").status == 404


def test_a_browser_leaving_before_the_answer_is_not_a_traceback(review: Review, capfd: pytest.CaptureFixture) -> None:
    """A reviewer who opens another page while thumbnails are still being drawn closes those connections: the
    server printed a BrokenPipeError traceback for each into the terminal, as if it had crashed."""
    for _ in range(5):
        client = socket.create_connection(("127.0.0.1", review.port))
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
        client.sendall(f"GET /series/{review.series_id} HTTP/1.1\r\nHost: 127.0.0.1:{review.port}\r\n\r\n".encode())
        client.close()
    assert review.request("GET", "/").status == 200  # still serving
    assert "Traceback" not in capfd.readouterr().err


def test_a_pooled_outlier_of_the_queue_can_be_opened_and_rejected(tmp_path: Path) -> None:
    """The queue lists z-score outliers of pooled rows (``kidney``), but the review site knew only measured
    structures: their page was a 404, their picture broken, and their accept/reject a 400. A reject of the
    pooled row now lands in review.parquet, and the study excludes that row (rejected_in_review)."""
    results = make_cohort(n_subjects=40, n_structures=12, seed=5).write(tmp_path / "results")
    site = ReviewSite.load(results)
    studied = site.series[(site.series["status"] == "done") & site.series["age"].notna()]
    series_id = str(studied["series_id"].iloc[0])
    assert site.known(series_id, "kidney") and not site.known(series_id, "lung")  # its lobes were not measured
    page = site.series_page(series_id, "kidney")
    assert "<h2>kidney</h2>" in page and 'aria-label="reject kidney of ' in page
    site.decide({"series_id": series_id, "structure": "kidney", "decision": "reject", "reviewer": "ab"})
    run_stats(results, figures="none")
    exclusions = pd.read_parquet(results / "aging" / "exclusions.parquet").set_index(["structure", "reason"])
    assert exclusions.loc[("kidney", "rejected_in_review"), "n_series"] == 1
    assert exclusions.loc[("kidney_left", "rejected_in_review"), "n_series"] == 0


def test_a_card_of_the_queue_says_what_was_decided(tmp_path: Path) -> None:
    """After a decision from a card the queue looked as before (the decision only in the table at its foot), so a
    reviewer could not tell done cards from open ones; a card now says the newest decision that applies to it."""
    results = make_cohort(n_subjects=40, n_structures=6, seed=5).write(tmp_path / "results")
    site = ReviewSite.load(results)
    series_id, structure = site.queue.flagged[["series_id", "worst"]].iloc[0]
    card = re.compile(rf'<div class="card" data-series="{series_id}"><a href="[^"]*">.*?</a>([^<]*<span[^>]*>[^<]*</span>)?')
    assert "in review" not in card.search(site.index_page()).group(0)
    site.decide({"series_id": series_id, "structure": structure, "decision": "reject", "reviewer": "ab"})
    assert card.search(site.index_page()).group(0).endswith("(rejected in review)</span>")


def test_a_series_page_lists_its_structures_in_the_class_maps_order(tmp_path: Path) -> None:
    """Structures were listed by name where a table's rows were not in label order, so ribs read 1, 10, 11, 12, 2
    and vertebrae C1, C2, .., L1, .., T9; a series page (and its flags) now follows the class map's label order."""
    cohort = make_cohort(n_subjects=30, n_structures=117, seed=5)
    shuffled = cohort.features.sort_values(["series_id", "structure"])  # rows by name, as a sorting step leaves them
    results = replace(cohort, features=shuffled).write(tmp_path / "results")
    site = ReviewSite.load(results)
    series_id = str(site.queue.flagged["series_id"].iloc[0])
    listed = re.findall(r'<a href="/series/[^"?]+\?structure=([^"]+)">', site.series_page(series_id))
    by_label = cohort.features.drop_duplicates("structure").sort_values("label")["structure"].tolist()
    assert listed == by_label
    ribs = [name for name in listed if name.startswith("rib_left_")]
    assert ribs == [f"rib_left_{i}" for i in range(1, 13)]
    flags = site.queue.flag_rows.query("series_id == @series_id")
    shown = site.series_page(series_id).split("<h2>Flags</h2>")[1].split("</table>")[0]
    named = re.findall(r"<td>([^<]+)</td>\s*<td>(?:below|absent|z-score)", shown)
    assert named == [readable(s) for s in by_label if s in set(flags["structure"])] and len(named) == len(flags)


def test_review_knows_the_pooled_rows_of_the_studys_own_pooled_structures_file(tmp_path: Path) -> None:
    """A study configured with its own ``pooled_structures`` file lists z-score outliers of its pooled rows, but the
    review site knew only the default file's (``kidney``): such a row's page was a 404 and its reject a 400. The site
    now reads the definitions the stats were made with."""
    results = make_cohort(n_subjects=40, n_structures=12, seed=5).write(tmp_path / "results")
    (tmp_path / "pooled.csv").write_text("pooled,structure\naorta_and_pancreas,aorta\naorta_and_pancreas,pancreas\n")
    config = tmp_path / "study.yaml"
    config.write_text(f"pooled_structures: {tmp_path / 'pooled.csv'}\n")
    run_stats(results, config_path=config, figures="none")
    site = ReviewSite.load(results)
    series_id = str(site.series.query("status == 'done' and age == age")["series_id"].iloc[0])
    assert site.known(series_id, "aorta_and_pancreas") and not site.known(series_id, "kidney")
    site.decide({"series_id": series_id, "structure": "aorta_and_pancreas", "decision": "reject", "reviewer": "ab"})
    run_stats(results, config_path=config, figures="none")
    exclusions = pd.read_parquet(results / "aging" / "exclusions.parquet").set_index(["structure", "reason"])
    assert exclusions.loc[("aorta_and_pancreas", "rejected_in_review"), "n_series"] == 1
