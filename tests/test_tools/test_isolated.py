"""Each model timed alone in its own process (``tools/benchmark_backbone.py --isolated``): the rounds alternate, the
ratios pair the two processes of each round, and the worker times what it is asked in a fresh interpreter (no speed
asserts)."""
from __future__ import annotations

import pytest

from evit_mm.benchmark.isolated import compare_isolated, measure_alone, run_worker
from tests.helpers import load_tool


def test_rounds_alternate_and_each_ratio_pairs_one_round():
    calls = []
    latencies = {'evit_mm deploy': iter([[0.010, 0.030, 0.011], [0.020, 0.020], [0.040]]),
                 'timm': iter([[0.015], [0.050, 0.020, 0.040], [0.040, 0.041]])}

    def worker(arch, candidate, shape, warmup, repeats, threads, keep_freed_memory):
        calls.append((candidate, shape, warmup, repeats, threads, keep_freed_memory))
        return {'latencies': next(latencies[candidate]), 'page_faults': [7] if candidate == 'timm' else [0, 2],
                'memory_mb': 30.5 if candidate == 'timm' else 18.25}

    rows = compare_isolated('m0', shapes=((2, 64, 64),), rounds=3, warmup=1, repeats=5, threads=2,
                            keep_freed_memory=True, worker=worker)
    assert [c[0] for c in calls] == ['evit_mm deploy', 'timm', 'timm', 'evit_mm deploy', 'evit_mm deploy', 'timm']
    assert all(c[1:] == ((2, 64, 64), 1, 5, 2, True) for c in calls)
    (row,) = rows
    assert row.case == 'deploy vs timm as shipped, each alone in its process'
    # medians per round: evit_mm 0.011, 0.020, 0.040; timm 0.015, 0.040, 0.0405 -> ratios 1.364, 2.0, 1.0125
    assert row.ratio == pytest.approx(0.015 / 0.011)
    assert row.ours == pytest.approx(2 / 0.020) and row.timm == pytest.approx(2 / 0.040)
    assert row.ratio_quartiles == pytest.approx((0.5 * (0.0405 / 0.040 + 0.015 / 0.011), 0.5 * (0.015 / 0.011 + 2.0)))
    assert (row.ours_page_faults, row.timm_page_faults) == (1, 7)
    assert (row.ours_memory_mb, row.timm_memory_mb) == (18.25, 30.5)


def test_training_steps_are_compared_only_when_asked():
    def worker(arch, candidate, *_):
        return {'latencies': [0.02 if candidate.startswith('evit_mm') else 0.03], 'page_faults': [0], 'memory_mb': None}

    assert [r.case for r in compare_isolated('m0', shapes=((1, 64, 64),), rounds=1, worker=worker)] == [
        'deploy vs timm as shipped, each alone in its process']
    rows = compare_isolated('m0', shapes=((1, 64, 64), (2, 32, 32)), rounds=2, train=True, worker=worker)
    assert [(r.case.split(',')[0], r.shape) for r in rows] == [
        ('deploy vs timm as shipped', (1, 64, 64)), ('train', (1, 64, 64)),
        ('deploy vs timm as shipped', (2, 32, 32)), ('train', (2, 32, 32))]
    assert all(r.ratio == pytest.approx(1.5) for r in rows)
    assert all(r.ours_memory_mb is None and r.timm_memory_mb is None for r in rows)  # not reported: not invented


@pytest.mark.parametrize('candidate', ['evit_mm deploy', 'timm', 'evit_mm train', 'timm train'])
def test_measure_alone_times_the_candidate_it_names(candidate):
    result = measure_alone('m0', candidate, (2, 64, 64), warmup=1, repeats=2)  # 2 images: BatchNorm trains
    assert len(result['latencies']) == 2 and all(t > 0 for t in result['latencies'])
    assert len(result['page_faults']) == 2 and all(f >= 0 for f in result['page_faults'])
    inference_candidate = {'evit_mm train': 'evit_mm deploy', 'timm train': 'timm'}.get(candidate, candidate)
    inference = measure_alone('m0', inference_candidate, (2, 64, 64), warmup=1, repeats=1)
    if candidate.endswith('train'):  # a training step holds its activations for the backward pass
        assert result['memory_mb'] > 2 * inference['memory_mb'] > 0
    else:
        assert result['memory_mb'] == inference['memory_mb'] > 0


@pytest.mark.slow
def test_the_worker_runs_in_a_fresh_process_and_its_failures_are_reported():
    result = run_worker('m0', 'timm', (1, 64, 64), warmup=1, repeats=2, threads=1, keep_freed_memory=True)
    assert len(result['latencies']) == 2 and all(t > 0 for t in result['latencies'])
    assert len(result['page_faults']) == 2 and all(f >= 0 for f in result['page_faults'])
    with pytest.raises(RuntimeError, match=r"(?s)the worker timing 'timm' at \(1, 64, 64\) failed \(1\): .*"
                                           r'Unknown model \(efficientvit_m9\)'):
        run_worker('m9', 'timm', (1, 64, 64), warmup=1, repeats=1, threads=1, keep_freed_memory=False)


def test_the_option_refuses_no_rounds_and_other_devices(capsys):
    tool = load_tool('benchmark_backbone')
    for argv, message in ((['--isolated', '0'], "argument --isolated: must be an integer of at least 1, got '0'"),
                          (['--isolated', '2', '--dtype', 'bf16'], '--isolated times float32 on the CPU only'),
                          (['--arch', 'm9'], "argument --arch: invalid choice: 'm9'"),
                          (['--threads', '0'], "argument --threads: must be an integer of at least 1, got '0'")):
        with pytest.raises(SystemExit):
            tool.parse_args(argv)
        assert message in capsys.readouterr().err
