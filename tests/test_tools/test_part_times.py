"""The stem and stages of evit_mm's and timm's backbones are found and timed inside whole calls; the table pairs
them per call (no speed asserts: a deliberate 20 ms delay in one part checks what is attributed where)."""
from __future__ import annotations

import time

import pytest
import timm
import torch
from torch import nn

from evit_mm.benchmark.part_times import (PartTimes, backbone_parts, format_part_times, recording_part_times,
                                          time_parts)
from evit_mm.benchmark.timing import Timing
from evit_mm.models import EfficientViT
from tests.helpers import load_tool

PARTS = ['stem', 'stage 1', 'stage 2', 'stage 3']


@pytest.mark.parametrize('build', [
    lambda: EfficientViT('m0'),
    lambda: timm.create_model('efficientvit_m0', pretrained=False, features_only=True),
    lambda: timm.create_model('efficientvit_m0', pretrained=False),
], ids=['evit_mm', 'timm features_only', 'timm classifier'])
def test_parts_of_every_efficientvit_in_running_order(build):
    model = build().eval()
    parts = backbone_parts(model)
    assert [name for name, _, _ in parts] == PARTS
    order = []
    hooks = [m.register_forward_pre_hook(lambda *_, n=name: order.append(n)) for name, m, _ in parts]
    with torch.inference_mode():
        model(torch.randn(1, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    assert order == PARTS


def test_stages_after_the_last_output_are_not_parts():
    parts = backbone_parts(EfficientViT('m0', out_indices=(0, 1)))
    assert [name for name, _, _ in parts] == PARTS[:3]


def test_a_model_without_stem_and_stages_is_refused_naming_what_is_expected():
    with pytest.raises(ValueError, match=r"cannot find the stem and stages of Sequential .*expected evit_mm's "
                                         r'EfficientViT or timm'):
        backbone_parts(nn.Sequential(nn.Conv2d(3, 8, 3)))


def test_each_part_is_timed_once_per_call_and_the_time_lands_in_its_part():
    sleep = 0.25  # far above any part's own time (a few ms; tens on a loaded machine: 0.02 once failed under load)
    model = EfficientViT('m0').eval()
    stage = model.stages[1].blocks[0]
    forward = stage.forward

    def slow_forward(x):
        time.sleep(sleep)
        return forward(x)

    stage.forward = slow_forward
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode(), recording_part_times(model) as times:
        for _ in range(2):
            start = time.perf_counter()
            model(x)
            whole = time.perf_counter() - start
            assert sum(seconds[-1] for seconds in times.values()) <= whole
    assert list(times) == PARTS and all(len(seconds) == 2 for seconds in times.values())
    assert min(times['stage 2']) >= sleep
    assert max(max(times[name]) for name in ('stem', 'stage 1', 'stage 3')) < sleep
    with torch.inference_mode():
        model(x)  # the hooks are gone after the block
    assert all(len(seconds) == 2 for seconds in times.values())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_time_parts_leaves_out_the_warm_up_calls_and_pairs_parts_with_calls():
    models = {'a': EfficientViT('m0').eval(), 'b': timm.create_model('efficientvit_m0', features_only=True).eval()}
    x = torch.randn(1, 3, 64, 64)
    times = time_parts(models, {name: (lambda m=m: m(x)) for name, m in models.items()}, 1, warmup=2, repeats=3)
    for result in times.values():
        assert len(result.whole.latencies) == 3 and all(len(s) == 3 for s in result.parts.values())
        for i, whole in enumerate(result.whole.latencies):
            assert sum(s[i] for s in result.parts.values()) <= whole


def test_the_table_gives_paired_median_ratios_per_part_and_what_the_parts_leave_out():
    def part_times(parts: dict[str, list[float]], whole: list[float], faults: list[int]) -> PartTimes:
        return PartTimes(Timing('x', whole, 1, faults), parts)

    ours = part_times({'stem': [0.010, 0.020, 0.010], 'stage 1': [0.040, 0.040, 0.050]}, [0.051, 0.061, 0.062],
                      [0, 0, 4])
    reference = part_times({'stem': [0.030, 0.020, 0.040], 'stage 1': [0.040, 0.080, 0.050]}, [0.071, 0.101, 0.092],
                           [10, 30, 20])
    table = format_part_times({'ours': ours, 'ref': reference}, 'ours', 'ref', 'm0 at 1x64x64, fp32')
    lines = table.splitlines()
    assert lines[0] == '| m0 at 1x64x64, fp32: part | ours ms | ref ms | ratio (paired median) |'
    assert lines[2] == '| stem | 10.0 | 30.0 | 3.00 |'  # per call 3.0, 1.0, 4.0
    assert lines[3] == '| stage 1 | 40.0 | 50.0 | 1.00 |'  # 1.0, 2.0, 1.0
    assert lines[4] == '| whole call | 61.0 | 92.0 | 1.48 |'
    assert lines[5] == '| outside the parts | 1.0 | 1.0 | 1.00 |'
    assert lines[6] == '| page faults per call | 0 | 20 | |'
    with pytest.raises(ValueError, match='not comparable'):
        format_part_times({'ours': ours, 'ref': part_times({'stem': [0.1]}, [0.1], [0])}, 'ours', 'ref', 't')


def test_part_times_table_of_the_benchmark_and_its_option(capsys):
    tool = load_tool('benchmark_backbone')
    tool.main(['--arch', 'm0', '--shapes', '1x64x96', '2x64x64', '--warmup', '0', '--repeats', '2', '--parts'])
    out = capsys.readouterr().out
    for shape in ('1x64x96', '2x64x64'):
        table = out.split(f'| m0 at {shape}, fp32: part | evit_mm deploy ms | timm ms |')[1]
        rows = [line.split(' | ')[0].lstrip('| ') for line in table.strip().splitlines()[2:9]]
        assert rows == PARTS + ['whole call', 'outside the parts', 'page faults per call']
