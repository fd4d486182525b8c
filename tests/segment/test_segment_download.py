"""``cohort models download`` against a real HTTP server on 127.0.0.1 (with Range support written
here) serving zip archives of random weights: resume after a cut connection, truncated and
tampered archives (exit 2, no half model folder), pattern layouts. Nothing leaves the machine."""

from __future__ import annotations

import hashlib
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from cohort.segmentation import check_model_ready, load_model_spec, resolve_weights_dir
from cohort.segmentation.download import fetch
from cohort.segmentation.registry import MODELS_DIR
from cohort.segmentation.weights import checkpoint_paths
from cohort.testing.weights import build_weights
from testkit import cohort_cli


class Archives(ThreadingHTTPServer):
    """Serves ``files`` (name -> bytes); names in ``cut`` are cut after half their bytes on the
    first request; every request's Range header is recorded."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.ranges: list[tuple[str, str | None]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class RangeHandler(BaseHTTPRequestHandler):
    server: Archives

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        name = self.path.lstrip("/")
        self.server.ranges.append((name, self.headers.get("Range")))
        data = self.server.files.get(name)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if name in self.server.cut:
            self.server.cut.discard(name)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)  # the connection dies mid-way
            return
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    archives = Archives()
    thread = threading.Thread(target=archives.serve_forever, daemon=True)
    thread.start()
    yield archives
    archives.shutdown()
    archives.server_close()


def _zip_weights(spec, tmp_path: Path) -> tuple[str, bytes, Path]:
    """A release archive of random weights of ``spec``'s single network: (file name, bytes, source folder)."""
    source = tmp_path / "built"
    build_weights(spec, source, "small", seed=5)
    (dataset,) = [p for p in source.iterdir()]
    archive = tmp_path / "archive.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(dataset.rglob("*")):
            bundle.write(path, path.relative_to(source).as_posix())
    name = spec.weights_url.format(dataset=spec.networks[0].dataset, dataset_id=spec.networks[0].dataset_id)
    return name.rsplit("/", 1)[-1], archive.read_bytes(), dataset


def _leftovers(weights: Path) -> list[str]:
    return sorted(p.name for p in weights.rglob("*") if p.name.startswith(".unpack") or p.suffix == ".part")


@pytest.mark.parametrize("model", ["fast", "vibeseg"])
def test_download_resumes_after_a_cut_and_installs_the_model(model, server, tmp_path):
    spec = load_model_spec(model)
    name, data, source = _zip_weights(spec, tmp_path)
    server.files[name] = data
    server.cut.add(name)
    weights = tmp_path / "weights"
    result = cohort_cli("models", "download", model, "--weights", str(weights), "--mirror", server.url)
    assert result.returncode == 0, result.stderr
    assert "installed" in result.stdout and "%" in result.stderr  # progress was shown
    first, resumed = [r for n, r in server.ranges if n == name]
    assert first is None and resumed.startswith("bytes=") and 0 < int(resumed[6:-1]) < len(data), server.ranges
    check_model_ready(spec, weights)
    for installed in checkpoint_paths(spec, spec.networks[0], weights):
        original = source / installed.relative_to(weights / source.name)
        assert installed.read_bytes() == original.read_bytes()
    assert _leftovers(weights) == []
    # A second call finds it present and fetches nothing.
    again = cohort_cli("models", "download", model, "--weights", str(weights), "--mirror", server.url)
    assert again.returncode == 0 and "present" in again.stdout and len(server.ranges) == 2


