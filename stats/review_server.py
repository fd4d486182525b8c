"""``cohort review``: a small local web page where a reviewer accepts or rejects segmentations.

A static report cannot write files, so the review page is served by Python's own
``http.server`` on 127.0.0.1 (never on the network). Pages:

* ``/``: the review queue of ``cohort.stats.triage`` (flagged series, suspicious structures,
  z-score outliers, spot checks) with overlay thumbnails, and the decisions so far;
* ``/series/<series_id>[?structure=<name>]``: the series' overlay (and the structure's, when named),
  every structure with its QC status, values and newest decision, and one form per structure (and
  one for the whole series): reviewer, comment, accept/reject;
* ``/qc/<series_id>/<structure>.png``: overlay mosaics, drawn on first request and cached (where
  one cannot be drawn, a picture saying why);
* ``POST /decide``: appends the decision to ``results/review.parquet`` and returns to the page.

Then ``cohort stats`` excludes rejected rows (reason ``rejected_in_review``) and ``cohort report``
warns that the stats are stale until it is rerun.

Any web page open in the reviewer's browser can send a form to 127.0.0.1, so a decision is only taken
from this server's own pages: every form carries a token drawn when the site is loaded, a POST must
send it back and must not come from another origin (``Origin``, else ``Referer``), the redirect after
it stays on this site, no page may be framed by another site, and a request naming another host
(DNS rebinding: a foreign name resolving to 127.0.0.1) is refused.
"""

from __future__ import annotations

import getpass
import hmac
import html
import logging
import secrets
import sys
import textwrap
import threading
import urllib.parse
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd

from cohort.errors import RunCannotStart
from cohort.store.layout import missing_table
from cohort.stats.freshness import check_stats
from cohort.stats.overlays import OverlayRequest, ensure_overlays, overlay_alt
from cohort.stats.pooled import parts_of
from cohort.stats.report import _page, _table
from cohort.provenance import series_label_map_key
from cohort.stats.review import SortedDecisions, sort_decisions
from cohort.stats.review_store import Decision, append_decision, latest_decisions, read_decisions
from cohort.stats.triage import ReviewQueue, anatomical_order, in_anatomical_order, review_queue

log = logging.getLogger(__name__)
HOST = "127.0.0.1"
LOCAL_NAMES = (HOST, "localhost")
THUMBNAIL_SIZE, FULL_SIZE = (360, 240), (900, 600)  # pixels of the mosaics (overlays.py: 9 x 6 inches at 40 and 100 dpi)
FORM = " ".join((  # one line: in a table cell pandas would show a newline as a literal "\n"
    '<form method="post" action="/decide" class="decide">',
    '<input type="hidden" name="series_id" value="{series_id}"><input type="hidden" name="structure" value="{structure}">',
    '<input type="hidden" name="back" value="{back}"><input type="hidden" name="token" value="{token}">',
    '<input type="hidden" name="label_map_key" value="{label_map_key}">',
    # the form's default button, which Enter in a field presses: disabled, so Enter decides nothing (else "accept")
    '<button type="submit" disabled hidden aria-hidden="true"></button>',
    '<input name="reviewer" value="{reviewer}" size="8" aria-label="reviewer" required>',
    '<input name="comment" placeholder="why" size="28" aria-label="comment on {what}">',
    '<button name="decision" value="accept" aria-label="accept {what}">accept</button>',
    '<button name="decision" value="reject" aria-label="reject {what}">reject</button></form>'))


