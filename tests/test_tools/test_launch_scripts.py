"""The launch scripts users type (torchrun and Slurm, train and test) hand every argument to the right tool, in the
folder they were typed in: relative config, checkpoint and work-dir paths mean what they meant there (a script that
changed into the repository would silently take the repository's config of the same name).

Each script runs for real; only the launcher it calls (``srun``, or ``$PYTHON`` for torchrun) is a stand-in that
writes down the command line it was given, one argument per line.
"""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _recorder(path: Path, record: Path) -> None:
    """An executable at ``path`` that writes its own arguments to ``record`` (one per line) and the folder it ran in
    as the first line."""
    path.write_text(f'#!/usr/bin/env bash\n{{ pwd; printf "%s\\n" "$@"; }} > {record}\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _run(script: str, args: list[str], tmp_path: Path, **env: str) -> list[str]:
    record = tmp_path / 'argv.txt'
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    _recorder(bin_dir / 'srun', record)
    _recorder(bin_dir / 'python', record)
    environment = {**os.environ, 'PATH': f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
                   'PYTHON': str(bin_dir / 'python'), **env}
    subprocess.run(['bash', str(REPO_ROOT / 'tools' / script), *args], check=True, env=environment,
                   cwd=tmp_path, timeout=30, capture_output=True, text=True)
    return record.read_text().splitlines()


def test_dist_train_runs_torchrun_on_train_py(tmp_path):
    argv = _run('dist_train.sh', ['configs/retinanet_evit_m4.py', '4', '--amp', '--cfg-options', 'a=1'], tmp_path,
                NNODES='2', NODE_RANK='1', MASTER_ADDR='10.0.0.1', PORT='29600')
    assert argv == [str(tmp_path), '-m', 'torch.distributed.run', '--nnodes=2', '--node_rank=1',
                    '--master_addr=10.0.0.1', '--nproc_per_node=4', '--master_port=29600',
                    str(REPO_ROOT / 'tools/train.py'), 'configs/retinanet_evit_m4.py', '--launcher', 'pytorch',
                    '--amp', '--cfg-options', 'a=1']


def test_dist_test_runs_torchrun_on_test_py(tmp_path):
    argv = _run('dist_test.sh', ['configs/fpn_evit_m4_ade20k.py', 'ckpt.pth', '8', '--out', 'preds'], tmp_path)
    assert argv == [str(tmp_path), '-m', 'torch.distributed.run', '--nnodes=1', '--node_rank=0',
                    '--master_addr=127.0.0.1', '--nproc_per_node=8', '--master_port=29500',
                    str(REPO_ROOT / 'tools/test.py'), 'configs/fpn_evit_m4_ade20k.py', 'ckpt.pth',
                    '--launcher', 'pytorch',
                    '--out', 'preds']


@pytest.mark.parametrize('script, positional, tool', [
    ('slurm_train.sh', ['configs/mask_rcnn_evit_m4.py', 'work_dirs/mrcnn'],
     [str(REPO_ROOT / 'tools/train.py'), 'configs/mask_rcnn_evit_m4.py', '--work-dir=work_dirs/mrcnn']),
    ('slurm_test.sh', ['configs/mask_rcnn_evit_m4.py', 'ckpt.pth'],
     [str(REPO_ROOT / 'tools/test.py'), 'configs/mask_rcnn_evit_m4.py', 'ckpt.pth']),
])
def test_slurm_scripts_run_one_task_per_gpu(tmp_path, script, positional, tool):
    argv = _run(script, ['gpu_part', 'evit', *positional, '--cfg-options', 'x=2'], tmp_path,
                GPUS='16', SRUN_ARGS='--quotatype=auto --time=1:00:00')
    python = str(tmp_path / 'bin' / 'python')
    assert argv == [str(tmp_path), '-p', 'gpu_part', '--job-name=evit', '--gres=gpu:8', '--ntasks=16',
                    '--ntasks-per-node=8', '--cpus-per-task=5', '--kill-on-bad-exit=1', '--quotatype=auto',
                    '--time=1:00:00', python, '-u', *tool, '--launcher', 'slurm', '--cfg-options', 'x=2']


@pytest.mark.parametrize('gpus, per_node, expected', [('4', None, '4'), ('1', None, '1'), ('4', '2', '2')])
def test_slurm_jobs_of_few_gpus_ask_for_only_those(tmp_path, gpus, per_node, expected):
    """A job of fewer GPUs than a node's 8 used to ask for gpu:8 per node (and 8 tasks per node) whatever GPUS said."""
    env = {'GPUS': gpus, **({'GPUS_PER_NODE': per_node} if per_node else {})}
    argv = _run('slurm_train.sh', ['part', 'job', 'cfg.py', 'work'], tmp_path, **env)
    assert argv[4:7] == [f'--gres=gpu:{expected}', f'--ntasks={gpus}', f'--ntasks-per-node={expected}']


@pytest.mark.parametrize('name, value', [('GPUS', 'eight'), ('GPUS', '0'), ('GPUS_PER_NODE', '4x'),
                                         ('CPUS_PER_TASK', '-1')])
def test_slurm_counts_that_are_not_positive_integers_stop_before_srun(tmp_path, name, value):
    with pytest.raises(subprocess.CalledProcessError) as error:
        _run('slurm_train.sh', ['part', 'job', 'cfg.py', 'work'], tmp_path, **{name: value})
    assert error.value.returncode == 2
    assert f"{name} must be a positive integer, got '{value}'" in error.value.stderr
    assert not (tmp_path / 'argv.txt').exists()


@pytest.mark.parametrize('script, args', [('dist_train.sh', ['cfg.py']), ('slurm_test.sh', ['part', 'job', 'cfg.py'])])
def test_missing_arguments_stop_the_script_with_its_usage(tmp_path, script, args):
    with pytest.raises(subprocess.CalledProcessError) as error:
        _run(script, args, tmp_path)
    assert error.value.returncode == 2 and 'usage: ' in error.value.stderr and script in error.value.stderr
    assert not (tmp_path / 'argv.txt').exists()  # nothing was launched
