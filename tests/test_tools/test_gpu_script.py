"""``scripts/gpu_benchmarks.sh`` runs only on a lent GPU machine, with minutes to spare: every command in it must
parse with the tools' own argument parsers and name targets that exist, which this checks on any machine."""
from __future__ import annotations

import importlib.util
import re
import shlex

import pytest

from evit_mm.benchmark import cli
from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / 'scripts/gpu_benchmarks.sh'


def _backbone_tool():
    spec = importlib.util.spec_from_file_location('benchmark_backbone', REPO_ROOT / 'tools/benchmark_backbone.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _commands() -> list[tuple[str, list[str]]]:
    """``(step name, argv)`` of every step, with the script's variables expanded and any pipe after it dropped."""
    text = SCRIPT.read_text().replace('\\\n', ' ')
    variables = {name: shlex.split(value)[0] for name, value in re.findall(r'^(B|EV)=(".*")$', text, flags=re.M)}
    variables.update(PY='python', OUT='out')  # after B, whose value holds $PY
    steps = []
    for line in text.splitlines():
        if not line.startswith('step '):
            continue
        for name, value in variables.items():
            line = line.replace(f'${name}', value)
        words = shlex.split(line)
        name, argv = words[1], words[2:]
        if argv[:2] == ['bash', '-c']:
            argv = shlex.split(argv[2].split('|')[0])
        steps.append((name, argv))
    return steps


def test_the_script_has_its_steps():
    names = [name for name, _ in _commands()]
    assert names[:3] == ['cuda_tests', 'backbone_vs_timm', 'retinanet_b1']
    assert len(names) == len(set(names)) >= 10


def _pytest_paths(argv: list[str]) -> list[str]:
    return [a for a in argv[3:] if not a.startswith('-') and a != 'no:cacheprovider']


@pytest.mark.parametrize('name, argv', _commands(), ids=[name for name, _ in _commands()])
def test_every_step_parses_and_names_existing_targets(name, argv):
    assert argv[0] == 'python'
    if argv[1:3] == ['-m', 'pytest']:  # the CUDA tests: files that exist
        assert _pytest_paths(argv) and all((REPO_ROOT / path).is_file() for path in _pytest_paths(argv))
        return
    tool, args = argv[1], argv[2:]
    # AMP fp16 everywhere, except the steps on bfloat16 weights, where autocast would cast them again
    bf16_weights = name.endswith('bf16_weights')
    dtype = 'fp32' if bf16_weights else 'fp16'
    if tool == 'tools/benchmark_backbone.py':
        parsed = _backbone_tool().parse_args(args)
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
    if name == 'backbone_vs_timm':  # eager CUDA graphs measured in the first rounds
        assert parsed.cuda_graphs
    if name.startswith('retinanet_b') and not name.endswith(('compiled_cuda_graphs', 'bf16_weights')):
        assert 'configs/retinanet_evit_m4.py@deploy-cuda-graphs' in parsed.targets
