#!/usr/bin/env bash
# Build the Python packages that cohort, dask-cuda and TotalSegmentator need on the lent GPU
# machine (no network there) into ONE archive, .gpu/site.tar.xz, to be carried to the machine
# and unpacked there by benchmarks/gpu_install.sh (see docs/gpu.md).
#
#   benchmarks/gpu_bundle.sh                          # -> .gpu/ for the device's Python 3.12
#   benchmarks/gpu_bundle.sh --python-version 3.11 --out /tmp/gpu311   # a bundle to test here
#
# Run it here (with PyPI). Only packages MISSING on the device are bundled, with --no-deps, at the
# versions this repository is tested with (`pip freeze` of the dev venv); the device's own
# numpy, scipy, pandas, pyarrow, torch, torchvision, timm, matplotlib, scikit-image, rich, httpx,
# click, typer, jinja2, psutil, cloudpickle, toolz, msgpack, pyyaml, nvidia-ml-py, cuda-core, ...
# are used as they are. cohort itself is NOT in the archive: gpu_install.sh uses the repository
# copy that travels with the command, so the code that runs is always the code of the working tree.
#
# The archive is small enough to travel because (1) xz -9 packs SimpleITK's 272 MB library to
# about 28 MB (its wheel is 53 MB), (2) debug sections are stripped from extension modules
# (numcodecs, cc3d, asyncpg, sqlalchemy, ...: ~60 MB of DWARF), (3) tests, type stubs, C sources,
# Prefect's UI builds (cohort's Prefect server runs with the UI off) and pydicom's test files are
# left out, and (4) optional packages that nothing imports on these paths (imagecodecs,
# python-gdcm, duckdb, vtk/fury/dipy, blosc, apprise, docker, ...) are not bundled.
#
# Environment: PYTHON (default python3; needs pip and network), COHORT_GPU_WHEELS (wheel cache,
# default ~/.cache/cohort-gpu/wheels-cpXY).
set -euo pipefail

PYV=3.12
OUT=.gpu
while [ $# -gt 0 ]; do
    case "$1" in
        --python-version) PYV=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "gpu_bundle.sh: unknown argument $1 (use --python-version X.Y, --out DIR)" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TAG=cp${PYV/./}
WHEELS=${COHORT_GPU_WHEELS:-$HOME/.cache/cohort-gpu/wheels-$TAG}
mkdir -p "$WHEELS" "$OUT"

# ---------------------------------------------------------------------------------------------
# The packages missing on the device (cp312 image, see docs/gpu.md), grouped by who needs them.
# ---------------------------------------------------------------------------------------------
PACKAGES=(
    # cohort's own runtime dependencies (pyproject.toml) that the device lacks
    dask==2026.8.0 distributed==2026.8.0
    zarr==3.1.6 nibabel==5.4.2 simpleitk==2.5.7 pydicom==3.0.2
    isal==1.9.1                                    # gzip NIfTI read (cohort.ingest.nifti)
    prefect==3.9.1 fastapi==0.150.0                # fastapi<0.151: Prefect 3.8+'s server (constraints.txt)
    # dask / distributed
    partd==1.4.2 locket==1.0.0 zict==3.0.0 tblib==3.2.2 tornado==6.6.1
    # zarr
    numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
    # nnunetv2 (imported by cohort's segmenter and by TotalSegmentator)
    nnunetv2==2.8.1 acvl-utils==0.2.6 batchgenerators==0.25.5 batchgeneratorsv2==0.3.6
    dynamic-network-architectures==0.4.4 connected-components-3d==4.1.1
    blosc2==4.14.1 ndindex==1.10.1 numexpr==2.14.2 graphviz==0.21
    # prefect (client, flow engine) and cohort's own Prefect server (uvicorn + fastapi + sqlite)
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
    pydantic-settings==2.16.3 python-dotenv==1.2.4 pydantic-extra-types==2.11.1
    starlette==1.10.0 uvicorn==0.54.0 websockets==16.1.1 asgi-lifespan==2.1.0 sniffio==1.3.1
    sqlalchemy==2.1.9 greenlet==3.5.6 aiosqlite==0.22.1 alembic==1.20.1 mako==1.4.3 asyncpg==0.32.0
    cryptography==50.0.2 cffi==2.1.1
    opentelemetry-api==1.45.2 orjson==3.13.0 pendulum==3.3.0 whenever==0.11.0 tzdata==2026.6 pytz==2026.6
    python-slugify==9.1.3 text-unidecode==1.3 coolname==5.0.0 cachetools==7.3.3 toml==0.10.2
    rfc3339-validator==0.1.4 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0
    rpds-py==2026.9.1 jsonpointer==3.12 jsonpatch==1.48 jinja2-humanize-extension==0.4.0
    griffelib==2.4.1 griffecli==2.4.1 exceptiongroup==1.3.2 amplitude-analytics==1.3.0
    h2==4.4.1 hpack==4.2.0 hyperframe==6.1.0
    pydocket==0.27.0 py-key-value-aio==0.5.0 beartype==0.23.1 redis==8.1.0 burner-redis==0.1.7
    cronsim==2.8 uncalled-for==0.6.2
    # TotalSegmentator's CLI (the reference in benchmarks/bench_segment.py; `--ml` path)
    totalsegmentator==2.18.0 dicom2nifti==2.6.2
    # --cluster cuda (flows/cuda.py): dask-cuda imports with distributed 2026.8.0 (no version
    # guard in its code; its pip pin rapids-dask-dependency==26.10.* wants dask 2026.7.1, and
    # nothing imports rapids_dask_dependency, so it is left out). Its pynvml (nvidia-ml-py) and
    # cuda.core (cuda-core) are on the device.
    dask-cuda==26.10.0
)
if [ "${PYV#3.}" -lt 12 ]; then
    # Only below Python 3.12 (not for the device): dask and nibabel need these backports there,
    # and redis needs async-timeout below 3.11.3 (Debian 12's python3.11 is 3.11.2).
    PACKAGES+=(importlib-metadata==10.2.0 lazy-importer==0.1.0 importlib-resources==7.1.0 async-timeout==5.0.1)
