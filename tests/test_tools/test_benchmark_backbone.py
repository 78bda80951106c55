"""The backbone benchmark runs, checks equal outputs first, and reports positive throughputs (no timing asserts)."""
from __future__ import annotations

import pytest

from evit_mm.benchmark.backbone import GRAPHED_DEPLOY, GRAPHED_TIMM_FUSED, compare, format_rows, inference_candidates
from evit_mm.benchmark.timing import quartiles
from evit_mm.deploy.cuda_graphs import CudaGraphForward
from tests.helpers import REQUIRES_CUDA, REQUIRES_EXACT_OPERATOR_NESTING


def test_compare_runs_at_tiny_size():
    rows = compare('m0', shapes=((2, 64, 96),), warmup=0, repeats=3, train=True)
    assert [r.case for r in rows] == ['eval', 'deploy vs timm as shipped', 'deploy vs timm fused', 'train']
    assert all(r.ours > 0 and r.timm > 0 and r.ratio > 0 for r in rows)
    assert all(r.ratio_quartiles[0] <= r.ratio <= r.ratio_quartiles[1] for r in rows)
    table = format_rows(rows)
    assert table.count('\n') == 5 and '| m0 | 2x64x96 | deploy vs timm as shipped |' in table
    spread = rows[1].ratio_quartiles
    assert f'| {spread[0]:.2f}-{spread[1]:.2f} | {rows[1].ours_page_faults:.0f} / {rows[1].timm_page_faults:.0f} |' \
        in table.splitlines()[3]
    assert all(r.ours_page_faults >= 0 and r.timm_page_faults >= 0 for r in rows)
    # memory of one more call each: training steps keep their activations for the backward pass
    by_case = {r.case: r for r in rows}
    assert all(r.ours_memory_mb > 0 and r.timm_memory_mb > 0 for r in rows)
    assert by_case['train'].ours_memory_mb > 2 * by_case['eval'].ours_memory_mb
    assert by_case['train'].timm_memory_mb > 2 * by_case['eval'].timm_memory_mb
    assert by_case['deploy vs timm fused'].ours_memory_mb == by_case['deploy vs timm as shipped'].ours_memory_mb
    assert table.splitlines()[3].endswith(
        f'| {rows[1].ours_memory_mb:.1f} / {rows[1].timm_memory_mb:.1f} |')


def test_quartiles_of_the_per_round_ratios():
    assert quartiles([1.0, 2.0, 3.0, 4.0, 5.0]) == (2.0, 4.0)
    assert quartiles([1.3]) == (1.3, 1.3)


def test_compare_ablates_the_fast_paths():
    """Each fast path can be switched off and timed against the same timm rounds."""
    rows = compare('m0', shapes=((1, 64, 96),), warmup=0, repeats=1, train=True, ablate=True)
    assert [r.case for r in rows] == ['eval', 'deploy vs timm as shipped', 'deploy vs timm fused', 'train',
                                      'eval without BN folding', 'deploy without CPU kernels vs timm as shipped',
                                      'deploy with CPU kernels vs timm as shipped',
                                      'deploy without prepacked weights vs timm as shipped', 'train without GEMM convs',
                                      'train with GEMM convs', 'train with the 1x1 GEMMs alone',
                                      'train with the im2col weight gradients alone']
    by_case = {r.case: r for r in rows}
    gemm_cases = [r.case for r in rows if 'GEMM' in r.case or 'im2col' in r.case]
    assert len(gemm_cases) == 4 and all(by_case[case].timm == by_case['train'].timm for case in gemm_cases)  # same
    for case in gemm_cases:  # profiled as training steps too
        assert by_case[case].ours_memory_mb > 2 * by_case['eval without BN folding'].ours_memory_mb
    assert by_case['eval without BN folding'].timm == by_case['eval'].timm
    assert all(r.ours > 0 and r.ratio > 0 for r in rows)


def test_compare_times_under_autocast():
    rows = compare('m0', shapes=((2, 64, 64),), warmup=0, repeats=1, train=True, dtype='bf16')
    assert len(rows) == 4 and all(r.ours > 0 and r.timm > 0 for r in rows)


def test_compare_ablates_the_bfloat16_depthwise_input_gradients():
    rows = compare('m0', shapes=((2, 64, 64),), warmup=0, repeats=1, train=True, dtype='bf16', ablate=True)
    by_case = {r.case: r for r in rows}
    ablated = by_case['train without float32 depthwise input gradients']
    assert ablated.timm == by_case['train'].timm and ablated.ours > 0
    assert ablated.ours_memory_mb > 2 * by_case['eval without BN folding'].ours_memory_mb  # a training step


def test_compare_times_both_models_on_bfloat16_weights():
    rows = compare('m0', shapes=((2, 64, 96),), warmup=0, repeats=2, bfloat16=True)
    by_case = {r.case: r for r in rows}
    assert list(by_case)[-2:] == ['deploy bf16 weights vs timm as shipped', 'deploy bf16 weights vs timm bf16 weights']
    assert by_case['deploy bf16 weights vs timm as shipped'].timm == by_case['eval'].timm  # the same float32 rounds
    assert all(r.ours > 0 and r.timm > 0 and r.ratio > 0 for r in rows)


def test_compare_with_cuda_graphs_needs_a_gpu_and_adds_both_graphed_models():
    with pytest.raises(ValueError, match='cuda_graphs needs a cuda device'):
        compare('m0', shapes=((1, 64, 64),), cuda_graphs=True)
    models = inference_candidates('m0', cuda_graphs=True)
    for name in (GRAPHED_DEPLOY, GRAPHED_TIMM_FUSED):
        assert isinstance(models[name].forward, CudaGraphForward) and models[name].forward.module is models[name]
    assert 'forward' not in models['evit_mm deploy'].__dict__  # copies: the other candidates stay eager


