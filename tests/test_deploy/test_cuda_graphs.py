"""CUDA graphs for GPU inference: which calls replay a graph, which run eagerly, and the same values either way.

The tests without a GPU check the wrapper's rules (eager on the CPU, keys, installing and removing it, copies);
those marked REQUIRES_CUDA check capture and replay themselves and skip, saying why, where no GPU is present.
"""
import copy
import pickle

import pytest
import torch
from torch.utils._pytree import tree_flatten

from evit_mm.benchmark.inputs import synthetic_batch
from evit_mm.benchmark.targets import build_target
from evit_mm.benchmark.tensor_mode import TensorMode
from evit_mm.deploy import optimize_for_inference, run_in_bfloat16, stop_cuda_graphs, use_cuda_graphs
from evit_mm.deploy.bfloat16 import Bfloat16Forward
from evit_mm.deploy.cuda_graphs import CudaGraphForward, graph_key
from evit_mm.deploy.flat_outputs import flatten_outputs
from evit_mm.models import EfficientViT
from evit_mm.tools import test as test_tool
from tests.conftest import REPO_ROOT
from tests.helpers import REQUIRES_CUDA, randomize_


def _deployed_backbone() -> EfficientViT:
    return randomize_(EfficientViT('m0', window_size=7)).switch_to_deploy()


def test_cpu_calls_run_eagerly_with_the_same_values():
    model = _deployed_backbone()
    x = torch.randn(1, 3, 97, 131)
    with torch.inference_mode():
        model(x)  # the first call of a shape runs the plain conv, later ones prepacked weights: compare those
        expected = model(x)
        assert use_cuda_graphs(model) == ('model',)  # a bare backbone is one part
        got = model(x)
    assert model.forward.captures == 0 and not model.forward.graphs
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_installing_twice_wraps_once_and_stopping_restores_the_forward():
    model = _deployed_backbone()
    use_cuda_graphs(model)
    use_cuda_graphs(model)
    assert isinstance(model.forward, CudaGraphForward) and not isinstance(model.forward.forward, CudaGraphForward)
    stop_cuda_graphs(model)
    assert 'forward' not in model.__dict__  # the class's forward again


def test_stopping_keeps_the_bfloat16_wrapper_underneath():
    model = _deployed_backbone()
    run_in_bfloat16(model)
    use_cuda_graphs(model)
    assert isinstance(model.forward.forward, Bfloat16Forward)
    stop_cuda_graphs(model)
    assert isinstance(model.__dict__['forward'], Bfloat16Forward)


def test_copies_and_pickles_serve_their_own_module_without_graphs():
    model = _deployed_backbone()
    use_cuda_graphs(model)
    model.forward.captures = 3  # as if it had captured: a copy starts afresh
    clone = copy.deepcopy(model)
    assert clone.forward.module is clone and clone.forward.forward.__self__ is clone
    assert clone.forward.captures == 0 and not clone.forward.graphs
    restored = pickle.loads(pickle.dumps(model))
    assert restored.forward.module is restored and restored.forward.captures == 0
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        for g, e in zip(restored(x), model(x), strict=True):  # both on their shape's first call
            torch.testing.assert_close(g, e, rtol=0, atol=0)


@pytest.mark.parametrize('max_graphs', [0, -1, 1.5, None])
def test_max_graphs_must_be_a_positive_integer(max_graphs):
    with pytest.raises(ValueError, match='max_graphs must be a positive integer'):
        use_cuda_graphs(_deployed_backbone(), max_graphs=max_graphs)


def test_keys_tell_shapes_strides_dtypes_and_settings_apart():
    def key(args, kwargs):
        return graph_key(*tree_flatten((args, kwargs)))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        base = key((x,), {})
        assert key((torch.randn(1, 3, 64, 64),), {}) == base  # same description, other values
        others = [key((torch.randn(1, 3, 64, 96),), {}), key((x.to(memory_format=torch.channels_last),), {}),
                  key((x.double(),), {}), key(([x],), {}), key((x,), {'scale': 2}), key((x,), {'scale': 2.0})]
    others.append(key((x,), {}))  # outside inference mode
    assert len({base, *others}) == len(others) + 1
    assert key((x,), {'samples': object()}) is None  # an argument no key can describe: eager