fi
# Only on PyPI as a source distribution (pure Python): built here into a py3-none-any wheel.
SDIST_ONLY=(acvl-utils==0.2.6)

PLATFORMS=()
for p in manylinux_2_28 manylinux_2_27 manylinux_2_26 manylinux_2_24 manylinux_2_17 manylinux2014 \
         manylinux_2_12 manylinux2010 manylinux_2_5 manylinux1; do
    PLATFORMS+=(--platform "${p}_x86_64")
done

binary=()
for spec in "${PACKAGES[@]}"; do
    [[ " ${SDIST_ONLY[*]} " == *" $spec "* ]] || binary+=("$spec")
done
echo "gpu_bundle: downloading ${#binary[@]} wheels for Python $PYV into $WHEELS"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    "${PLATFORMS[@]}" -d "$WHEELS" "${binary[@]}"
for spec in "${SDIST_ONLY[@]}"; do
    "$PYTHON" -m pip wheel -q --no-deps -w "$WHEELS" "$spec"
done

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/cohort-gpu-site.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT

# Unpack the chosen wheels (selected by name and version, so older wheels in the cache are never
# picked up) into one site folder, as an installer would for purelib/platlib, and prune it.
"$PYTHON" - "$WHEELS" "$STAGE/site" "$PYV" "${PACKAGES[@]}" <<'EOF'
import os, shutil, sys, zipfile
from pathlib import Path
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

wheels, site, pyv, specs = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4:]
wanted = {canonicalize_name(s.split("==")[0]): Version(s.split("==")[1]) for s in specs}
found = {}
for wheel in sorted(wheels.glob("*.whl")):
    name, version, _, tags = parse_wheel_filename(wheel.name)
    if wanted.get(name) == version:
        ok = any(t.interpreter in ("py3", "py2.py3", f"cp{pyv.replace('.', '')}") or t.abi == "abi3" for t in tags)
        if ok:
            found[name] = wheel
missing = sorted(set(wanted) - set(found))
if missing:
    sys.exit(f"gpu_bundle: no wheel for {missing}")
site.mkdir(parents=True)
for name, wheel in sorted(found.items()):
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
for data in site.glob("*.data"):              # an installer's purelib/platlib; scripts/headers dropped
    for kind in ("purelib", "platlib"):
        if (data / kind).is_dir():
            shutil.copytree(data / kind, site, dirs_exist_ok=True)
    shutil.rmtree(data)
for f in site.rglob("*"):                     # executable bits as the wheel had them
    if f.is_file() and f.suffix == ".so":
        f.chmod(0o755)
# Not needed at run time: tests, stubs, sources, Prefect's UI builds (UI off), pydicom's test data.
prune = [p for p in site.rglob("*") if p.is_dir() and p.name in ("tests", "__pycache__") and p.parent != site]
prune += [site / "prefect/server/ui", site / "prefect/server/ui-v2", site / "pydicom/data/test_files", site / "bin"]
for p in prune:
    shutil.rmtree(p, ignore_errors=True)
for pattern in ("*.pyi", "*.pyx", "*.pxd", "*.c", "*.cpp", "*.h", "*.hpp"):
    for f in site.rglob(pattern):
        f.unlink()
lines = [f"{name}=={v}" for name, v in sorted(wanted.items())]
(site / "cohort-gpu-bundle.txt").write_text(f"python {pyv}\n" + "\n".join(lines) + "\n")
print(f"gpu_bundle: {len(found)} packages unpacked")
EOF

# Debug sections of extension modules (not of vendored libraries in *.libs/, which patchelf edited).
find "$STAGE/site" -path '*.libs' -prune -o \( -name '*.cpython-*.so' -o -name '*.abi3.so' \) -print0 |
    xargs -0 -r strip --strip-debug

before=$(du -sb "$STAGE/site" | cut -f1)
echo "gpu_bundle: packing $((before / 1000000)) MB with xz -9 (a minute or two)"
tar -C "$STAGE/site" -cf - . | xz -9 -T2 > "$OUT/site.tar.xz.partial"
mv "$OUT/site.tar.xz.partial" "$OUT/site.tar.xz"
cp "$STAGE/site/cohort-gpu-bundle.txt" "$OUT/"
size=$(stat -c %s "$OUT/site.tar.xz")
echo "gpu_bundle: $OUT/site.tar.xz = $size bytes ($((size / 1000000)) MB); carry: $OUT"
du -sb "$OUT"
