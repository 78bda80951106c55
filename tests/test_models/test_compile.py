"""The backbone under ``torch.compile``: one graph, no graph breaks, no recompilation when the image size changes."""
import pytest
import torch

from evit_mm.models import EfficientViT
from evit_mm.models.fused_conv import FusedConv2d
from tests.helpers import randomize_


@pytest.mark.parametrize('variant', ['eval', 'deploy', 'deploy with autograd', 'train', 'train with autograd'])
def test_backbone_compiles_without_graph_breaks(variant):
    """torch.compile(fullgraph=True) traces the whole backbone in one graph (dynamo only: backend='eager'), also a
    deployed one whose weights were prepacked by an eager call before (with autograd on, the copies are dropped)."""
    import torch._dynamo
    torch._dynamo.reset()
    model = randomize_(EfficientViT('m0'))
    x = torch.randn(2, 3, 97, 131)
    if variant.startswith('deploy'):
        model.switch_to_deploy().eval()
        with torch.no_grad():
            model(x)  # eager: prepacks where oneDNN runs
    model.train(variant == 'train')
    compiled = torch.compile(model, fullgraph=True, backend='eager')
    with torch.set_grad_enabled(variant.endswith('with autograd')):
        torch.manual_seed(0)
        got = compiled(x)
        torch.manual_seed(0)
        expected = model(x)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)
    if variant == 'deploy with autograd':
        assert all(m._derived_weights.empty for m in model.modules() if isinstance(m, FusedConv2d))


@pytest.mark.slow
@pytest.mark.skipif(torch.__version__ < '2.14', reason=f'torch {torch.__version__}: graphs counted on torch 2.14, the '
                    "pinned stack (torch 2.1's dynamo fails on meta tensors and breaks the graph); others untested")
@pytest.mark.parametrize('mode', ['eval', 'deploy', 'train'])
def test_one_graph_for_every_dense_prediction_size(mode):
    """``torch.compile(dynamic=True)`` traces the backbone once for the image sizes a detector or segmentor sees
    (padded to the window in every stage, in none, in one direction only), with the outputs of eager calls.

    Each stage's Python choice whether to pad was a guard: a new graph whenever an image needed padding where the
    last did not, up to dynamo's recompile limit, after which the model runs eagerly. The count is taken on the meta
    device: on the CPU torch's own choice of convolution backend guards on sizes too (a small batch of windows,
    a small map), which no model code can avoid. Sizes from 512 px: below 448 px the last stage is one window high
    or wide, which torch's reshape guards on (one more graph).
    """
    from torch._dynamo.testing import CompileCounter
    # M0's widths with one block and two heads per stage: the same layers, traced in a third of M0's time
    model = randomize_(EfficientViT(dict(embed_dims=(64, 128, 192), depths=(1, 1, 1), num_heads=(2, 2, 2),
                                         kernels=(5, 5))))
    if mode == 'deploy':
        model.switch_to_deploy()
    model.train(mode == 'train')

    torch._dynamo.reset()
    x = torch.randn(1, 3, 576, 800)
    with torch.no_grad():
        got = torch.compile(model, backend='eager', dynamic=True)(x)
        expected = model(x)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)

    torch._dynamo.reset()
    model.to('meta')
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, dynamic=True)
    for height, width in [(512, 640), (896, 896), (576, 800), (1344, 800), (800, 1216)]:
        with torch.no_grad():
            shapes = [tuple(out.shape) for out in compiled(torch.empty(1, 3, height, width, device='meta'))]
        assert shapes[0] == (1, 64, -(-height // 16), -(-width // 16))
    assert counter.frame_count == 1
