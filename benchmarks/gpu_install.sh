# Make cohort, its Prefect server, dask-cuda and TotalSegmentator's CLI usable on the lent GPU
# machine (no network) from the archive that benchmarks/gpu_bundle.sh built. Source it from the
# repository copy, first thing in the device command (see docs/gpu.md):
#
#   source benchmarks/gpu_install.sh || exit 1
#
# It unpacks .gpu/site.tar.xz into /tmp/site (GPU_SITE), exports PYTHONPATH=/tmp/site and
# PATH=/tmp/site/bin:$PATH, makes `cohort`, `TotalSegmentator` and the other console scripts of the
# bundled packages (wrappers for the machine's python3; `cohort` and `TotalSegmentator` are also
# put beside python3, where cohort.testing.parity looks for the CLI), links this repository's
# cohort package (with flows/ and stats/ as cohort.flows and cohort.stats, as pyproject.toml maps
# them) so the code that runs is the working tree's, byte-compiles the site, and imports the key
# modules, printing one line of versions. Any missing module stops it with a non-zero status (and
# ends a non-interactive shell that sourced it), naming the module.
# Variables: PYTHON (default python3), GPU_BUNDLE (default <repo>/.gpu/site.tar.xz), GPU_SITE.

_gpu_install() {
    local repo site bundle py pyexe stamp start
    start=$(date +%s.%N)
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    site=${GPU_SITE:-/tmp/site}
    bundle=${GPU_BUNDLE:-$repo/.gpu/site.tar.xz}
    py=${PYTHON:-python3}
    pyexe=$("$py" -c 'import sys; print(sys.executable)') || { echo "gpu_install: no $py" >&2; return 1; }
    if [ ! -f "$bundle" ]; then
        echo "gpu_install: $bundle is missing: build it with benchmarks/gpu_bundle.sh and carry .gpu" >&2
        return 1
    fi

    # 1. Unpack (once per bundle: a second source only re-exports).
    stamp="$(stat -c '%s %Y' "$bundle") $bundle"
    if [ "$(cat "$site/.gpu-bundle-stamp" 2>/dev/null)" != "$stamp" ]; then
        rm -rf "$site" && mkdir -p "$site" || return 1
        if command -v xz >/dev/null; then
            xz -dc -T0 "$bundle" | tar -x -C "$site" || { echo "gpu_install: unpacking $bundle failed" >&2; return 1; }
        else
            "$py" -c 'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2])' \
                "$bundle" "$site" || { echo "gpu_install: unpacking $bundle failed" >&2; return 1; }
        fi
        echo "$stamp" > "$site/.gpu-bundle-stamp"
    fi

    # 2. cohort from this working tree, laid out as the installed package.
    [ -e "$repo/cohort/flows" ] || ln -s ../flows "$repo/cohort/flows"
    [ -e "$repo/cohort/stats" ] || ln -s ../stats "$repo/cohort/stats"
    ln -sfn "$repo/cohort" "$site/cohort"

    case ":${PYTHONPATH:-}:" in *":$site:"*) ;; *) export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" ;; esac
    case ":$PATH:" in *":$site/bin:"*) ;; *) export PATH="$site/bin:$PATH" ;; esac
    # Nothing outside the machine answers: no telemetry attempts from Prefect.
    export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false

    # 3. Console scripts, a minimal dist-info for cohort, byte-compiled site, import check.
    "$pyexe" - "$site" "$repo" <<'EOF'
import compileall, configparser, os, re, sys, time
from pathlib import Path

site, repo = Path(sys.argv[1]), Path(sys.argv[2])
pydir = Path(sys.executable).parent
version = re.search(r'__version__ = "([^"]+)"', (repo / "cohort/__init__.py").read_text()).group(1)
info = site / f"cohort-{version}.dist-info"
if not info.exists():
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: cohort\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[console_scripts]\ncohort = cohort.cli:main\n")
scripts = {}
for entry_points in sorted(site.glob("*.dist-info/entry_points.txt")):
    parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    parser.optionxform = str
    parser.read(entry_points)
    if parser.has_section("console_scripts"):
        scripts.update(parser.items("console_scripts"))
(site / "bin").mkdir(exist_ok=True)
for name, target in scripts.items():
    module, _, attr = target.partition(":")
    attr = attr.split("[")[0].strip()
    text = (f"#!{sys.executable}\nimport sys\n"
            f"if {str(site)!r} not in sys.path:\n    sys.path.insert(1, {str(site)!r})\n"
            f"from {module.strip()} import {attr.split('.')[0]}\n"
            f"if __name__ == '__main__':   # not again in a spawned child (Dask's workers)\n"
            f"    sys.argv[0] = {name!r}\n    sys.exit({attr}())\n")
    for folder in (site / "bin", pydir) if name in ("cohort", "TotalSegmentator") else (site / "bin",):
        path = folder / name
        if folder == pydir and path.exists() and "gpu_install" not in path.read_text(errors="replace"):
            continue                               # the machine's own command stays
        try:
            path.write_text(text.replace("import sys\n", "import sys  # written by gpu_install\n", 1))
            path.chmod(0o755)
        except OSError as error:
            print(f"gpu_install: note: cannot write {path} ({error}); use {site / 'bin' / name}", file=sys.stderr)