def test_a_detector_graphs_its_dense_parts_and_predicts_as_before_on_the_cpu():
    target = build_target(str(REPO_ROOT / 'configs/retinanet_evit_m0.py'))
    randomize_(target.model)
    module = TensorMode(target).eval()
    x = torch.randn(1, 3, 160, 224)
    batch = synthetic_batch(target.kind, 1, 96, 128)

    def run() -> tuple[list[torch.Tensor], torch.Tensor]:  # the same calls each time (prepacked weights follow shapes)
        module(x)
        return flatten_outputs(module(x)), target.model.test_step(batch)[0].pred_instances.bboxes

    with torch.inference_mode():
        summary = optimize_for_inference(target.model)
        expected, expected_boxes = run()
        graphed = optimize_for_inference(copy.deepcopy(target.model), cuda_graphs=True)
        use_cuda_graphs(target.model)
        got, boxes = run()
    assert summary.cuda_graph_parts == () and 'CUDA graphs' not in str(summary)
    assert graphed.cuda_graph_parts == ('backbone', 'neck', 'bbox_head') and 'CUDA graphs' in str(graphed)
    assert all(part.forward.captures == 0 for part in (target.model.backbone, target.model.bbox_head))
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    torch.testing.assert_close(boxes, expected_boxes, rtol=0, atol=0)


class _FakeGraph:
    """Stands in for ``torch.cuda.CUDAGraph`` on the CPU: counts replays (computes nothing)."""

    def __init__(self):
        self.replays = 0

    def replay(self):
        self.replays += 1


@pytest.fixture
def fake_cuda(monkeypatch):
    """The capture path run on the CPU with CUDA's stream and graph calls faked: what it checks is the bookkeeping
    around them (warm-up calls, keys, static inputs, copied outputs, retained cache values, the autocast cache),
    which otherwise runs only where a GPU is present."""
    import contextlib
    stream = type('FakeStream', (), {'wait_stream': lambda self, other: None})
    capturing = []

    @contextlib.contextmanager
    def graph(g):
        capturing.append(g)
        assert not torch.is_autocast_cache_enabled()  # casts recorded into the graph, not cached outside it
        yield
    for name, value in dict(Stream=lambda device: stream(), current_stream=lambda device: stream(),
                            stream=lambda s: contextlib.nullcontext(), device=lambda d: contextlib.nullcontext(),
                            CUDAGraph=_FakeGraph, graph=graph).items():
        monkeypatch.setattr(torch.cuda, name, value)
    monkeypatch.setattr(CudaGraphForward, '_graph_device', lambda self, leaves: None if (
        torch.is_grad_enabled() or self.module.training) else torch.device('cpu'))  # the CPU as the graphs' device
    return capturing


def test_capture_bookkeeping_with_cuda_faked(fake_cuda):
    model = randomize_(EfficientViT('m0', window_size=7))  # eval mode, not deployed: folded weights are cached
    calls = []
    use_cuda_graphs(model, max_graphs=2)
    eager = model.forward.forward
    model.forward.forward = lambda x: calls.append(x.shape) or eager(x)
    a, b = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        out_a = model(a)
        assert len(calls) == 4  # three warm-up calls and the captured one
        graph = next(iter(model.forward.graphs.values()))
        assert graph.graph.replays == 1 and graph.derived  # replayed once; holds the cached tensors it read
        assert all(o is not s for o, s in zip(out_a, graph.outputs, strict=True))  # copies
        model(b)
        assert len(calls) == 4 and graph.graph.replays == 2  # the same key: replayed, no Python forward
        torch.testing.assert_close(graph.static_leaves[0], b, rtol=0, atol=0)  # static input refilled
        model(torch.randn(2, 3, 64, 64))
        model(torch.randn(1, 3, 96, 64))
    assert model.forward.captures == 3 and len(model.forward.graphs) == 2 and fake_cuda[0] is graph.graph
    assert torch.is_autocast_cache_enabled()  # restored after each capture
    model(a)  # autograd records: the eager forward
    assert len(calls) == 13 and model.forward.captures == 3


