"""Checkpoint formats, shape adaptation, strict errors and safe reading."""
from __future__ import annotations

import os
import re
import urllib.error
from pathlib import Path

import pytest
import timm
import torch

from evit_mm.checkpoint import (CheckpointMismatchError, CheckpointReadError, detect_format, load_pretrained,
                                local_checkpoint, read_checkpoint, to_backbone_state_dict)
from evit_mm.checkpoint.arch_match import matching_archs
from evit_mm.models import EfficientViT, EfficientViTClassifier
from evit_mm.models.backbones.efficientvit import ARCH_SETTINGS
from evit_mm.tools import convert as convert_tool
from evit_mm.tools.convert import convert_checkpoint
from evit_mm.tools.entry import run
from tests.helpers import hub_cache, randomize_


@pytest.fixture(scope='module')
def m0_reference():
    """A randomised M0 backbone, its output on a fixed input, and the matching timm classifier state dict."""
    timm_model = randomize_(timm.create_model('efficientvit_m0', pretrained=False, img_size=448), seed=3)
    model = EfficientViT('m0')
    model.load_state_dict(to_backbone_state_dict(timm_model.state_dict()))
    model.eval()
    x = torch.randn(1, 3, 96, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(x)
    return timm_model.state_dict(), x, out


def _outputs(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def _assert_same(a, b):
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v)


@pytest.mark.parametrize('wrap', ['bare', 'state_dict', 'detector', 'module', 'safetensors'])
def test_formats_load_to_identical_outputs(tmp_path, m0_reference, wrap):
    timm_sd, x, expected = m0_reference
    backbone_sd = to_backbone_state_dict(timm_sd)
    if wrap == 'bare':
        path, obj = tmp_path / 'a.pth', timm_sd
    elif wrap == 'state_dict':
        path, obj = tmp_path / 'a.pth', {'state_dict': backbone_sd, 'meta': {'epoch': 3}}
    elif wrap == 'detector':
        obj = {'state_dict': {**{f'backbone.{k}': v for k, v in backbone_sd.items()},
                              'neck.lateral.weight': torch.zeros(3), 'bbox_head.cls.weight': torch.zeros(2)}}
        path = tmp_path / 'a.pth'
    elif wrap == 'module':
        path, obj = tmp_path / 'a.pth', {f'module.{k}': v for k, v in timm_sd.items()}
    else:
        from safetensors.torch import save_file
        path, obj = tmp_path / 'a.safetensors', None
        save_file({k: v.contiguous() for k, v in timm_sd.items()}, path)
    if obj is not None:
        torch.save(obj, path)
    model = EfficientViT('m0', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    _assert_same(_outputs(model, x), expected)


@pytest.mark.parametrize('init_cfg', [dict(type='Pretrained', chekpoint='m0.pth'),
                                      dict(type='Pretrained', checkpoint='m0.pth', strict=False)])
def test_pretrained_init_cfg_with_a_misspelt_or_unknown_key_raises(init_cfg):
    with pytest.raises(ValueError, match=r"init_cfg=dict\(type='Pretrained', ...\) takes checkpoint \(required\), "
                                         r"prefix and map_location; got keys \["):
        EfficientViT('m0', init_cfg=init_cfg)  # when the model is built, before any weight is read
    with pytest.raises(ValueError, match=r"takes checkpoint \(required\), map_location; got keys \['checkpoint', "
                                         r"'prefix', 'type'\]"):  # the classifier loads heads too: no prefix
        EfficientViTClassifier(dict(type='EfficientViT', arch='m0'),
                               init_cfg=dict(type='Pretrained', checkpoint='m0.pth', prefix='backbone.'))


def test_two_dimensional_weights_reshaped_for_1x1_convs(tmp_path, m0_reference):
    timm_sd, x, expected = m0_reference
    flat = {k: (v.flatten(1) if v.dim() == 4 and v.shape[2:] == (1, 1) else v) for k, v in timm_sd.items()}
    assert any(v.dim() == 2 and not k.startswith('head') for k, v in flat.items())
    torch.save({'model': flat}, tmp_path / 'flat.pth')
    model = EfficientViT('m0')
    load_pretrained(model, tmp_path / 'flat.pth')
    _assert_same(_outputs(model, x), expected)


def test_other_arch_raises_listing_keys_and_loads_nothing(tmp_path, m0_reference):
    timm_sd, _, _ = m0_reference
    torch.save(timm_sd, tmp_path / 'm0.pth')
    model = EfficientViT('m4')
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=r'another arch.*shape mismatches: patch_embed\.conv1.*'
                                                      r"holds the weights of arch 'm0', set arch='m0'"):
        load_pretrained(model, tmp_path / 'm0.pth')
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_missing_keys_raise_and_extra_keys_are_reported(tmp_path, m0_reference):
    timm_sd, _, _ = m0_reference
    partial = dict(timm_sd)
    del partial['stages.2.blocks.2.ffn1.m.pw2.conv.weight']
    torch.save(partial, tmp_path / 'partial.pth')
    with pytest.raises(CheckpointMismatchError, match=r'1 missing keys: stages\.2\.blocks\.2\.ffn1\.m\.pw2\.conv'):
        load_pretrained(EfficientViT('m0'), tmp_path / 'partial.pth')
    extra = dict(timm_sd, **{'stages.0.extra_thing': torch.zeros(2)})
    torch.save(extra, tmp_path / 'extra.pth')
    assert load_pretrained(EfficientViT('m0'), tmp_path / 'extra.pth') == ['stages.0.extra_thing']


def test_not_an_efficientvit_checkpoint(tmp_path):
    torch.save({'state_dict': {'conv1.weight': torch.zeros(1), 'layer1.0.bn1.weight': torch.zeros(1)}},
               tmp_path / 'resnet.pth')
    with pytest.raises(ValueError, match='not an EfficientViT'):
        load_pretrained(EfficientViT('m0'), tmp_path / 'resnet.pth')
    with pytest.raises(FileNotFoundError, match='checkpoint not found'):
        load_pretrained(EfficientViT('m0'), tmp_path / 'nope.pth')


class ForeignObject:
    """An arbitrary class: unpickling it would mean running code of the file's choosing."""


def test_foreign_objects_are_refused(tmp_path):
    torch.save({'state_dict': {}, 'x': ForeignObject()}, tmp_path / 'evil.pth')
    with pytest.raises(CheckpointReadError, match=r"holds Python objects besides weights \(tests\.test_checkpoint\."
                                                  r"test_loading\.ForeignObject\), and they are not unpickled"):
        read_checkpoint(tmp_path / 'evil.pth')
    torch.save(torch.nn.Linear(2, 2), tmp_path / 'module.pth')  # a whole pickled model
    with pytest.raises(CheckpointReadError, match=r'\(torch\.nn\.modules\.linear\.Linear\).*save the weights alone'):
        read_checkpoint(tmp_path / 'module.pth')


def _unreadable_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Files that are not checkpoints, each with what the error must say."""
    torch.save({'state_dict': torch.nn.Linear(8, 8).state_dict()}, folder / 'whole.pth')
    whole = (folder / 'whole.pth').read_bytes()
    files = {'empty.pth': (b'', 'the file is empty or cut short'),
             # torch's weights-only unpickler's words, or pickle's (evit_mm's allow-list unpickler, torch < 2.4)
             'notes.pth': (b'# not weights\n',
                           r"not a file torch\.save wrote \((Unsupported operand 35|invalid load key, '#'\.)\)"),
             'half.pth': (whole[:len(whole) // 2], r'the file is damaged \(PytorchStreamReader failed reading zip'),
             'weights.safetensors': (b'nope', 'as a safetensors file: Error while deserializing header')}
    for name, (content, _) in files.items():
        (folder / name).write_bytes(content)
    return {name: (folder / name, match) for name, (_, match) in files.items()}


def test_unreadable_files_name_the_problem(tmp_path):
    for path, match in _unreadable_files(tmp_path).values():
        with pytest.raises(CheckpointReadError, match=rf"cannot read checkpoint '{re.escape(str(path))}'.*{match}"):
            read_checkpoint(path)
        with pytest.raises(CheckpointReadError):  # through init_cfg's loader too
            load_pretrained(EfficientViT('m0'), path)


def test_url_is_downloaded_into_torch_hubs_cache_and_read_weights_only(monkeypatch, tmp_path, m0_reference):
    served = {'https://example.org/weights/efficientvit_m0.pth': {'model': m0_reference[0]},
              'https://example.org/weights/pickled_model.pth': {'model': EfficientViT('m0')}}
    fetched = []

    def fake_download(url, dst, **kwargs):
        fetched.append(url)
        torch.save(served[url], dst)

    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path))
    monkeypatch.setattr(torch.hub, 'download_url_to_file', fake_download)
    for _ in range(2):  # the second time from the cache
        load_pretrained(EfficientViT('m0'), 'https://example.org/weights/efficientvit_m0.pth')
    assert fetched == ['https://example.org/weights/efficientvit_m0.pth']
    assert (tmp_path / 'checkpoints' / 'efficientvit_m0.pth').is_file()
    with pytest.raises(CheckpointReadError, match=r'holds Python objects besides weights \(evit_mm\.models'):
        load_pretrained(EfficientViT('m0'), 'https://example.org/weights/pickled_model.pth')


OFFICIAL_M0_URL = ('https://github.com/xinyuliu-jeffrey/EfficientViT_Model_Zoo/releases/download/v1.0/'
                   'efficientvit_m0.pth')


def test_url_read_from_torch_hubs_cache_without_network(monkeypatch, tmp_path, m0_reference):
    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path))
    (tmp_path / 'checkpoints').mkdir()
    torch.save({'model': m0_reference[0]}, tmp_path / 'checkpoints' / 'efficientvit_m0.pth')
    monkeypatch.setattr(torch.hub, 'download_url_to_file', _no_network)
    timm_sd, x, expected = m0_reference
    model = EfficientViT('m0')
    load_pretrained(model, OFFICIAL_M0_URL)  # torch.hub's real loader, which reads its cache first
    with torch.no_grad():
        for got, ref in zip(model.eval()(x), expected):
            torch.testing.assert_close(got, ref)


def _no_network(url, *args, **kwargs):
    raise urllib.error.URLError('[Errno -2] Name or service not known')


def test_url_that_cannot_be_downloaded_says_where_to_put_the_file(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path))
    monkeypatch.setattr(torch.hub, 'download_url_to_file', _no_network)
    cached = tmp_path / 'checkpoints' / 'efficientvit_m0.pth'
    with pytest.raises(FileNotFoundError, match=rf"cannot download checkpoint '{re.escape(OFFICIAL_M0_URL)}' "
                                                rf"\(\[Errno -2\] Name or service not known\).*put it at "
                                                rf"'{re.escape(str(cached))}'"):
        load_pretrained(EfficientViT('m0'), OFFICIAL_M0_URL)


def test_official_layout_detected_and_renamed(golden_dir):
    raw = torch.load(golden_dir / 'efficientvit_m4_random.pth', weights_only=True)
    assert detect_format(raw['model']) == 'official'
    converted = to_backbone_state_dict(raw)
    expected = set(EfficientViT('m4').state_dict())
    assert set(converted) == expected
    assert converted['stages.1.downsample.patchmerge.se.fc1.weight'] is raw['model']['blocks2.1.se.fc1.weight']


def test_convert_tool_writes_clean_checkpoints(tmp_path, m0_reference):
    timm_sd, x, expected = m0_reference
    torch.save(timm_sd, tmp_path / 'timm.pth')
    tensors = len(EfficientViT('m0').state_dict())
    for name, arch in (('clean.pth', 'm0'), ('clean.safetensors', None)):  # None: read from the weights
        assert convert_checkpoint(tmp_path / 'timm.pth', tmp_path / name, arch=arch) == ('m0', tensors)
        loaded = read_checkpoint(tmp_path / name)
        model = EfficientViT('m0')
        model.load_state_dict(loaded.get('state_dict', loaded))  # strict: exactly the backbone's keys
        _assert_same(_outputs(model, x), expected)


def test_every_arch_is_recognised_by_its_weights_alone():
    for name in ARCH_SETTINGS:
        state_dict = EfficientViT(name).state_dict()
        flat = {k: (v.flatten(1) if v.dim() == 4 and v.shape[2:] == (1, 1) else v) for k, v in state_dict.items()}
        assert matching_archs(state_dict) == matching_archs(flat) == [name]
    custom = dict(embed_dims=(64, 128, 192), depths=(1, 2, 2), num_heads=(4, 4, 4), kernels=(5, 5, 5, 5))
    assert matching_archs(EfficientViT(custom).state_dict()) == []


def test_convert_tool_names_the_problem_without_a_traceback(tmp_path, m0_reference, capsys):
    torch.save(m0_reference[0], tmp_path / 'm0.pth')
    message = run(convert_tool.main, [str(tmp_path / 'm0.pth'), str(tmp_path / 'out.pth'), '--arch', 'm4'])
    assert message.startswith('error: ') and "holds the weights of arch 'm0'" in message
    truncated = {k: v for k, v in m0_reference[0].items() if not k.startswith('stages.2.')}
    torch.save(truncated, tmp_path / 'truncated.pth')
    message = run(convert_tool.main, [str(tmp_path / 'truncated.pth'), str(tmp_path / 'out.pth')])
    assert message.startswith('error: ') and 'match no EfficientViT arch (m0, m1, m2, m3, m4, m5)' in message
    assert not (tmp_path / 'out.pth').exists()
    assert convert_tool.main([str(tmp_path / 'm0.pth'), str(tmp_path / 'out.pth')]) == 0
    assert 'EfficientViT-M0' in capsys.readouterr().out
    usages = {('--arch', 'm9'): "argument --arch: invalid choice: 'm9' (choose from 'm0', 'm1'",
              ('--window-size', '0'): "argument --window-size: must be an integer of at least 1, got '0'",
              ('--window-size', '7', '7'): '--window-size: window_size must be a positive int or 3 positive ints, '
                                           'got (7, 7)'}
    for options, usage in usages.items():
        with pytest.raises(SystemExit) as exit_info:
            convert_tool.main([str(tmp_path / 'm0.pth'), str(tmp_path / 'out.pth'), *options])
        assert exit_info.value.code == 2 and usage in capsys.readouterr().err
    message = run(convert_tool.main, [str(_unreadable_files(tmp_path)['notes.pth'][0]), str(tmp_path / 'new.pth')])
    assert message.startswith("error: cannot read checkpoint '") and 'not a file torch.save wrote' in message


def test_hf_hub_names_load_timm_weights_from_the_hub_cache(offline_hub, m0_reference):
    from safetensors.torch import save_file
    timm_sd, x, expected = m0_reference
    hub_cache(offline_hub, 'timm/efficientvit_m0.r224_in1k', {
        'model.safetensors': lambda p: save_file({k: v.contiguous() for k, v in timm_sd.items()}, p)})
    model = EfficientViT('m0', init_cfg=dict(type='Pretrained', checkpoint='hf-hub:timm/efficientvit_m0.r224_in1k'))
    model.init_weights()
    _assert_same(_outputs(model, x), expected)


def test_hf_hub_revision_and_pickled_weights(offline_hub, m0_reference):
    timm_sd, x, expected = m0_reference
    zeros = {k: torch.zeros_like(v) for k, v in timm_sd.items()}
    hub_cache(offline_hub, 'me/evit', {'pytorch_model.bin': lambda p: torch.save(zeros, p)})
    hub_cache(offline_hub, 'me/evit', {'pytorch_model.bin': lambda p: torch.save(timm_sd, p)}, ref='v1.0')
    model = EfficientViT('m0')
    load_pretrained(model, 'hf-hub:me/evit@v1.0')  # no model.safetensors in the repo: the pickle, weights only
    _assert_same(_outputs(model, x), expected)
    assert all(not v.any() for v in read_checkpoint('hf-hub:me/evit').values())  # the default branch


def test_hub_names_become_local_files_for_mmengines_loader(offline_hub, tmp_path):
    hub_cache(offline_hub, 'me/retinanet', {'model.safetensors': lambda p: p.write_bytes(b'x')})
    local = local_checkpoint('hf-hub:me/retinanet')
    assert local.startswith(str(offline_hub)) and local.endswith('model.safetensors') and os.path.isfile(local)
    (tmp_path / 'a.pth').write_bytes(b'x')
    for other in ('https://example.com/a.pth', tmp_path / 'a.pth'):
        assert local_checkpoint(other) == os.fspath(other)
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: 'work_dirs/epoch_12\.pth' \(give a local"):
        local_checkpoint('work_dirs/epoch_12.pth')  # named before the tools build anything


def test_hf_hub_errors_name_the_problem(offline_hub):
    expected = (r"'hf-hub:timm/efficientvit_m9': none of model\.safetensors, pytorch_model\.bin found in the "
                r'hub cache .*, and offline mode is on; download it '
                r'\(`hf download timm/efficientvit_m9 model\.safetensors`')
    with pytest.raises(FileNotFoundError, match=expected):
        read_checkpoint('hf-hub:timm/efficientvit_m9')
    for bad in ('hf-hub:efficientvit_m4', 'hf-hub:timm/efficientvit_m4@', 'hf-hub:a/b/c'):
        with pytest.raises(ValueError, match='write hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION'):
            read_checkpoint(bad)


def _timm_from_file(arch: str, path: Path, num_classes: int):
    """timm's model from a local file, as the convert tool tells its users to load it."""
    return timm.create_model(f'efficientvit_{arch}', pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(path), num_classes=num_classes)).eval()