def test_truncated_archive_exits_2_and_leaves_no_model_folder(server, tmp_path):
    spec = load_model_spec("fast")
    name, data, _ = _zip_weights(spec, tmp_path)
    server.files[name] = data[: len(data) * 3 // 5]  # served whole, but the archive itself is cut
    weights = tmp_path / "weights"
    result = cohort_cli("models", "download", "fast", "--weights", str(weights), "--mirror", server.url)
    assert result.returncode == 2
    assert "corrupt archive" in result.stderr and name in result.stderr
    assert not any(p.name.startswith("Dataset") for p in weights.iterdir())
    assert _leftovers(weights) == []


def test_sha256_recorded_in_a_model_file_is_checked(server, tmp_path):
    """A model defined only in a temporary folder, with the archive's sha256 recorded."""
    spec = load_model_spec("fast")
    name, data, _ = _zip_weights(spec, tmp_path)
    server.files[name] = data
    config = yaml.safe_load((MODELS_DIR / "fast.yaml").read_text()) | {"name": "pinned"}
    for digest, expected_code in (("0" * 64, 2), (hashlib.sha256(data).hexdigest(), 0)):
        config["networks"][0]["sha256"] = digest
        model = tmp_path / "pinned.yaml"
        model.write_text(yaml.safe_dump(config))
        weights = tmp_path / "weights"
        result = cohort_cli("models", "download", str(model), "--weights", str(weights), "--mirror", server.url)
        assert result.returncode == expected_code, result.stderr
        if expected_code == 2:
            assert "sha256" in result.stderr and not (weights / spec.networks[0].dataset).exists()
    check_model_ready(load_model_spec(str(model)), weights)


def test_a_part_file_from_an_interrupted_command_is_resumed(server, tmp_path):
    payload = bytes(range(256)) * 4000
    server.files["blob.zip"] = payload
    folder = tmp_path / "downloads"
    folder.mkdir()
    (folder / "blob.zip.part").write_bytes(payload[:123_456])
    done = fetch(server.url + "blob.zip", folder, lambda *_: None)
    assert done.read_bytes() == payload
    assert server.ranges == [("blob.zip", "bytes=123456-")]


def test_missing_server_file_and_missing_model_name_the_fix(server, tmp_path):
    result = cohort_cli("models", "download", "fastest", "--weights", str(tmp_path), "--mirror", server.url)
    assert result.returncode == 2 and "HTTP 404" in result.stderr
    spec = load_model_spec("vibeseg")
    with pytest.raises(Exception, match=f"cohort models download vibeseg --weights {tmp_path}") as info:
        check_model_ready(spec, tmp_path)
    assert f"unzip -o /tmp/100.zip -d {tmp_path / 'Dataset100'}" in str(info.value)  # where its code unpacks it


def test_a_mirror_folder_installs_the_model_and_a_file_it_lacks_fails_at_once(tmp_path):
    """``--mirror`` may be a folder (an offline copy on a cluster's shared disk): read from it, and a
    file missing there is named in one line, not retried as a lost connection."""
    spec = load_model_spec("fast")
    name, data, _ = _zip_weights(spec, tmp_path)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    weights = tmp_path / "weights"
    missing = cohort_cli("models", "download", "fast", "--weights", str(weights), "--mirror", str(mirror))
    assert missing.returncode == 2 and "No such file or directory" in missing.stderr, missing.stderr
    assert "attempt" not in missing.stderr
    (mirror / name).write_bytes(data)
    (weights / ".downloads" / f"{name}.part").write_bytes(data[:1000])  # a file: URL ignores a Range request
    result = cohort_cli("models", "download", "fast", "--weights", str(weights), "--mirror", str(mirror))
    assert result.returncode == 0, result.stderr
    check_model_ready(spec, weights)


def test_a_vibeseg_release_holding_the_dataset_folders_content_installs_as_its_code_unpacks_it(server, tmp_path):
    """VIBESegmentator's code unpacks ``100.zip`` into ``<weights>/Dataset100/`` and looks for the model
    folder right inside: the archive holds the dataset folder's content, not the folder. Such an
    archive failed ("holds no folder Dataset100_*"), and weights its own code had unpacked were
    not found."""
    spec = load_model_spec("vibeseg")
    source = tmp_path / "built"
    dataset = build_weights(spec, source, "small", seed=5)[0].parent
    archive = tmp_path / "100.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(dataset.rglob("*")):
            bundle.write(path, path.relative_to(dataset).as_posix())  # nnUNetTrainer__…/fold_0/…
    server.files["100.zip"] = archive.read_bytes()
    weights = tmp_path / "weights"
    result = cohort_cli("models", "download", "vibeseg", "--weights", str(weights), "--mirror", server.url)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in weights.iterdir() if not p.name.startswith(".")) == ["Dataset100"]
    check_model_ready(spec, weights)
    assert _leftovers(weights) == []


