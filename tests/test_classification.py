"""ImageNet classifier: official/timm logits, the recipe config, demo training with EMA, weights for detection."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from mmengine.config import Config

from evit_mm.data.demo_imagenet import make_imagenet_demo
from evit_mm.data.imagenet import ImageFolderDataset
from evit_mm.models import EfficientViT, EfficientViTClassifier
from evit_mm.models import classifier as classifier_module
from evit_mm.tools import test as test_tool
from evit_mm.tools import train as train_tool
from evit_mm.tools.preflight import PreflightError
from tests.conftest import REPO_ROOT
from tests.helpers import logged_metrics, randomize_

DEMO_CONFIG = str(REPO_ROOT / 'configs/demo/evit_m0_in1k_demo.py')


@pytest.mark.parametrize('arch', ['m0', 'm4'])
def test_official_checkpoint_reproduces_golden_logits(golden_dir, arch):
    golden = torch.load(golden_dir / f'efficientvit_{arch}_golden.pt', weights_only=True)
    model = EfficientViTClassifier(dict(type='EfficientViT', arch=arch),
                                   init_cfg=dict(type='Pretrained',
                                                 checkpoint=str(golden_dir / f'efficientvit_{arch}_random.pth')))
    model.init_weights()
    model.eval()
    with torch.no_grad():
        logits = model(golden['input_224'])
    torch.testing.assert_close(logits, golden['logits_224'], atol=1e-4, rtol=0)


def test_timm_classifier_weights_give_timm_logits(tmp_path):
    reference = randomize_(timm.create_model('efficientvit_m2', pretrained=False), seed=5)
    torch.save(reference.state_dict(), tmp_path / 'timm.pth')
    model = EfficientViTClassifier(dict(type='EfficientViT', arch='m2'))
    model.load_checkpoint(str(tmp_path / 'timm.pth'))
    model.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(model(x), expected, atol=1e-4, rtol=1e-4)
        fused = model.switch_to_deploy()(x)
    assert (fused - expected).abs().max() <= 1e-4 * expected.abs().max()  # random weights: logits are large


def test_head_with_other_number_of_classes(tmp_path):
    source = EfficientViTClassifier(dict(type='EfficientViT', arch='m0'), num_classes=10)
    torch.save({'state_dict': source.state_dict()}, tmp_path / 'ten.pth')
    strict = EfficientViTClassifier(dict(type='EfficientViT', arch='m0'), num_classes=4)
    with pytest.raises(ValueError, match="10-class head, the model 4 classes; set model.head_mismatch='reinit'"):
        strict.load_checkpoint(str(tmp_path / 'ten.pth'))
    lenient = EfficientViTClassifier(dict(type='EfficientViT', arch='m0'), num_classes=4, head_mismatch='reinit')
    lenient.load_checkpoint(str(tmp_path / 'ten.pth'))
    name = 'backbone.stages.2.blocks.0.mixer.m.attn.attention_biases'
    assert torch.equal(lenient.state_dict()[name], source.state_dict()[name])


def test_distillation_head_is_averaged_at_test_and_refused_in_training(tmp_path, monkeypatch):
    logged = []
    monkeypatch.setattr(classifier_module, 'print_log', lambda message, **kwargs: logged.append(message))
    source = randomize_(EfficientViTClassifier(dict(type='EfficientViT', arch='m0'), num_classes=5,
                                               distillation=True), seed=2)
    torch.save({'state_dict': source.state_dict()}, tmp_path / 'distilled.pth')
    source.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = source.extract_feat(x)
        torch.testing.assert_close(source(x), (source.head(feats) + source.head_dist(feats)) / 2)
        plain = EfficientViTClassifier(dict(type='EfficientViT', arch='m0'), num_classes=5)
        plain.load_checkpoint(str(tmp_path / 'distilled.pth'))
        assert 'unused (a distillation head: distillation=True averages it in' in ' '.join(logged)
        torch.testing.assert_close(plain.eval()(x), source.head(feats))
        # a checkpoint without one: the distillation head starts as the class head, the logits are the same
        torch.save({'state_dict': plain.state_dict()}, tmp_path / 'plain.pth')
        both = EfficientViTClassifier(dict(type='EfficientViT', arch='m0'), num_classes=5, distillation=True)
        both.load_checkpoint(str(tmp_path / 'plain.pth'))
        torch.testing.assert_close(both.eval()(x), plain(x))
    labels = torch.tensor([0, 3])
    with pytest.raises(ValueError, match='distillation=True: the distillation head learns from a teacher'):
        source.train()(x, dict(labels=labels, targets=labels), mode='loss')
    assert plain.train()(x, dict(labels=labels, targets=labels), mode='loss')['loss'].isfinite()


def test_recipe_config():
    cfg = Config.fromfile(str(REPO_ROOT / 'configs/evit_m4_in1k.py'))
    opt = cfg.optim_wrapper
    assert opt.type == 'AGCOptimWrapper' and opt.agc_clip_factor == 0.02
    assert opt.optimizer.lr == pytest.approx(1e-3 * 2048 / 512) and opt.optimizer.weight_decay == 0.025
    assert cfg.auto_scale_lr.base_batch_size == 2048
    assert cfg.param_scheduler[1].eta_min == 1e-5 and cfg.train_cfg.max_epochs == 310
    assert cfg.param_scheduler[0].start_factor * opt.optimizer.lr == pytest.approx(1e-6)
    assert cfg.train_dataloader.sampler.type == 'RepeatAugSampler'
    mix = cfg.model.data_preprocessor.mixup
    assert (mix.mixup_alpha, mix.cutmix_alpha, mix.label_smoothing) == (0.8, 1.0, 0.1)
    t = cfg.train_transform
    assert (t.auto_augment, t.color_jitter, t.re_prob, t.interpolation) == ('rand-m9-mstd0.5-inc1', 0.4, 0.25,
                                                                            'bicubic')
    assert cfg.custom_hooks[0].type == 'EMAHook'
    for arch in ('m0', 'm1', 'm2', 'm3', 'm5'):
        assert Config.fromfile(str(REPO_ROOT / f'configs/evit_{arch}_in1k.py')).model.backbone.arch == arch


@pytest.fixture(scope='module')
def imagenet_root(tmp_path_factory) -> Path:
    return make_imagenet_demo(tmp_path_factory.mktemp('imagenet'), train_per_class=8, val_per_class=4, size=64)


def test_dataset_errors(tmp_path, imagenet_root):
    with pytest.raises(FileNotFoundError, match='ImageNet layout'):
        ImageFolderDataset(tmp_path / 'nope')
    (tmp_path / 'empty_class').mkdir()
    with pytest.raises(ValueError, match="class folder '.*empty_class' has no images"):
        ImageFolderDataset(tmp_path)
    dataset = ImageFolderDataset(imagenet_root / 'val', transform=dict(input_size=64, crop_pct=1.0))
    assert len(dataset) == 16 and dataset.classes == ['circle', 'square', 'star', 'triangle']
    assert dataset[0]['inputs'].shape == (3, 64, 64)


def _options(root: Path, epochs: int = 2, **extra: str) -> list[str]:
    opts = {'train_dataloader.dataset.data_root': f'{root}/train', 'val_dataloader.dataset.data_root': f'{root}/val',
            'test_dataloader.dataset.data_root': f'{root}/val', 'train_dataloader.num_workers': '0',
            'val_dataloader.num_workers': '0', 'test_dataloader.num_workers': '0',
            'train_dataloader.persistent_workers': 'False', 'val_dataloader.persistent_workers': 'False',
            'test_dataloader.persistent_workers': 'False', 'train_dataloader.batch_size': '8',
            'train_cfg.max_epochs': str(epochs), 'train_cfg.val_interval': str(epochs),
            'default_hooks.checkpoint.interval': str(epochs), 'param_scheduler.1.T_max': str(epochs - 1),
            'param_scheduler.1.end': str(epochs), 'train_dataloader.dataset.transform.input_size': '64',
            'val_dataloader.dataset.transform.input_size': '64',
            'test_dataloader.dataset.transform.input_size': '64', **extra}
    return ['--cfg-options', *(f'{k}={v}' for k, v in opts.items())]


@pytest.mark.slow
def test_train_test_with_ema_and_reuse_for_detection(imagenet_root, tmp_path):
    work = tmp_path / 'work'
    assert train_tool.main([DEMO_CONFIG, '--work-dir', str(work), *_options(imagenet_root)]) == 0
    ckpt = torch.load(work / 'epoch_2.pth')
    raw, ema = ckpt['ema_state_dict'], ckpt['state_dict']  # mmengine's EMAHook saves the EMA weights as state_dict
    differing = [k for k in ema if k.startswith('backbone.') and not torch.equal(ema[k], raw[f'module.{k}'])]
    assert differing, 'EMA and raw weights should differ after training'
    val_top1 = logged_metrics(work, 'accuracy/top1')['accuracy/top1']
    log = ''.join(path.read_text() for path in work.glob('*/*.log'))
    assert 'Epoch(train)' in log and 'Failed to search registry' not in log  # every registry has an evit_mm scope

    test_dir = tmp_path / 'test'
    preds_file = tmp_path / 'preds.pkl'
    assert test_tool.main([DEMO_CONFIG, str(work / 'epoch_2.pth'), '--work-dir', str(test_dir),
                           '--out', str(preds_file), *_options(imagenet_root)]) == 0
    assert logged_metrics(test_dir, 'accuracy/top1')['accuracy/top1'] == pytest.approx(val_top1)
    import pickle
    with open(preds_file, 'rb') as f:  # written by mmengine's DumpResults in this test: our own file
        dumped = torch.stack([p['pred_score'] for p in pickle.load(f)])

    # The EMA weights are what was evaluated: recompute top-1 from them directly.
    model = EfficientViTClassifier(dict(type='EfficientViT', arch='m0'), num_classes=4)
    model.load_state_dict({k: v for k, v in ema.items()})
    model.eval()
    val_transform = dict(Config.fromfile(DEMO_CONFIG).val_dataloader.dataset.transform, input_size=64)
    dataset = ImageFolderDataset(imagenet_root / 'val', transform=val_transform)
    with torch.no_grad():
        inputs = torch.stack([dataset[i]['inputs'] for i in range(len(dataset))])
        labels = torch.tensor([dataset[i]['data_samples'] for i in range(len(dataset))])
        scores = model(inputs).softmax(-1)
        top1 = (scores.argmax(1) == labels).float().mean().item() * 100
        raw_model = EfficientViTClassifier(dict(type='EfficientViT', arch='m0'), num_classes=4)
        raw_model.load_state_dict({k[len('module.'):]: v for k, v in raw.items() if k.startswith('module.')})
        raw_scores = raw_model.eval()(inputs).softmax(-1)
    assert top1 == pytest.approx(val_top1)
    torch.testing.assert_close(dumped, scores, atol=1e-5, rtol=1e-4)  # the evaluated scores are the EMA model's
    assert not torch.allclose(dumped, raw_scores, atol=1e-4)

    # A pretraining checkpoint initialises a detection backbone with no conversion and no missing keys.
    backbone = EfficientViT('m0', init_cfg=dict(type='Pretrained', checkpoint=str(work / 'epoch_2.pth')))
    backbone.init_weights()
    assert torch.equal(backbone.patch_embed.conv1.conv.weight, ema['backbone.patch_embed.conv1.conv.weight'])


def test_missing_dataset_and_wrong_classes_stop_before_training(imagenet_root, tmp_path):
    with pytest.raises(PreflightError, match='ImageNet folder layout'):
        train_tool.main([DEMO_CONFIG, '--work-dir', str(tmp_path), '--cfg-options',
                         f'train_dataloader.dataset.data_root={tmp_path}/none'])
    with pytest.raises(PreflightError, match=r'model.num_classes is 1000, but the dataset has 4 classes'):
        train_tool.main([DEMO_CONFIG, '--work-dir', str(tmp_path),
                         *_options(imagenet_root, **{'model.num_classes': '1000'})])


def test_randaugment_posterize_at_full_magnitude_gives_black_image():
    from PIL import Image
    from timm.data import auto_augment

    from evit_mm.compat import timm_posterize
    timm_posterize.install()
    image = Image.new('RGB', (8, 8), (200, 100, 50))
    out = auto_augment.NAME_TO_OP['PosterizeIncreasing'](image, 0)
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert auto_augment.NAME_TO_OP['PosterizeIncreasing'](image, 4).getpixel((0, 0)) == (192, 96, 48)
