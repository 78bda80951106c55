# Which Python `make setup` builds the environment with; sourced by scripts/setup.sh (tested by
# tests/test_setup_python.py).
#
# choose_python ROOT sets PYTHON and PYVER (its major.minor), or leaves PYVER empty where no interpreter runs:
# - PYTHON given: that interpreter.
# - Otherwise the one the checkout's environment (ROOT/.venv) was made with, where it still runs and is supported:
#   `PYTHON=python3.12 make demo` followed by a plain `make test` stays on 3.12 rather than switching back.
# - Otherwise python3 where it is supported, else the newest pythonX.Y of SUPPORTED_PYTHONS that runs (on a
#   machine whose python3 is 3.14, a supported one installed beside it is found). Interpreters are run, not just
#   looked up: a pyenv shim exists on PATH for every version pyenv knows but fails unless that one is selected.
#   Where none is supported, python3 is kept and setup.sh's check names its version and what to do.

# the versions the whole suite has passed on (newer ones untested; setup.sh's messages name these)
SUPPORTED_PYTHONS="3.10 3.11 3.12 3.13"
BASE_INTERPRETER='
import os, sys
base = os.path.join(sys.base_prefix, "bin", "python%d.%d" % sys.version_info[:2])
print(base if os.access(base, os.X_OK) else sys._base_executable)'

python_version() {  # python_version PY: PY's major.minor, or nothing where PY does not run
  "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true
}

supported_python_version() {  # supported_python_version X.Y
  case " $SUPPORTED_PYTHONS " in *" $1 "*) return 0 ;; *) return 1 ;; esac
}

choose_python() {  # choose_python ROOT
  local root=$1 base version
  if [ -n "${PYTHON:-}" ]; then
    PYVER="$(python_version "$PYTHON")"
    return
  fi
  if [ -x "$root/.venv/bin/python" ]; then
    # the interpreter the environment was made from (Python 3.10's sys._base_executable names the venv's own)
    base="$("$root/.venv/bin/python" -c "$BASE_INTERPRETER" 2>/dev/null || true)"
    if [ -n "$base" ]; then
      PYVER="$(python_version "$base")"
      if supported_python_version "$PYVER"; then
        PYTHON=$base
        return
      fi
    fi
  fi
  # python3, kept where no supported one runs (unsupported or absent: setup.sh's check names it)
  PYTHON=python3 PYVER="$(python_version python3)"
  supported_python_version "$PYVER" && return
  for version in $(printf '%s\n' $SUPPORTED_PYTHONS | sort -rV); do  # newest first
    if [ "$(python_version "python$version")" = "$version" ]; then
      PYTHON=python$version PYVER=$version
      return
    fi
  done
}
