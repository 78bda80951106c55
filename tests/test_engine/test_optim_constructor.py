"""PlainDictOptimWrapperConstructor: mmengine's groups as plain dicts, so that torch.compile traces the step."""
import pytest
import torch
from mmengine.config import Config
from mmengine.optim import DefaultOptimWrapperConstructor

from evit_mm.engine import PlainDictOptimWrapperConstructor
from evit_mm.models import EfficientViT
from tests.conftest import REPO_ROOT
from tests.test_configs import CONFIGS


def _optim_wrapper_cfg() -> dict:
    """The RetinaNet config's optimizer settings as the runner reads them (ConfigDicts)."""
    return Config.fromfile(str(REPO_ROOT / 'configs/retinanet_evit_m4.py')).optim_wrapper


def test_same_groups_as_mmengines_constructor_in_plain_dicts():
    cfg = _optim_wrapper_cfg()
    paramwise = cfg.pop('paramwise_cfg')
    assert cfg.pop('constructor') == 'PlainDictOptimWrapperConstructor'
    model = EfficientViT('m0')
    ours = PlainDictOptimWrapperConstructor(cfg, paramwise)(model).optimizer.param_groups
    theirs = DefaultOptimWrapperConstructor(cfg, paramwise)(model).optimizer.param_groups
    assert {type(group) for group in theirs} != {dict}  # what this constructor is for
    assert {type(group) for group in ours} == {dict}
    assert len(ours) == len(theirs) > 1
    for mine, reference in zip(ours, theirs):
        assert mine.keys() == reference.keys()
        assert all(mine[key] == reference[key] for key in mine if key != 'params')
        assert [id(p) for p in mine['params']] == [id(p) for p in reference['params']]
    biases = {id(m.attention_biases) for m in model.modules() if hasattr(m, 'attention_biases')}
    assert biases and all(group['weight_decay'] == 0.0 for group in ours if id(group['params'][0]) in biases)


def test_compiled_training_step_with_paramwise_groups():
    """mmengine's ``compile=True`` compiles ``train_step``, optimizer step included; with ConfigDict groups dynamo
    stopped there (torch 2.14: 'UserDefinedDictVariable' object has no attribute 'items')."""
    from mmengine.optim import build_optim_wrapper
    torch._dynamo.reset()
    model = EfficientViT(dict(embed_dims=(16, 32, 48), depths=(1, 1, 1), num_heads=(1, 1, 1), kernels=(5,)),
                         out_indices=(2,))  # few groups: a short trace
    optim_wrapper = build_optim_wrapper(model, _optim_wrapper_cfg())
    before = model.patch_embed.conv1.conv.weight.detach().clone()

    def train_step(x: torch.Tensor) -> torch.Tensor:
        loss = model(x)[0].square().mean()
        optim_wrapper.update_params(loss)
        return loss

    loss = torch.compile(train_step, backend='eager')(torch.randn(2, 3, 64, 64))
    assert torch.isfinite(loss) and not torch.equal(before, model.patch_embed.conv1.conv.weight)


@pytest.mark.parametrize('config', CONFIGS)
def test_configs_with_paramwise_groups_use_the_constructor(config):
    optim_wrapper = Config.fromfile(str(REPO_ROOT / config)).optim_wrapper
    if optim_wrapper.get('paramwise_cfg'):
        assert optim_wrapper.get('constructor') == 'PlainDictOptimWrapperConstructor'