@REQUIRES_CUDA
def test_compare_times_graphed_models_on_a_gpu():
    rows = compare('m0', shapes=((2, 64, 96),), warmup=1, repeats=2, device='cuda', dtype='fp16', cuda_graphs=True)
    cases = [r.case for r in rows]
    assert cases[-2:] == ['deploy CUDA graphs vs timm as shipped', 'deploy CUDA graphs vs timm fused CUDA graphs']
    assert all(r.ours > 0 and r.timm > 0 for r in rows)


def test_compare_rejects_unknown_dtype():
    with pytest.raises(ValueError, match=r"unknown dtype 'fp8'; choose one of \['bf16', 'fp16', 'fp32'\]"):
        compare('m0', shapes=((1, 64, 64),), dtype='fp8')


def test_compare_compiles_both_deployed_models_in_the_given_mode(monkeypatch):
    import evit_mm.benchmark.backbone as backbone_benchmark
    calls = []

    def fake_compiled(model, mode, freezing):
        calls.append((type(model).__name__, mode, freezing))
        return model  # the wiring is under test here, not inductor
    monkeypatch.setattr(backbone_benchmark, 'compiled', fake_compiled)
    rows = compare('m0', shapes=((1, 64, 64),), warmup=0, repeats=1, compile_mode='reduce-overhead')
    assert calls == [('EfficientViT', 'reduce-overhead', True), ('FeatureListNet', 'reduce-overhead', True)]
    assert {'compiled deploy vs timm compiled', 'compiled deploy vs timm as shipped'} <= {r.case for r in rows}


def test_compiled_rejects_unknown_mode():
    from torch import nn

    from evit_mm.benchmark.compilation import compiled
    with pytest.raises(ValueError, match=r"unknown compile mode 'fast'; choose one of \('default', 'reduce-overhead'"):
        compiled(nn.Identity(), 'fast')


@REQUIRES_EXACT_OPERATOR_NESTING
def test_host_work_counts_calls_and_sees_the_deploy_savings(monkeypatch):
    import torch
    from torch import nn

    from evit_mm.benchmark.backbone import host_work_table
    from evit_mm.benchmark.host_work import count_host_work
    from evit_mm.models.fused_conv import FusedConv2d
    monkeypatch.setattr(FusedConv2d, 'min_output_elements', 0)  # the fused kernel on this test's small maps
    monkeypatch.setattr(torch.backends.cpu, 'get_cpu_capability', lambda: 'AVX2')  # where they are the default
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Flatten())
    work = count_host_work(model, torch.randn(1, 3, 2, 2))
    assert (work.operators, work.compute_operators, work.module_calls) == (3, 2, 4)  # flatten is a view
    rows = {line.split(' | ')[0].lstrip('| '): [int(v) for v in line.rstrip(' |').split(' | ')[1:]]
            for line in host_work_table('m0', (1, 64, 64)).splitlines()[2:]}
    # no BatchNorm calls left (eval mode folds them too, and runs plain ops where gemm_convs is off: AVX-512)
    assert rows['evit_mm deploy, plain ops (the GPU path)'][0] < rows['evit_mm, BatchNorm not folded in eval'][0]
    assert rows['evit_mm deploy'][1] < rows['evit_mm deploy, plain ops (the GPU path)'][1]  # fused ReLU/add


def test_backward_nodes_are_timed_per_kind_and_add_up_to_at_most_the_pass():
    import torch
    from torch import nn

    from evit_mm.benchmark.backward_nodes import backward_breakdown, format_breakdown, time_backward_nodes
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)).train()
    x = torch.randn(2, 3, 9, 9)
    spent, wall = time_backward_nodes(model(x).square().mean())
    assert {'ConvolutionBackward0', 'NativeBatchNormBackward0', 'ReluBackward0', 'MeanBackward0'} <= set(spent)
    assert all(t > 0 for t in spent.values()) and sum(spent.values()) <= wall
    assert model[0].weight.grad is not None  # the pass itself ran
    by_shape, _ = time_backward_nodes(model(x).square().mean(), by_shape=True)
    assert {'ConvolutionBackward0(4, 3, 3, 3)', 'ConvolutionBackward0(2, 4, 1, 1)',
            'NativeBatchNormBackward0(2, 4, 7, 7)', 'ReluBackward0(2, 4, 7, 7)'} <= set(by_shape)
    with pytest.raises(ValueError, match='loss has no grad_fn'):
        time_backward_nodes(torch.ones(()))

    other = nn.Sequential(nn.Conv2d(3, 2, 1)).train()
    nodes, walls = backward_breakdown({'a': model, 'b': other}, lambda m: m(x).square().mean(), warmup=1, repeats=2)
    assert 'NativeBatchNormBackward0' in nodes['a'] and 'NativeBatchNormBackward0' not in nodes['b']
    table = format_breakdown(nodes, walls, top=2)
    assert table.splitlines()[0] == '| backward node | a ms | b ms |' and len(table.splitlines()) == 6
    assert table.splitlines()[-1].startswith('| backward pass, wall clock | ')


def test_backward_nodes_table_compares_the_two_backbones():
    from evit_mm.benchmark.backbone import backward_nodes_table
    table = backward_nodes_table('m0', (2, 64, 64), repeats=1, by_shape=True, top=400)
    rows = {line.split(' | ')[0].lstrip('| '): line for line in table.splitlines()[2:]}
    assert 'MmBackward0' in rows  # evit_mm's 1x1 convs and token layers are GEMMs
    assert any(key.endswith(' cl') for key in rows)  # evit_mm's BatchNorms see channels-last maps
    assert 'ConvolutionBackward0(64, 32, 1, 1)' in rows  # timm's 1x1 convs are convolutions
