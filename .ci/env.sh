# Shared set-up for .ci/quickstart, .ci/test and .ci/run (sourced, not run).
#
# Idempotent: creates the Python venv with torch (the libtorch that tch 0.24 links) once per
# user and version under ~/.cache/idc, links it as the repo-local .venv, and exports what the
# build needs. Needs only the Rust toolchain and python3.
set -euo pipefail

IDC_TORCH_VERSION=2.11.0
IDC_CACHE=${IDC_CACHE:-$HOME/.cache/idc}
IDC_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$IDC_ROOT"

# Creates the venv $IDC_CACHE/$1 with the pip packages that follow, once per machine.
idc_cached_venv() {
  local venv=$IDC_CACHE/$1
  shift
  if [ ! -f "$venv/.complete" ]; then
    echo "setting up $venv ($*, once per machine)" >&2
    mkdir -p "$IDC_CACHE"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$@"
    touch "$venv/.complete"
  fi
}

idc_torch_venv() {
  # torch is about 4.6 GB.
  idc_cached_venv "torch-$IDC_TORCH_VERSION" "torch==$IDC_TORCH_VERSION" pillow numpy
  local venv=$IDC_CACHE/torch-$IDC_TORCH_VERSION
  ln -sfn "$venv" .venv
  export PATH="$IDC_ROOT/.venv/bin:$PATH"
  # torch-sys finds libtorch through the venv's python.
  export LIBTORCH_USE_PYTORCH=1
}

idc_build() {
  idc_torch_venv
  echo "building idcctl and idc-worker (release)" >&2
  cargo build --release --workspace --locked
  export PATH="${CARGO_TARGET_DIR:-$IDC_ROOT/target}/release:$PATH"
}

