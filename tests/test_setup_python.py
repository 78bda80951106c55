"""Which Python `make setup` builds with (scripts/choose_python.sh), on fake interpreters: shell scripts that print
a version, or fail as a pyenv shim of a version pyenv has not selected does."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(shutil.which('bash') is None, reason='make setup is a bash script; no bash here')

CHOOSE = REPO_ROOT / 'scripts' / 'choose_python.sh'
SHIM_FAILURE = 'echo "pyenv: $(basename "$0"): command not found" >&2; exit 127'


def _fake(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\n{body}\n')
    path.chmod(0o755)
    return path


def _interpreters(bin_dir: Path, versions: dict[str, str | None]) -> None:
    """A fake for each of python3 and python3.1x: printing its version, or failing like a pyenv shim (None)."""
    for name in ('python3', 'python3.10', 'python3.11', 'python3.12', 'python3.13', 'python3.14'):
        version = versions.get(name)
        _fake(bin_dir / name, SHIM_FAILURE if version is None else f'echo {version}')


def _choose(root: Path, bin_dir: Path, python: str | None = None) -> tuple[str, str]:
    env = {'PATH': f'{bin_dir}:/usr/bin:/bin', 'HOME': os.environ.get('HOME', '/tmp')}
    if python is not None:
        env['PYTHON'] = python
    script = f'set -euo pipefail; source {CHOOSE}; choose_python {root}; echo "$PYTHON|$PYVER"'
    done = subprocess.run(['bash', '-c', script], env=env, capture_output=True, text=True, check=True)
    chosen, version = done.stdout.strip().rsplit('|', 1)
    return chosen, version


def test_python3_is_taken_where_it_is_supported(tmp_path):
    _interpreters(tmp_path / 'bin', {'python3': '3.11', 'python3.11': '3.11', 'python3.12': '3.12'})
    assert _choose(tmp_path, tmp_path / 'bin') == ('python3', '3.11')


def test_a_supported_python_beside_an_unsupported_python3_is_found(tmp_path):
    """python3 is 3.14; python3.13 is a shim that fails (pyenv knows 3.13 but has not selected it): 3.12 is the
    newest one that runs."""
    _interpreters(tmp_path / 'bin', {'python3': '3.14', 'python3.14': '3.14', 'python3.13': None, 'python3.12': '3.12',
                                     'python3.11': '3.11'})
    assert _choose(tmp_path, tmp_path / 'bin') == ('python3.12', '3.12')


def test_the_environment_of_the_checkout_keeps_its_python(tmp_path):
    """After `PYTHON=python3.12 make demo`, a plain `make test` stays on 3.12 (python3 is 3.11 here)."""
    _interpreters(tmp_path / 'bin', {'python3': '3.11', 'python3.11': '3.11'})
    base = _fake(tmp_path / 'pythons' / 'python3.12', 'echo 3.12')
    _fake(tmp_path / '.venv' / 'bin' / 'python', f'echo {base}')  # asked for sys._base_executable
    assert _choose(tmp_path, tmp_path / 'bin') == (str(base), '3.12')


def test_an_environment_whose_python_is_gone_is_not_followed(tmp_path):
    _interpreters(tmp_path / 'bin', {'python3': '3.11'})
    _fake(tmp_path / '.venv' / 'bin' / 'python', SHIM_FAILURE)
    assert _choose(tmp_path, tmp_path / 'bin') == ('python3', '3.11')


def test_python_given_is_taken_as_it_is(tmp_path):
    _interpreters(tmp_path / 'bin', {'python3': '3.11', 'python3.14': '3.14'})
    assert _choose(tmp_path, tmp_path / 'bin', python='python3.14') == ('python3.14', '3.14')
    assert _choose(tmp_path, tmp_path / 'bin', python='python3.12') == ('python3.12', '')  # a failing shim: no version


def test_without_a_supported_python_the_check_names_python3(tmp_path):
    _interpreters(tmp_path / 'bin', {'python3': '3.14', 'python3.14': '3.14'})
    assert _choose(tmp_path, tmp_path / 'bin') == ('python3', '3.14')


@pytest.mark.parametrize('version,accepted', [('3.9', False), ('3.10', True), ('3.11', True), ('3.12', True),
                                              ('3.13', True), ('3.14', False), ('3.1', False), ('', False)])
def test_supported_versions(version, accepted):
    done = subprocess.run(['bash', '-c', f'source {CHOOSE}; supported_python_version "{version}"'])
    assert (done.returncode == 0) == accepted


def test_the_interpreter_an_environment_was_made_from_is_found():
    """On this Python (a venv's, where `make test` runs): the base interpreter, outside the venv, the same version.
    (Python 3.10's ``sys._base_executable`` names the venv's own interpreter.)"""
    snippet = subprocess.run(['bash', '-c', f'source {CHOOSE}; printf %s "$BASE_INTERPRETER"'],
                             capture_output=True, text=True, check=True).stdout
    base = subprocess.run([sys.executable, '-c', snippet], capture_output=True, text=True, check=True).stdout.strip()
    assert Path(base).is_relative_to(sys.base_prefix)
    if sys.prefix != sys.base_prefix:
        assert not Path(base).is_relative_to(sys.prefix)
    version = subprocess.run([base, '-c', 'import sys; print(sys.version_info[:2])'], capture_output=True, text=True,
                             check=True).stdout.strip()
    assert version == str(sys.version_info[:2])