@pytest.mark.parametrize('suffix', ['.safetensors', '.pth'])
def test_timm_export_of_an_evit_mm_classifier_gives_its_logits_in_timm(tmp_path, suffix, capsys):
    """An ImageNet pretraining run's checkpoint (mmengine's layout) becomes a file timm's own loader takes, with the
    head's number of classes, and timm's model computes the classifier's logits."""
    classifier = randomize_(EfficientViTClassifier(dict(type='EfficientViT', arch='m0'), num_classes=7), seed=4).eval()
    torch.save({'state_dict': classifier.state_dict(), 'meta': {'epoch': 310}}, tmp_path / 'epoch_310.pth')
    out = tmp_path / f'timm{suffix}'
    assert convert_tool.main([str(tmp_path / 'epoch_310.pth'), str(out), '--to', 'timm']) == 0
    assert f"pretrained_cfg_overlay=dict(file='{out}', num_classes=7)" in capsys.readouterr().out
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = classifier(x)
        torch.testing.assert_close(_timm_from_file('m0', out, 7)(x), expected, atol=1e-5 * expected.abs().max(),
                                   rtol=1e-5)


def test_timm_export_of_the_official_release_gives_the_official_logits(tmp_path, golden_dir):
    golden = torch.load(golden_dir / 'efficientvit_m4_golden.pt', weights_only=True)
    out = tmp_path / 'efficientvit_m4.safetensors'
    assert convert_tool.main([str(golden_dir / 'efficientvit_m4_random.pth'), str(out), '--to', 'timm']) == 0
    with torch.no_grad():
        logits = _timm_from_file('m4', out, golden['logits_224'].shape[1])(golden['input_224'])
    torch.testing.assert_close(logits, golden['logits_224'], atol=1e-4, rtol=0)