def test_test_tool_asks_for_deploy_with_cuda_graphs(capsys):
    with pytest.raises(SystemExit):
        test_tool.parse_args(['config.py', 'checkpoint.pth', '--cuda-graphs'])
    assert '--cuda-graphs changes the deployed model; add --deploy' in capsys.readouterr().err
    assert test_tool.parse_args(['config.py', 'checkpoint.pth', '--deploy', '--cuda-graphs']).cuda_graphs


@REQUIRES_CUDA
def test_graphs_replay_the_eager_values_one_graph_per_shape():
    model = _deployed_backbone().cuda()
    use_cuda_graphs(model, max_graphs=2)
    shapes = [(1, 3, 97, 131), (1, 3, 97, 131), (2, 3, 64, 64), (1, 3, 97, 131), (1, 3, 128, 128)]
    with torch.inference_mode():
        for shape in shapes:
            x = torch.randn(*shape, device='cuda')
            got = model(x)
            expected = model.forward.forward(x)  # the eager forward pass
            for g, e in zip(got, expected, strict=True):
                torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    assert model.forward.captures == 3 and len(model.forward.graphs) == 2  # the oldest dropped


@REQUIRES_CUDA
def test_outputs_stay_valid_after_later_replays():
    model = _deployed_backbone().cuda()
    use_cuda_graphs(model)
    with torch.inference_mode():
        first = model(torch.zeros(1, 3, 64, 64, device='cuda'))
        kept = [f.clone() for f in first]
        model(torch.randn(1, 3, 64, 64, device='cuda'))
    for f, k in zip(first, kept, strict=True):
        torch.testing.assert_close(f, k, rtol=0, atol=0)


@REQUIRES_CUDA
def test_autograd_and_training_run_eagerly_and_autocast_gets_its_own_graph():
    model = _deployed_backbone().cuda()
    use_cuda_graphs(model)
    x = torch.randn(1, 3, 64, 64, device='cuda')
    model(x)  # autograd records: eager
    model.train()
    with torch.no_grad():
        model(x)  # training mode: eager
    model.eval()
    assert model.forward.captures == 0
    with torch.no_grad():
        model(x)
        with torch.autocast('cuda', dtype=torch.float16):
            got = model(x)
            expected = model.forward.forward(x)
    assert model.forward.captures == 2
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == e.dtype
        torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-3)


@REQUIRES_CUDA
def test_a_graph_keeps_the_cached_tensors_it_reads_when_their_caches_move_on():
    model = randomize_(EfficientViT('m0', window_size=7)).cuda()  # eval mode: folded weights and biases cached
    use_cuda_graphs(model)
    x = torch.randn(1, 3, 64, 64, device='cuda')
    with torch.inference_mode():
        model(x)  # captured, reading the caches' folded weights and bias tables
    model.train()
    model.eval()  # a mode switch drops every cache ...
    with torch.inference_mode():
        model.forward.forward(x)  # ... and an eager call recomputes them into new tensors
        filler = [torch.full((4096,), 7.0, device='cuda') for _ in range(2000)]  # would reuse freed memory
        got = model(x)  # the first graph, replayed
        expected = model.forward.forward(x)
    assert model.forward.captures == 1 and len(filler) == 2000
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


@REQUIRES_CUDA
def test_a_detector_on_the_gpu_predicts_the_same_boxes_with_graphs():
    target = build_target(str(REPO_ROOT / 'configs/retinanet_evit_m0.py'))
    randomize_(target.model)
    target.model.cuda()
    optimize_for_inference(target.model)
    batch = synthetic_batch(target.kind, 1, 96, 128)
    with torch.no_grad():
        expected = target.model.test_step(batch)[0].pred_instances
        use_cuda_graphs(target.model)
        for _ in range(2):  # capture, then replay
            got = target.model.test_step(batch)[0].pred_instances
            torch.testing.assert_close(got.bboxes, expected.bboxes, rtol=1e-4, atol=1e-3)
            torch.testing.assert_close(got.scores, expected.scores, rtol=1e-4, atol=1e-5)
    assert target.model.backbone.forward.captures == 1 and target.model.bbox_head.forward.captures == 1
