# How `make setup` adapts mmcv 2.1.0's setup.py before building it; sourced by scripts/setup.sh (tested by
# tests/test_setup_mmcv.py).

patch_mmcv_setup() {  # patch_mmcv_setup SETUP_PY CXX20: CXX20 is "yes" where torch's headers require C++20
  local setup_py=$1 cxx20=$2
  # get_version() execs version.py and then reads locals()['__version__'], which Python 3.13 no longer fills (PEP 667:
  # exec cannot change a function's locals): a KeyError before anything builds. The same exec into a namespace of its
  # own, the same version on every Python.
  sed -i -e "s/exec(compile(f.read(), version_file, 'exec'))/exec(compile(f.read(), version_file, 'exec'), version_ns := {})/" \
    -e "s/return locals()\['__version__'\]/return version_ns['__version__']/" "$setup_py"
  # torch >= 2.10's ATen headers refuse anything below C++20; mmcv 2.1.0's setup.py hard-codes C++17.
  if [ "$cxx20" = yes ]; then
    sed -i 's/-std=c++17/-std=c++20/g' "$setup_py"
  fi
}
