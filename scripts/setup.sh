#!/usr/bin/env bash
# One-command, idempotent setup of evit_mm's development environment.
#
# - Creates (or reuses) a virtual environment shared by every checkout on this machine, keyed by the
#   pinned stack (requirements/stack.txt) and the Python version; `.venv` in the checkout points at it.
#   A venv with this stack is ~5.5 GB, and CI clones main into a new folder for every run.
# - Builds mmcv (with its compiled CPU ops) from the PyPI sdist, because PyPI has no mmcv wheel for
#   torch 2.14. The C++ standard flag is raised to C++20 only when torch's headers demand it.
#   The wheel is cached outside the repository, keyed by mmcv, torch and Python versions.
# - Installs evit_mm in editable mode.
#
# Environment: PYTHON (interpreter; default: the one .venv was made with, else python3, else the newest of
# python3.13/3.12/3.11/3.10 that runs: scripts/choose_python.sh), EVIT_MM_CACHE (default ~/.cache/evit_mm),
# MAX_JOBS (parallel compile jobs for mmcv, default: number of cores), EVIT_MM_STACK (the pinned stack, default
# requirements/stack.txt; requirements/stack-oldest.txt is the oldest one evit_mm supports, torch 2.1).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CACHE="${EVIT_MM_CACHE:-$HOME/.cache/evit_mm}"
MMCV_VERSION="2.1.0"
STACK="${EVIT_MM_STACK:-requirements/stack.txt}"

die() { echo "setup: error: $*" >&2; exit 1; }
say() { echo "setup: $*"; }

# ---- preconditions -------------------------------------------------------------------------------
# shellcheck source=choose_python.sh
source "$ROOT/scripts/choose_python.sh"
# shellcheck source=mmcv_source.sh
source "$ROOT/scripts/mmcv_source.sh"
choose_python "$ROOT"
[ -n "$PYVER" ] || die "no Python interpreter '$PYTHON' runs here; install one of Python ${SUPPORTED_PYTHONS// /, } or set PYTHON=/path/to/python3.11"
supported_python_version "$PYVER" || die "Python $PYVER ($PYTHON) is not supported: evit_mm's pinned stack (torch 2.14, mmcv 2.1 built from source) needs one of Python ${SUPPORTED_PYTHONS// /, } (the versions it is tested on). Install one (a pythonX.Y of these on PATH is found without PYTHON), or set PYTHON=/path/to/python3.11."
say "Python $PYVER ($PYTHON)"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || die "Python $PYVER lacks the venv/ensurepip modules (on Debian: apt-get install python3-venv)"

KEY="$( (cat "$STACK"; echo "python=$PYVER"; echo "mmcv=$MMCV_VERSION") | sha256sum | cut -c1-12)"
ENV_DIR="$CACHE/venvs/py$PYVER-$KEY"
WHEELS="$CACHE/wheels"
mkdir -p "$CACHE/venvs" "$WHEELS"

# ---- the shared environment -------------------------------------------------------------------------
if [ ! -f "$ENV_DIR/.stack-installed" ]; then
  say "creating environment $ENV_DIR (first time on this machine: downloads ~5.5 GB of packages)"
  rm -rf "$ENV_DIR"
  "$PYTHON" -m venv "$ENV_DIR"
  "$ENV_DIR/bin/python" -m pip install --quiet --upgrade pip wheel
  "$ENV_DIR/bin/python" -m pip install -r "$STACK"
  touch "$ENV_DIR/.stack-installed"
fi
if [ -e "$ROOT/.venv" ] && [ ! -L "$ROOT/.venv" ]; then
  die "$ROOT/.venv exists and is not the link make setup manages; move it away (or use it directly: see README, 'Already have an OpenMMLab environment?')"
fi
ln -sfn "$ENV_DIR" "$ROOT/.venv"
PY="$ROOT/.venv/bin/python"

