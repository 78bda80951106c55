"""Every script in tools/ imports and answers --help (the scripts are thin: a broken import or entry point there
would be met by users first, since the tests call the functions behind them)."""
from __future__ import annotations

import pytest

from tests.conftest import REPO_ROOT
from tests.helpers import load_tool

SCRIPTS = sorted(p.stem for p in (REPO_ROOT / 'tools').glob('*.py'))


def test_the_tools_are_all_here():
    assert {'train', 'test', 'benchmark', 'benchmark_backbone', 'get_flops', 'export_onnx', 'convert_checkpoint',
            'publish_model', 'make_demo_data', 'demo'} <= set(SCRIPTS)


@pytest.mark.parametrize('name', SCRIPTS)
def test_script_answers_help(name, capsys):
    tool = load_tool(name)
    with pytest.raises(SystemExit) as stop:
        tool.main(['--help'])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith('usage: ')
