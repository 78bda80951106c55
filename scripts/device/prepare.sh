#!/usr/bin/env bash
# Run here, on the CPU machine, before a session's GPU run: fills .whl/ (ignored by git, carried to the device)
# with the wheels the device image lacks for Python 3.12 (the OpenMMLab stack and its small dependencies; the image
# has torch, torchvision, numpy, opencv, matplotlib, scipy, pytest) and a Python-only mmcv built from its sdist.
# Then, with the device tool: run(command="bash scripts/device/run.sh", carry=[".whl"], timeout_s=600).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-$PWD/.venv/bin/python}
mkdir -p .git/info .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  mmengine==0.10.7 mmdet==3.3.0 mmsegmentation==1.2.2 timm==1.0.31 addict yapf platformdirs termcolor \
  terminaltables pycocotools shapely prettytable wcwidth ftfy 'setuptools>=77.0.3,<80.9'
# setuptools: mmengine's config loading imports pkg_resources, which setuptools 81 dropped; the image's version is
# not ours to know (requirements/stack.txt pins the same range here)
if ! ls .whl/mmcv*-2.1.0-*.whl >/dev/null 2>&1; then
  BUILD="$(mktemp -d)"
  trap 'rm -rf "$BUILD"' EXIT
  "$PY" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation -d "$BUILD" mmcv==2.1.0
  tar -xzf "$BUILD"/mmcv-2.1.0.tar.gz -C "$BUILD"
  (cd "$BUILD/mmcv-2.1.0" \
    && MMCV_WITH_OPS=0 "$PY" -m pip wheel --quiet --no-build-isolation --no-deps -w "$OLDPWD/.whl" .)
fi
ls -la .whl
du -sh .whl