@dataclass(frozen=True)
class ReviewSite:
    """What the pages show: the run's tables, read once, and the queue built from them."""

    results_dir: Path
    series: pd.DataFrame
    features: pd.DataFrame
    queue: ReviewQueue
    reviewer: str
    order: pd.Series  # each structure's place in the class map: structures are listed in its order, not by name
    pooled_structures: str  # the study's pooled-structure definitions (its stats' config): which pooled rows exist
    token: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)  # in every form: POSTs are ours

    @classmethod
    def load(cls, results_dir: Path, stats_dir: Path | None = None) -> "ReviewSite":
        results_dir = Path(results_dir)
        if missing := missing_table(results_dir, "series"):
            raise RunCannotStart(missing)
        series = pd.read_parquet(results_dir / "series")
        features = pd.read_parquet(results_dir / "features")
        stats_dir = Path(stats_dir or results_dir / "aging")
        zscores = pd.read_parquet(stats_dir / "zscores.parquet") if (stats_dir / "zscores.parquet").exists() else None
        return cls(results_dir, series, features, review_queue(features, series, zscores), getpass.getuser(),
                   anatomical_order(features), check_stats(results_dir, stats_dir).pooled_structures)

    def index_page(self) -> str:
        sorted_decisions = self._decisions()
        decisions = latest_decisions(sorted_decisions.applied)
        verdict = sorted_decisions.verdicts(self.queue.overlay_requests())
        lists = [("Series with the most flagged structures", self.queue.flagged, "worst"),
                 ("Structures most often failing (an example series each)",
                  self.queue.structures.rename(columns={"example": "series_id"}), "structure")]
        if self.queue.outliers is not None:
            lists.append(("z-score outliers", self.queue.outliers, "structure"))
        lists.append(("Spot checks (random sample)", self.queue.spot_checks, None))
        body = [f"<p>Results: <code>{html.escape(self.results_dir.name)}/</code>, {len(self.series)} series. "
                "Open a series to see all its structures; decisions are saved to <code>review.parquet</code>.</p>"]
        if self.queue.outliers is None:
            body.append('<p class="note">z-score outliers: not computed (run <code>cohort stats</code>)</p>')
        for title, rows, column in lists:
            body.append(f"<h2>{html.escape(title)}</h2>")
            pairs = [(row["series_id"], row.get(column) if column else None) for row in rows.to_dict("records")]
            body.append('<div class="cards">' + "".join(self._card(sid, structure, verdict.get((sid, structure)))
                                                        for sid, structure in pairs) + "</div>")
        body += [f"<h2>Decisions ({len(decisions)})</h2>", _table(decisions) if len(decisions) else "<p>none yet</p>"]
        if len(stale := sorted_decisions.stale):
            body += [f"<h2>Made on an earlier segmentation; review again ({len(stale)})</h2>",
                     "<p>The series was segmented anew after these decisions, so they are not applied.</p>",
                     _table(stale)]
        return _page("cohort review", body)

    def series_page(self, series_id: str, structure: str | None = None) -> str:
        """Every structure of the series, in the class map's order, with its values, current decision and form;
        ``structure`` (the one a card of the queue named) is shown first, with its own full-size overlay."""
        rows = in_anatomical_order(self.features[self.features["series_id"] == series_id], self.order)
        facts = self.series[self.series["series_id"] == series_id][["series_id", "age", "sex", "status", "error"]]
        back = series_link(series_id, structure)
        decided = self._decided(series_id)
        values = [c for c in ("volume_ml", "mean_hu", "mean_intensity", "fat_fraction", "lower_bound_ml")
                  if c in rows and rows[c].notna().any()]  # HU for CT, intensity for MR, a bound where one exists
        table = _escaped(rows[["structure", "status", *values]])
        table["structure"] = [f'<a href="{html.escape(series_link(series_id, s))}">{html.escape(s)}</a>'
                              for s in rows["structure"]]
        table["decision"] = [html.escape(decided.get(s, "")) for s in rows["structure"]]
        table["decide"] = [self._form(series_id, s, back) for s in rows["structure"]]  # _form escapes them itself
        flagged = self.queue.flag_rows[self.queue.flag_rows["series_id"] == series_id]
        body = [_table(facts)]
        if structure is not None:
            body += [f"<h2>{html.escape(structure)}</h2>",
                     f"<p>Decision: {html.escape(decided.get(structure, 'none yet'))}</p>",
                     self._form(series_id, structure, back), self._image(series_id, structure)]
        body += ["<h2>Whole series</h2>", f"<p>Decision: {html.escape(decided.get(None, 'none yet'))}</p>",
                 self._form(series_id, None, back), self._image(series_id, None)]
        if len(flagged):
            body.append("<h2>Flags</h2>" + _table(in_anatomical_order(flagged, self.order)[["structure", "reason"]]))
        body += ["<h2>Structures</h2>", table.to_html(index=False, border=0, escape=False, na_rep="",
                                                      float_format=lambda v: f"{v:.4g}")]
        return _page(f"review {series_id}", ['<p><a href="/">back to the queue</a></p>', *body])

    def _decisions(self) -> SortedDecisions:
        """Every decision so far, sorted by whether it judged the label map each series has now."""
        return sort_decisions(read_decisions(self.results_dir), self.series)

    def _decided(self, series_id: str) -> dict[str | None, str]:
        """The newest decision on each structure of the series (key None: the whole series), as one line;
        where the only one was made on an earlier segmentation of the series, that one, marked stale."""
        decisions = self._decisions()
        lines = {}
        for frame, stale in ((decisions.stale, True), (latest_decisions(decisions.applied), False)):
            for d in frame[frame["series_id"] == series_id].itertuples():
                lines[d.structure if isinstance(d.structure, str) else None] = (
                    f"{d.decision} ({d.reviewer}, {d.decided_at:%Y-%m-%d %H:%M} UTC){': ' + d.comment if d.comment else ''}"
                    f"{'; made on an earlier segmentation: review again' if stale else ''}")
        return lines

    def label_map_key(self, series_id: str) -> str | None:
        """The ``source_key`` of the label map the pages show for ``series_id`` (as its ``series/`` row was
        read at start); None where the row has no run key."""
        return _label_map_keys(self.series).get(series_id)

    def _card(self, series_id: str, structure: str | None, decided: str | None) -> str:
        """One entry of the queue; ``decided``: what was decided on it, in words (:meth:`SortedDecisions.verdicts`)."""
        what = f" / {html.escape(structure)}" if structure else ""
        link = html.escape(series_link(series_id, structure))
        state = f' <span class="decided">({html.escape(decided)})</span>' if decided else ""
        return (f'<div class="card" data-series="{html.escape(series_id)}"><a href="{link}">'
                f"<b>{html.escape(series_id)}</b>{what}</a>{state}{self._image(series_id, structure, thumbnail=True)}"
                f"{self._form(series_id, structure, '/')}</div>")

    def _image(self, series_id: str, structure: str | None, thumbnail: bool = False) -> str:
        name = f"{structure or 'series'}{'.thumb' if thumbnail else ''}.png"
        source = f"/qc/{urllib.parse.quote(series_id)}/{urllib.parse.quote(name)}"
        return f'<img loading="lazy" alt="{html.escape(overlay_alt(series_id, structure))}" src="{source}">'

    def _form(self, series_id: str, structure: str | None, back: str) -> str:
        what = f"{structure} of {series_id}" if structure else f"the whole series {series_id}"
        return FORM.format(series_id=html.escape(series_id), structure=html.escape(structure or ""),
                           what=html.escape(what),
                           back=html.escape(back), reviewer=html.escape(self.reviewer),
                           token=html.escape(self.token), label_map_key=html.escape(self.label_map_key(series_id) or ""))

    def token_matches(self, form: dict[str, str]) -> bool:
        """Whether ``form`` sends back this site's token (compared in constant time: no guessing it piecewise)."""
        return hmac.compare_digest(form.get("token", "").encode(), self.token.encode())

    def overlay_picture(self, series_id: str, name: str) -> Picture | None:
        """The cached (or newly drawn) mosaic ``name`` of a known series and structure, or a picture saying
        why there is none (e.g. the image is no longer where the manifest says); None for an unknown one."""
        thumbnail = name.endswith(".thumb.png")
        structure = name.removesuffix(".png").removesuffix(".thumb")
        if not self.known(series_id, None if structure == "series" else structure):
            return None
        request = OverlayRequest(series_id, None if structure == "series" else structure, self.pooled_structures)
        overlay = ensure_overlays(self.results_dir, [request], workers=1)[0]
        if overlay.path is None:
            size = THUMBNAIL_SIZE if thumbnail else FULL_SIZE
            return Picture(problem_svg(overlay.problem or "no overlay", *size), "image/svg+xml")
        return Picture((request.thumbnail(self.results_dir) if thumbnail else overlay.path).read_bytes(), "image/png")

    def known(self, series_id: str, structure: str | None) -> bool:
        """Whether the run has the series and, if named, the structure in it: one it measured, or one the
        study pools from measured parts (``kidney``, or a pooled row of the study's own ``pooled_structures``),
        whose z-score outliers the queue lists."""
        rows = self.features["series_id"] == series_id
        if structure is None:
            return bool(rows.any()) or bool((self.series["series_id"] == series_id).any())
        measured = set(self.features.loc[rows, "structure"])
        parts = parts_of(structure, self.pooled_structures)
        return structure in measured or bool(parts) and set(parts) <= measured

    def decide(self, form: dict[str, str]) -> Decision:
        """Record the decision of ``form`` with the label map it judged; refused (``ValueError``) when the run
        has segmented the series anew since these pages read its row, since the reviewer judged the old one."""
        structure = form.get("structure") or None
        if not self.known(form.get("series_id", ""), structure):
            raise ValueError(f"unknown series or structure: {form.get('series_id')!r} {structure!r}")
        series_id = form["series_id"]
        now = _label_map_keys(read_series_row(self.results_dir, series_id)).get(series_id)
        judged = form.get("label_map_key", self.label_map_key(series_id) or "") or None
        if judged != now:
            raise ValueError(f"{series_id} was segmented anew after this page was made (a `cohort run` since); "
                             "nothing was recorded: restart `cohort review` and look at the new segmentation")
        decision = Decision(series_id=series_id, structure=structure, decision=form.get("decision", ""),
                            reviewer=form.get("reviewer", ""), comment=form.get("comment", ""), label_map_key=now)
        append_decision(self.results_dir, decision)
        log.info("review: %s %s %s by %s", decision.decision, decision.series_id, structure or "(series)",
                 decision.reviewer)
        return decision