def test_timm_export_refuses_what_timm_cannot_hold(tmp_path, m0_reference, capsys):
    backbone = to_backbone_state_dict(m0_reference[0])
    torch.save({'state_dict': backbone}, tmp_path / 'backbone.pth')
    message = run(convert_tool.main, [str(tmp_path / 'backbone.pth'), str(tmp_path / 'out.pth'), '--to', 'timm'])
    assert message.startswith('error: ') and 'no classification head (head.linear.weight or head.l.weight)' in message
    distilled = EfficientViTClassifier(dict(type='EfficientViT', arch='m0'), num_classes=3, distillation=True)
    torch.save({'state_dict': distilled.state_dict()}, tmp_path / 'distilled.pth')
    message = run(convert_tool.main, [str(tmp_path / 'distilled.pth'), str(tmp_path / 'out.pth'), '--to', 'timm'])
    assert message.startswith('error: ') and "has a distillation head (head_dist), which timm's" in message
    dense = EfficientViTClassifier(dict(type='EfficientViT', arch='m0', window_size=7), num_classes=3)
    torch.save({'state_dict': dense.state_dict()}, tmp_path / 'dense.pth')
    message = run(convert_tool.main, [str(tmp_path / 'dense.pth'), str(tmp_path / 'out.pth'), '--to', 'timm'])
    assert message.startswith('error: ') and '3 shape mismatches: backbone.stages.2.blocks.0.mixer.m.attn.' \
        'attention_biases: checkpoint (4, 49) vs model (4, 16)' in message
    assert "(timm's efficientvit_m0 at 224x224 has windows (7, 7, 4); tables for other windows are not " \
        'resized' in message
    assert not (tmp_path / 'out.pth').exists()
    for options in (('--window-size', '7'), ('--prefix', 'model.')):
        with pytest.raises(SystemExit) as exit_info:
            convert_tool.main([str(tmp_path / 'distilled.pth'), str(tmp_path / 'out.pth'), '--to', 'timm', *options])
        assert exit_info.value.code == 2 and f'{options[0]}: for --to evit_mm-backbone only' in capsys.readouterr().err