# ---- mmcv with compiled ops -------------------------------------------------------------------------
if ! "$PY" -c 'import mmcv, mmcv.ops; assert mmcv.__version__ == "'"$MMCV_VERSION"'"' >/dev/null 2>&1; then
  TORCH_VERSION="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
  TAG="mmcv$MMCV_VERSION-torch$TORCH_VERSION-py$PYVER"
  WHEEL="$(ls "$WHEELS/$TAG"/mmcv-*.whl 2>/dev/null | head -n1 || true)"
  if [ -z "$WHEEL" ]; then
    CXX_BIN="${CXX:-c++}"
    command -v "$CXX_BIN" >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 \
      || die "no C++ compiler found (needed once to build mmcv $MMCV_VERSION's ops); install one, e.g. apt-get install g++"
    "$PY" -c 'import sysconfig, os, sys; p = sysconfig.get_paths()["include"]; sys.exit(0 if os.path.exists(os.path.join(p, "Python.h")) else 1)' \
      || die "Python $PYVER development headers (Python.h) are missing; install them, e.g. apt-get install python3-dev"
    say "building mmcv $MMCV_VERSION with CPU ops for torch $TORCH_VERSION (once per machine; ~8-10 min on 2 cores)"
    BUILD="$(mktemp -d)"
    trap 'rm -rf "$BUILD"' EXIT
    # mmcv 2.1.0's setup.py imports pkg_resources, which setuptools >= 81 no longer ships, and torch: both its
    # metadata step (in pip download) and its build run without isolation, in this environment, on the setuptools
    # requirements/stack.txt pins (< 80.9; built and tested with 80.8.0).
    # On Python >= 3.13 that metadata step fails (get_version: scripts/mmcv_source.sh) after the sdist is fetched and
    # unpacked: there pip's unpacked copy, kept by --no-clean in its temporary folder (under $BUILD), is the source.
    if TMPDIR="$BUILD" "$PY" -m pip download --no-clean --no-deps --no-binary :all: --no-build-isolation --quiet \
        -d "$BUILD" "mmcv==$MMCV_VERSION" 2>"$BUILD/download.log"; then
      tar -xzf "$BUILD"/mmcv-"$MMCV_VERSION".tar.gz -C "$BUILD"
      SRC="$BUILD/mmcv-$MMCV_VERSION"
    else
      SRC="$(dirname "$(ls "$BUILD"/pip-download-*/mmcv*/setup.py 2>/dev/null | head -n1)")"
      [ "$SRC" != . ] || { cat "$BUILD/download.log" >&2; die "could not download mmcv $MMCV_VERSION's sdist (above)"; }
      say "pip could not read mmcv's metadata on Python $PYVER; building from its unpacked sdist, patched"
    fi
    CXX20=no
    if grep -rqs "C++20 or later compatible compiler is required" "$("$PY" -c 'import torch.utils.cpp_extension as c; print(c.include_paths()[0])')"; then
      say "torch's headers require C++20: adapting mmcv's -std flag"
      CXX20=yes
    fi
    patch_mmcv_setup "$SRC/setup.py" "$CXX20"
    mkdir -p "$WHEELS/$TAG"
    (cd "$SRC" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
      "$PY" -m pip wheel --no-build-isolation --no-deps -w "$WHEELS/$TAG" . )
    WHEEL="$(ls "$WHEELS/$TAG"/mmcv-*.whl | head -n1)"
  fi
  say "installing $WHEEL"
  "$PY" -m pip install --no-deps --force-reinstall --quiet "$WHEEL"
  "$PY" -m pip install --quiet addict 'opencv-python>=4' 'packaging' 'pyyaml' 'yapf' 'Pillow'
fi

# ---- evit_mm itself ------------------------------------------------------------------------------------
"$PY" -m pip install --quiet --no-deps --no-build-isolation -e "$ROOT"
"$PY" -c 'import evit_mm, mmcv.ops, mmdet, mmseg, timm' || die "the environment at $ENV_DIR does not import; delete it and rerun make setup"
say "ready: $ROOT/.venv -> $ENV_DIR"
