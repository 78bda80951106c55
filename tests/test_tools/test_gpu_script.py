"""``scripts/gpu_benchmarks.sh`` runs only on a lent GPU machine, with minutes to spare: every command in it must
parse with the tools' own argument parsers and name targets that exist, which this checks on any machine."""
from __future__ import annotations

import os
import re
import shlex
import subprocess

import pytest

from evit_mm.benchmark import cli
from tests.conftest import REPO_ROOT
from tests.helpers import load_tool

SCRIPT = REPO_ROOT / 'scripts/gpu_benchmarks.sh'


def _commands() -> list[tuple[str, list[str]]]:
    """``(step name, argv)`` of every step, with the script's variables expanded and any pipe after it dropped."""
    text = SCRIPT.read_text().replace('\\\n', ' ')
    variables = {name: shlex.split(value)[0] for name, value in re.findall(r'^(B|EV)=(".*")$', text, flags=re.M)}
    variables.update(PY='python', OUT='out')  # after B, whose value holds $PY
    steps = []
    for line in text.splitlines():
        if not line.startswith(('step ', 'graphed_step ')):
            continue
        line = line.split(' || ')[0]
        for name, value in variables.items():
            line = line.replace(f'${name}', value)
        words = shlex.split(line)
        name, argv = words[1], words[2:]
        if argv[:4] == ['bash', '-o', 'pipefail', '-c']:  # a step piped into tee: its tool's status counts
            argv = shlex.split(argv[4].split('|')[0])
        assert argv[0] != 'bash', f'{name}: a piped step needs bash -o pipefail, or its failures go unseen'
        steps.append((name, argv))
    return steps


def test_the_script_has_its_steps():
    names = [name for name, _ in _commands()]
    assert names[:4] == ['cuda_graph_tests', 'cuda_tests', 'backbone_vs_timm', 'retinanet_b1']
    assert len(names) == len(set(names)) >= 10


FAKE_PYTHON = '''#!/usr/bin/env bash
echo "RAN $*"
case "$*" in *test_cuda_graphs*) [ -n "${FAIL_GRAPH_TESTS:-}" ] && exit 1 ;; esac
case "$*" in *--cuda-graphs*|*@deploy-cuda-graphs*) [ -n "${FAIL_GRAPHS:-}" ] && exit 3 ;; esac
exit 0
'''


def _run_with_fake_python(tmp_path, **env) -> tuple[int, list[str], str]:
    """The script run with a stand-in for Python that logs its arguments and fails as ``env`` says: its exit
    status, the logged argument lines and the whole output."""
    fake = tmp_path / 'python'
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    result = subprocess.run(['bash', str(SCRIPT)], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PY=str(fake), OUT=str(tmp_path / 'out'), **env))
    ran = [line[4:] for line in result.stdout.splitlines() if line.startswith('RAN ')]
    return result.returncode, ran, result.stdout


def _graphed(args: str) -> bool:
    return '--cuda-graphs' in args or '@deploy-cuda-graphs' in args


def test_every_step_runs_once_when_all_pass(tmp_path):
    status, ran, output = _run_with_fake_python(tmp_path)
    assert status == 0, output
    assert len(ran) == len(_commands()) and 'FAILED' not in output
    assert sum(map(_graphed, ran)) == 5  # backbone, device time, RetinaNet at batch 1 and 16, Mask R-CNN


def test_a_step_whose_cuda_graphs_fail_runs_again_without_them(tmp_path):
    status, ran, output = _run_with_fake_python(tmp_path, FAIL_GRAPHS='1')
    assert status == 1 and 'failed steps:' in output
    graphed = [args for args in ran if _graphed(args)]
    assert len(graphed) == 5  # each failed once (the piped backbone steps too: pipefail)...
    for name in ('backbone_vs_timm', 'retinanet_b1', 'device_time', 'retinanet_b16', 'mask_rcnn_b1'):
        assert f'=== {name} FAILED' in output and f'=== {name}_without_cuda_graphs:' in output
    assert len(ran) == len(_commands()) + 5  # ...and ran again without them, nothing else twice
    rerun = ran[ran.index(graphed[1]) + 1]  # RetinaNet at batch 1 again: the same eager targets, in order
    assert rerun.split() == [a for a in graphed[1].split() if not a.endswith('@deploy-cuda-graphs')]


def test_failing_cuda_graph_tests_take_graphs_out_of_every_step(tmp_path):
    status, ran, output = _run_with_fake_python(tmp_path, FAIL_GRAPH_TESTS='1', FAIL_GRAPHS='1')
    assert status == 1 and '=== cuda_graph_tests FAILED' in output
    assert not any(map(_graphed, ran))
    assert len(ran) == len(_commands())


def _pytest_paths(argv: list[str]) -> list[str]:
    return [a for a in argv[3:] if not a.startswith('-') and a != 'no:cacheprovider']


@pytest.mark.parametrize('name, argv', _commands(), ids=[name for name, _ in _commands()])
def test_every_step_parses_and_names_existing_targets(name, argv, cuda_devices):
    cuda_devices(1)  # as on the GPU machine
    assert argv[0] == 'python'
    if argv[1:3] == ['-m', 'pytest']:  # the CUDA tests: files that exist
        assert _pytest_paths(argv) and all((REPO_ROOT / path).is_file() for path in _pytest_paths(argv))
        return
    tool, args = argv[1], argv[2:]
    # AMP fp16 everywhere, except the steps on bfloat16 weights, where autocast would cast them again
    bf16_weights = name.endswith('bf16_weights')
    dtype = 'fp32' if bf16_weights else 'fp16'
    if tool == 'tools/benchmark_backbone.py':
        parsed = load_tool('benchmark_backbone').parse_args(args)
        assert parsed.device == 'cuda' and parsed.dtype == dtype and parsed.bfloat16 == bf16_weights
    else:
        assert tool == 'tools/benchmark.py'
        parsed = cli.parse_args(args)
        assert parsed.device == 'cuda' and parsed.dtype == dtype and parsed.json.startswith('out/')
        assert not bf16_weights or all(t.endswith('@deploy-bf16') for t in parsed.targets)
        for target in parsed.targets:
            path = target.partition('@')[0]
            if path.endswith('.py'):
                assert (REPO_ROOT / path).is_file(), path
    if name.endswith('compiled_cuda_graphs'):
        assert parsed.compile_mode == 'reduce-overhead'
    if name in ('backbone_vs_timm', 'device_time'):  # eager CUDA graphs measured in the first rounds
        assert parsed.cuda_graphs
    if name == 'device_time':
        assert parsed.device_time and parsed.train
    if name.startswith('retinanet_b') and not name.endswith(('compiled_cuda_graphs', 'bf16_weights')):
        assert 'configs/retinanet_evit_m4.py@deploy-cuda-graphs' in parsed.targets