def test_further_archives_a_release_lists_are_fetched_into_its_dataset_folder(server, tmp_path):
    """VIBESegmentator's code fetches the archives a release's ``other_downloads.json`` lists
    (``100<suffix>.zip``, more folds) into the same folder and then removes the list; cohort installed
    the first archive alone and ensembled its folds only, without a word."""
    spec = load_model_spec("vibeseg")
    model_folder = build_weights(spec, tmp_path / "built", "small", seed=5)[0]
    dataset = model_folder.parent
    (dataset / "other_downloads.json").write_text('["_fold1"]')
    for name, paths in (("100.zip", [p for p in dataset.rglob("*") if "fold_1" not in p.parts]),
                        ("100_fold1.zip", [p for p in dataset.rglob("*") if "fold_1" in p.parts])):
        with zipfile.ZipFile(tmp_path / name, "w") as bundle:
            for path in sorted(paths):
                bundle.write(path, path.relative_to(dataset).as_posix())
        server.files[name] = (tmp_path / name).read_bytes()
    weights = tmp_path / "weights"
    (weights / "Dataset100").mkdir(parents=True)  # as the first archive left it, before its further ones
    with zipfile.ZipFile(tmp_path / "100.zip") as bundle:
        bundle.extractall(weights / "Dataset100")
    with pytest.raises(Exception, match=r"incomplete: Dataset100\*.*other_downloads.json"):
        check_model_ready(spec, weights)
    for folder in (weights, tmp_path / "fresh"):  # the further archive alone; both from scratch
        result = cohort_cli("models", "download", "vibeseg", "--weights", str(folder), "--mirror", server.url)
        assert result.returncode == 0, result.stderr
        check_model_ready(spec, folder)
        installed = folder / "Dataset100" / model_folder.name
        assert sorted(p.name for p in installed.glob("fold_*")) == ["fold_0", "fold_1"]
        assert not (folder / "Dataset100" / "other_downloads.json").exists() and _leftovers(folder) == []
    assert [name for name, _ in server.ranges] == ["100_fold1.zip", "100.zip", "100_fold1.zip"]


def test_vibesegmentators_own_weights_folder_is_where_vibeseg_is_downloaded_and_found(server, tmp_path, monkeypatch):
    """A user of VIBESegmentator keeps its weights in ``$TOTALVIBE_WEIGHTS_PATH``; cohort looked only
    in TotalSegmentator's folders, so it downloaded them a second time and never found the first."""
    spec = load_model_spec("vibeseg")
    dataset = build_weights(spec, tmp_path / "built", "small", seed=5)[0].parent
    archive = tmp_path / "100.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(dataset.rglob("*")):
            bundle.write(path, path.relative_to(dataset).as_posix())
    server.files["100.zip"] = archive.read_bytes()
    monkeypatch.setenv("TOTALVIBE_WEIGHTS_PATH", str(tmp_path / "vibe"))
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path / "totalseg"))
    assert resolve_weights_dir(None, spec) == tmp_path / "vibe"
    assert resolve_weights_dir(None, load_model_spec("fast")) == tmp_path / "totalseg"
    assert resolve_weights_dir(tmp_path / "explicit", spec) == tmp_path / "explicit"

    result = cohort_cli("models", "download", "vibeseg", "--mirror", server.url)
    assert result.returncode == 0, result.stderr
    check_model_ready(spec, tmp_path / "vibe")
    assert not (tmp_path / "totalseg").exists()

    report = cohort_cli("models").stdout
    assert f"weights folder: {tmp_path / 'totalseg'} (from $TOTALSEG_WEIGHTS_PATH)" in report
    vibeseg = report[report.index("vibeseg: "):]
    assert vibeseg.startswith("vibeseg: present")
    assert f"weights folder: {tmp_path / 'vibe'} (from $TOTALVIBE_WEIGHTS_PATH" in vibeseg