# A free loopback port, found with the python of venv $1.
idc_free_port() {
  "$1/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits (up to a minute) until URL $2 answers, with the python of venv $1; fails naming it.
idc_wait_http() {
  "$1/bin/python" - "$2" <<'PY'
import sys, time, urllib.request
url = sys.argv[1]
for _ in range(600):
    try:
        urllib.request.urlopen(url, timeout=1)
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit(f"the server at {url} did not start")
PY
}

# Starts a real S3 server (moto's server mode) on a free loopback port for the tests, creates the
# bucket `idc-test`, and exports what object_store and the tests read. Stopped on exit.
IDC_MOTO_VERSION=5.2.5
idc_s3_server() {
  idc_cached_venv "moto-$IDC_MOTO_VERSION" "moto[server]==$IDC_MOTO_VERSION"
  local venv=$IDC_CACHE/moto-$IDC_MOTO_VERSION
  local port
  port=$(idc_free_port "$venv")
  IDC_S3_LOG=${TMPDIR:-/tmp}/idc-moto-$port.log
  "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$IDC_S3_LOG" 2>&1 &
  IDC_S3_PID=$!
  trap 'kill $IDC_S3_PID 2>/dev/null || true' EXIT
  idc_wait_http "$venv" "http://127.0.0.1:$port"
  "$venv/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(urllib.request.Request(sys.argv[1], method="PUT"), timeout=5)' "http://127.0.0.1:$port/idc-test"
  export AWS_ENDPOINT=http://127.0.0.1:$port AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
  export AWS_ACCESS_KEY_ID=idc-test AWS_SECRET_ACCESS_KEY=idc-test-secret
  export IDC_TEST_S3_URL=s3://idc-test IDC_TEST_REQUIRE_S3=1
  echo "S3 server (moto) on 127.0.0.1:$port, bucket idc-test" >&2
}

# TensorBoard (PyPI, no TensorFlow) in a cached venv: tests/it/tensorboard.rs reads the run's event
# files with its EventAccumulator. Under CI the test must find it.
IDC_TENSORBOARD_VERSION=2.20.0
idc_tensorboard_venv() {
  idc_cached_venv "tensorboard-$IDC_TENSORBOARD_VERSION" "tensorboard==$IDC_TENSORBOARD_VERSION"
  export IDC_TEST_TENSORBOARD_PYTHON=$IDC_CACHE/tensorboard-$IDC_TENSORBOARD_VERSION/bin/python
  if [ "${CI:-}" = true ]; then
    export IDC_TEST_REQUIRE_TENSORBOARD=1
  fi
}

# Optuna, for the sweep benchmark (tests/benches/sweep.rs) that runs its TPESampler side by side
# with idc's samplers on the same problems; exports IDC_OPTUNA_PYTHON.
IDC_OPTUNA_VERSION=5.0.0
idc_optuna_venv() {
  idc_cached_venv "optuna-$IDC_OPTUNA_VERSION" "optuna==$IDC_OPTUNA_VERSION"
  export IDC_OPTUNA_PYTHON=$IDC_CACHE/optuna-$IDC_OPTUNA_VERSION/bin/python
}

# A real MLflow tracking server (mlflow-skinny and what its server needs, about a minute to
# install once per machine) on a free loopback port, with a sqlite store and proxied artifacts,
# for tests/it/mlflow.rs: exports IDC_TEST_MLFLOW_URI. Stopped on exit. Under CI the test must find it.
IDC_MLFLOW_VERSION=3.17.2
idc_mlflow_server() {
  idc_cached_venv "mlflow-$IDC_MLFLOW_VERSION" "mlflow-skinny==$IDC_MLFLOW_VERSION" flask flask-cors \
    sqlalchemy alembic graphene cryptography huey aiohttp numpy pandas
  local venv=$IDC_CACHE/mlflow-$IDC_MLFLOW_VERSION
  local port dir
  port=$(idc_free_port "$venv")
  dir=$(mktemp -d)
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false "$venv/bin/mlflow" server --workers 1 \
    --host 127.0.0.1 --port "$port" --backend-store-uri "sqlite:///$dir/mlflow.db" \
    --artifacts-destination "$dir/artifacts" >"$dir/server.log" 2>&1 &
  IDC_MLFLOW_PID=$!
  trap 'kill ${IDC_S3_PID:-} $IDC_MLFLOW_PID 2>/dev/null || true' EXIT
  idc_wait_http "$venv" "http://127.0.0.1:$port/health"
  export IDC_TEST_MLFLOW_URI=http://127.0.0.1:$port
  if [ "${CI:-}" = true ]; then
    export IDC_TEST_REQUIRE_MLFLOW=1
  fi
  echo "MLflow server on 127.0.0.1:$port" >&2
}

# Headless Chromium for the report pages' browser test (tests/it/report_html.rs). Installed when
# missing and we are root on Debian/Ubuntu; otherwise says what to install (the test then skips
# its browser part). Under CI (CI=true) the test must find it: IDC_TEST_REQUIRE_BROWSER=1.
idc_browser() {
  if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "installing chromium for the report browser test" >&2
      apt-get install -y --no-install-recommends chromium >&2 ||
        { apt-get update >&2 && apt-get install -y --no-install-recommends chromium >&2; } ||
        echo "could not install chromium" >&2
    else
      echo "chromium is missing: install it (e.g. sudo apt-get install chromium) to render the report pages in the tests" >&2
    fi
  fi
  if [ "${CI:-}" = true ]; then
    export IDC_TEST_REQUIRE_BROWSER=1
  fi
}

# The real Fashion-MNIST IDX files (Debian's dataset-fashion-mnist, 31 MB, under
# /usr/share/datasets/fashion-mnist) for the 10-class training test in tests/it/report_html.rs.
# Installed when missing and we are root on Debian/Ubuntu; under CI the test must find them:
# IDC_TEST_REQUIRE_FASHION_MNIST=1.
idc_fashion_mnist() {
  if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "installing dataset-fashion-mnist for the 10-class training test" >&2
      apt-get install -y --no-install-recommends dataset-fashion-mnist >&2 ||
        { apt-get update >&2 && apt-get install -y --no-install-recommends dataset-fashion-mnist >&2; } ||
        echo "could not install dataset-fashion-mnist" >&2
    else
      echo "Fashion-MNIST is missing: install it (e.g. sudo apt-get install dataset-fashion-mnist) to train on real 10-class data in the tests" >&2
    fi
  fi
  if [ "${CI:-}" = true ]; then
    export IDC_TEST_REQUIRE_FASHION_MNIST=1
  fi
}

# Whole-slide fixtures: tests/fixtures/make_slide.py writes pyramidal JPEG-tiled TIFF slides
# (Aperio SVS, generic TIFF) with tifffile + imagecodecs in a cached venv; exports
# IDC_SLIDE_PYTHON. The slide reader links OpenSlide (Debian's libopenslide0; openslide-tools
# checks fixtures by hand): installed when missing and we are root on Debian/Ubuntu, otherwise
# says what to install. Under CI the slide tests must find both: IDC_TEST_REQUIRE_SLIDES=1.
IDC_TIFFFILE_VERSION=2026.3.3
IDC_IMAGECODECS_VERSION=2026.3.6
idc_slide_venv() {
  local name=slides-tifffile-$IDC_TIFFFILE_VERSION-imagecodecs-$IDC_IMAGECODECS_VERSION
  idc_cached_venv "$name" "tifffile==$IDC_TIFFFILE_VERSION" \
    "imagecodecs==$IDC_IMAGECODECS_VERSION" numpy==2.4.6 pillow==13.0.0
  export IDC_SLIDE_PYTHON=$IDC_CACHE/$name/bin/python
  if ! ldconfig -p 2>/dev/null | grep -q 'libopenslide\.so\.0' || ! command -v openslide-show-properties >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "installing libopenslide0 and openslide-tools for the whole-slide tests" >&2
      apt-get install -y --no-install-recommends libopenslide0 openslide-tools >&2 ||
        { apt-get update >&2 && apt-get install -y --no-install-recommends libopenslide0 openslide-tools >&2; } ||
        echo "could not install libopenslide0 and openslide-tools" >&2
    else
      echo "OpenSlide is missing: install it (e.g. sudo apt-get install libopenslide0 openslide-tools) to read whole-slide images in the tests" >&2
    fi
  fi
  if [ "${CI:-}" = true ]; then
    export IDC_TEST_REQUIRE_SLIDES=1
  fi
}

# WSInfer 0.6.1 (the patch classifier pathologists run over slides) for the side-by-side slide
# benchmark (.ci/bench-slide), set up to run offline; exports IDC_WSINFER_PYTHON and
# IDC_WSINFER (run it with HF_HUB_OFFLINE=1). Its venv borrows torch from the torch venv through
# a .pth file instead of a second 4.6 GB copy (pip then sees torch as installed), with the
# torchvision built for that torch. WSInfer 0.6.1 patches zarr 2's KVStore at import (zarr<3),
# which holds tiffslide at 2.5.1 and its older tifffile, so slides are read with
# `wsinfer --backend openslide` (openslide-bin: OpenSlide 4.0's library in the wheel).
IDC_WSINFER_VERSION=0.6.1
IDC_TORCHVISION_VERSION=0.26.0
idc_wsinfer_venv() {
  idc_cached_venv "torch-$IDC_TORCH_VERSION" "torch==$IDC_TORCH_VERSION" pillow numpy
  local venv=$IDC_CACHE/wsinfer-$IDC_WSINFER_VERSION-torch-$IDC_TORCH_VERSION
  if [ ! -f "$venv/.complete" ]; then
    echo "setting up $venv (wsinfer $IDC_WSINFER_VERSION on the torch venv's torch, once per machine)" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    local site torch_site
    site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    torch_site=$("$IDC_CACHE/torch-$IDC_TORCH_VERSION/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    # Appended to sys.path after the venv's own site-packages, so the venv's packages win.
    echo "$torch_site" >"$site/idc-torch-$IDC_TORCH_VERSION.pth"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps \
      "torchvision==$IDC_TORCHVISION_VERSION"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "wsinfer==$IDC_WSINFER_VERSION" \
      wsinfer-zoo==0.6.3 zarr==2.18.7 tiffslide==2.5.1 openslide-python==1.4.7 openslide-bin==4.0.1.2 \
      pandas==3.1.1
    if [ -d "$site/torch" ]; then
      echo "pip installed a second torch into $venv: the .pth link to $torch_site did not work" >&2
      return 1
    fi
    touch "$venv/.complete"
  fi
  # WSInfer looks its model zoo up on the Hugging Face Hub when imported; offline it reads this
  # registry file instead (one placeholder entry, never downloaded). A user's own file is kept.
  local registry=$HOME/.wsinfer-zoo/wsinfer-zoo-registry.json
  if [ ! -f "$registry" ]; then
    mkdir -p "$(dirname "$registry")"
    cat >"$registry" <<'JSON'
{"models": {"idc-placeholder": {"description": "placeholder so that wsinfer starts offline; run local models with -c config.json -p torchscript_model.pt", "hf_repo_id": "idc/placeholder", "hf_revision": "main"}}}
JSON
  fi
  export IDC_WSINFER_PYTHON=$venv/bin/python IDC_WSINFER=$venv/bin/wsinfer
}