@dataclass(frozen=True)
class Picture:
    """What an ``<img>`` of the pages gets: the bytes and their content type."""

    body: bytes
    content_type: str


def read_series_row(results_dir: Path, series_id: str) -> pd.DataFrame:
    """The ``series/`` row of ``series_id`` as the run's folder holds it now (read anew: a run may have redone it)."""
    return pd.read_parquet(Path(results_dir) / "series", filters=[("series_id", "==", series_id)])


def _label_map_keys(series: pd.DataFrame) -> dict[str, str | None]:
    """The ``source_key`` of the label map each ``series/`` row was measured on, by series id."""
    if "run_settings" not in series.columns:
        return {}
    contents = series["input_content"] if "input_content" in series else [None] * len(series)
    return {sid: series_label_map_key(settings, content)
            for sid, settings, content in zip(series["series_id"], series["run_settings"], contents)}


def problem_svg(problem: str, width: int, height: int) -> bytes:
    """A dark picture of ``width`` x ``height`` pixels with ``problem`` written on it, shown where an overlay
    cannot be drawn, so that the reviewer reads why instead of seeing a broken image.

    >>> b"not in the manifest" in problem_svg("S1: its image is not in the manifest", 360, 240)
    True
    """
    lines = textwrap.wrap(problem, width=max(20, width // 7))
    spans = "".join(f'<tspan x="50%" dy="1.3em">{html.escape(line)}</tspan>' for line in lines)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
            f'<rect width="100%" height="100%" fill="#222"/><text y="{height / 2 - 10 * len(lines)}" fill="#eee" '
            f'font-family="sans-serif" font-size="12" text-anchor="middle">{spans}</text></svg>').encode()


def series_link(series_id: str, structure: str | None = None) -> str:
    """The path of a series' review page, opened at ``structure``.

    >>> series_link("S 1", "vertebrae_L4")
    '/series/S%201?structure=vertebrae_L4'
    """
    path = f"/series/{urllib.parse.quote(series_id)}"
    return f"{path}?{urllib.parse.urlencode({'structure': structure})}" if structure else path


def _escaped(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its text cells HTML-escaped: a table rendered with ``escape=False`` (for its cells of
    form markup) must not run a structure name of a custom class map as markup on a page that holds the token.

    >>> _escaped(pd.DataFrame({"structure": ["<img src=x>"], "volume_ml": [1.5]})).values.tolist()
    [['&lt;img src=x&gt;', 1.5]]
    """
    return frame.apply(lambda column: column.map(lambda value: html.escape(value) if isinstance(value, str) else value))


def names_this_machine(authority: str) -> bool:
    """Whether a ``Host`` value (or an origin's ``host[:port]``) names this machine: 127.0.0.1 or
    localhost, on any port, since a reviewer on a cluster often reaches the page through an SSH
    tunnel to another local port (``ssh -L 9000:127.0.0.1:8799``). A foreign name resolving to
    127.0.0.1 (DNS rebinding) does not.

    >>> names_this_machine("127.0.0.1:8799"), names_this_machine("localhost:9000"), names_this_machine("LOCALHOST")
    (True, True, True)
    >>> names_this_machine("evil.example.com:8799"), names_this_machine("127.0.0.1:8799@evil.example.com")
    (False, False)
    """
    parts = urllib.parse.urlsplit(f"//{authority}")
    try:
        parts.port  # noqa: B018 (raises for a malformed port)
    except ValueError:
        return False
    return not parts.username and not parts.password and (parts.hostname or "") in LOCAL_NAMES


def same_origin(headers: Message) -> bool:
    """Whether a POST comes from a page of this machine's server, as far as the browser says: its
    ``Origin``, or without one its ``Referer``, must be http:// on 127.0.0.1 or localhost. A
    request with neither (browsers send ``Origin`` with every form POST) is left to the token."""
    origin = headers.get("Origin") or headers.get("Referer")
    if origin is None:
        return True
    parts = urllib.parse.urlsplit(origin)
    return parts.scheme == "http" and names_this_machine(parts.netloc)


def local_path(back: str) -> str:
    """``back`` if it is a path on this site, else ``/``: the redirect after a decision must not leave it.

    ``//host/x`` and ``/\\host`` are other sites to a browser, and it drops tabs and newlines before
    reading a URL, so only a printable ASCII path (as the pages write it) with no scheme or host passes."""
    parts = urllib.parse.urlsplit(back)
    if (back.startswith("/") and back[1:2] not in ("/", "\\") and not parts.scheme and not parts.netloc
            and back.isascii() and back.isprintable()):
        return back
    return "/"


def make_server(site: ReviewSite, port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server for ``site`` on 127.0.0.1:``port`` (0: a free port; see ``server_address``)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if not self._host_is_local():
                return
            url = urllib.parse.urlsplit(self.path)
            path = urllib.parse.unquote(url.path)
            if path == "/":
                return self._send(site.index_page().encode(), "text/html; charset=utf-8")
            structure = urllib.parse.parse_qs(url.query).get("structure", [None])[0]
            series_id = path.removeprefix("/series/")
            if path.startswith("/series/") and site.known(series_id, structure):
                return self._send(site.series_page(series_id, structure).encode(), "text/html; charset=utf-8")
            parts = path.split("/")
            if len(parts) == 4 and parts[1] == "qc" and parts[3].endswith(".png"):
                picture = site.overlay_picture(parts[2], parts[3])
                if picture is not None:
                    return self._send(picture.body, picture.content_type)
            if path == "/favicon.ico":
                return self._send(b"", "image/x-icon")
            self.send_error(HTTPStatus.NOT_FOUND)

        def do_POST(self) -> None:  # noqa: N802
            length = self.headers.get("Content-Length", "0")
            if not length.isdigit():  # a request no browser sends: a one-line answer, not a traceback or a read to EOF
                return self._refuse(HTTPStatus.BAD_REQUEST, "refused: Content-Length is not a byte count")
            body = self.rfile.read(int(length))  # read before any answer, so that a refusal is not cut off by a reset
            if not self._host_is_local():
                return
            if self.path != "/decide":
                return self.send_error(HTTPStatus.NOT_FOUND)
            if not same_origin(self.headers):
                return self._refuse(HTTPStatus.FORBIDDEN, "refused: the request comes from another site")
            try:
                form = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True))
            except UnicodeDecodeError:
                return self._refuse(HTTPStatus.BAD_REQUEST, "refused: the form is not UTF-8")
            if not site.token_matches(form):
                return self._refuse(HTTPStatus.FORBIDDEN, "refused: missing or wrong token (reload the review page)")
            try:
                site.decide(form)
            except ValueError as error:  # in the body, not the status line: a name need not be Latin-1
                return self._refuse(HTTPStatus.BAD_REQUEST, f"refused: {error}")
            self.send_response(HTTPStatus.SEE_OTHER)
            self.send_header("Location", local_path(form.get("back", "/")))
            self.end_headers()

        def _host_is_local(self) -> bool:
            """Whether the request names this server as its host; if not, it is refused (421) here: a page
            of a foreign name that resolves to 127.0.0.1 (DNS rebinding) must not read or post to ours."""
            host = (self.headers.get("Host") or "").lower()
            if names_this_machine(host):
                return True
            self._refuse(HTTPStatus.MISDIRECTED_REQUEST, "refused: this server only answers to 127.0.0.1 or localhost")
            return False

        def _refuse(self, status: HTTPStatus, message: str) -> None:
            """Answer ``status`` with a one-line plain-text ``message``; nothing of the request is written."""
            log.warning("review: %s %s: %s", self.command, self.path, message)
            body = (message + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _send(self, body: bytes, content_type: str) -> None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Frame-Options", "DENY")  # no other site may frame a page and steer clicks on it
            self.send_header("Content-Security-Policy", "frame-ancestors 'none'")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            log.debug(format, *args)

    return ReviewServer((HOST, port), Handler)


class ReviewServer(ThreadingHTTPServer):
    """The review site's server: a browser that leaves before its answer is not an error."""

    def handle_error(self, request: object, client_address: tuple[str, int]) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):  # reset or closed: another page was opened meanwhile
            log.debug("review: %s left before the answer", client_address[0])
            return
        super().handle_error(request, client_address)


def serve(results_dir: Path, port: int = 8765, stats_dir: Path | None = None,
          ready: threading.Event | None = None) -> None:
    """Serve the review pages until interrupted (Ctrl-C); a port that cannot be had stops with a message."""
    site = ReviewSite.load(results_dir, stats_dir)
    try:
        server = make_server(site, port)
    except OSError as error:
        raise RunCannotStart(f"cannot listen on {HOST}:{port} ({error.strerror or error}); another `cohort review` "
                             "may be running there: pass another --port (0: any free port)") from None
    print(f"review: http://{HOST}:{server.server_address[1]}/  (Ctrl-C to stop)", flush=True)
    if ready is not None:
        ready.set()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
