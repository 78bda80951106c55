"""How `make setup` adapts mmcv 2.1.0's setup.py before building it (scripts/mmcv_source.sh), on a file with the lines
it changes, as mmcv 2.1.0's sdist has them."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(shutil.which('bash') is None, reason='make setup is a bash script; no bash here')

PATCH = REPO_ROOT / 'scripts' / 'mmcv_source.sh'
# the lines of mmcv 2.1.0's setup.py that the patch rewrites (its get_version() and one compiler flag), and a print
MMCV_SETUP_LINES = '''\
def get_version():
    version_file = 'mmcv/version.py'
    with open(version_file, encoding='utf-8') as f:
        exec(compile(f.read(), version_file, 'exec'))
    return locals()['__version__']


extra_compile_args = {'cxx': ['-std=c++17']}
print(get_version(), extra_compile_args['cxx'][0])
'''


def _patched_source(tmp_path: Path, cxx20: str) -> Path:
    (tmp_path / 'mmcv').mkdir()
    (tmp_path / 'mmcv' / 'version.py').write_text("__version__ = '2.1.0'\n")
    setup_py = tmp_path / 'setup.py'
    setup_py.write_text(MMCV_SETUP_LINES)
    subprocess.run(['bash', '-c', f'set -euo pipefail; source {PATCH}; patch_mmcv_setup {setup_py} {cxx20}'],
                   check=True)
    return setup_py


@pytest.mark.parametrize('cxx20,flag', [('yes', '-std=c++20'), ('no', '-std=c++17')])
def test_the_patched_setup_reads_its_version_on_this_python(tmp_path, cxx20, flag):
    """The version is read without locals() (which Python 3.13 no longer fills after exec), and the C++ flag is
    raised only where torch's headers ask for C++20."""
    setup_py = _patched_source(tmp_path, cxx20)
    assert 'locals()' not in setup_py.read_text()
    done = subprocess.run([sys.executable, setup_py.name], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ['2.1.0', flag]