started = time.perf_counter()
compileall.compile_dir(site, quiet=2, workers=1, ddir=None)
compile_s = time.perf_counter() - started

# The modules that `cohort run` (driver, Dask workers, its Prefect server), --cluster cuda and
# TotalSegmentator's CLI import.
MODULES = """cohort cohort.cli cohort.api cohort.driver cohort.pipeline cohort.flows.run_flow cohort.flows.clusters
cohort.flows.prefect_server cohort.flows.cuda cohort.segmentation.segmenter cohort.testing.weights cohort.testing.parity
cohort.ingest.dicom cohort.store
numpy scipy pandas pyarrow torch SimpleITK nibabel pydicom zarr numcodecs dask distributed
nnunetv2 nnunetv2.inference.predict_from_raw_data batchgenerators batchgeneratorsv2 acvl_utils
dynamic_network_architectures blosc2 cc3d
prefect prefect.flows prefect.server.api.server uvicorn fastapi starlette sqlalchemy aiosqlite alembic
asyncpg pydantic pydantic_settings
totalsegmentator totalsegmentator.python_api totalsegmentator.bin.TotalSegmentator dicom2nifti""".split()
failed = []
for name in MODULES:
    try:
        __import__(name)
    except Exception as error:                      # ImportError, or a module failing at import
        failed.append(f"{name}: {type(error).__name__}: {error}")
if failed:
    print("gpu_install: FAILED imports (a package is missing from benchmarks/gpu_bundle.sh?):", file=sys.stderr)
    for line in failed:
        print("  " + line, file=sys.stderr)
    sys.exit(1)
try:  # only the one-worker-per-GPU runs need it; the rest of the check runs without
    from dask_cuda import LocalCUDACluster  # noqa: F401
except Exception as error:
    print(f"gpu_install: WARNING: from dask_cuda import LocalCUDACluster: {error!r}; the cohort_run_* steps "
          "with one worker per GPU will fail, the others run", file=sys.stderr)

# Bundled packages whose requirements the machine does not meet (a warning: the device's own
# versions are used for everything not bundled).
import importlib.metadata as md
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
NOT_BUNDLED = {"argparse", "unittest2", "future", "yacs", "python-gdcm", "blosc", "dipy", "xvfbwrapper", "imgkit",
               "xmltodict", "apprise", "docker", "dateparser", "cyclopts", "readchar", "ruamel-yaml", "semver",
               "griffe", "python-json-logger", "rapids-dask-dependency", "duckdb", "importlib-metadata",
               "importlib-resources", "imagecodecs", "fft-conv-pytorch", "pycparser", "fury", "vtk",
               "trx-python", "pygltflib"}
warnings = []
for dist in md.distributions(path=[str(site)]):
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        try:
            have = md.version(req.name)
        except md.PackageNotFoundError:
            if name not in NOT_BUNDLED:
                warnings.append(f"{dist.metadata['Name']} needs {req.name} (absent)")
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            warnings.append(f"{dist.metadata['Name']} needs {req}, found {have}")
if warnings:
    print("gpu_install: warning: " + "; ".join(sorted(set(warnings))), file=sys.stderr)

import dask, dask_cuda, nnunetv2, numpy, pandas, prefect, pyarrow, SimpleITK, torch, totalsegmentator, zarr  # noqa: E401
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA GPU"
print(f"gpu_install: python {sys.version.split()[0]}, torch {torch.__version__} ({gpu}), numpy {numpy.__version__}, "
      f"pandas {pandas.__version__}, pyarrow {pyarrow.__version__}, "
      f"nnunetv2 {md.version('nnunetv2')}, prefect {prefect.__version__}, dask {dask.__version__}, "
      f"distributed {md.version('distributed')}, dask-cuda {dask_cuda.__version__}, SimpleITK {SimpleITK.__version__}, "
      f"TotalSegmentator {md.version('TotalSegmentator')}, zarr {zarr.__version__}; compiled in {compile_s:.1f} s")
EOF
    local status=$?
    if [ $status -ne 0 ]; then
        echo "gpu_install: FAILED (status $status)" >&2
        return $status
    fi
    echo "gpu_install: ready in $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }') s:" \
         "PYTHONPATH=$PYTHONPATH, commands in $site/bin"
}

if ! _gpu_install; then
    unset -f _gpu_install
    # Fail loudly: end a script that sourced this (the device command), not an interactive shell.
    case $- in *i*) return 1 ;; *) exit 1 ;; esac
fi
unset -f _gpu_install
