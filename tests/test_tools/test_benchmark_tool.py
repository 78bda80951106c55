"""The throughput tool: every mode runs on CPU at tiny sizes and writes JSON/CSV/PNG with the documented fields;
ONNX export matches PyTorch; FLOPs are counted. No timing is asserted."""
from __future__ import annotations

import csv
import importlib.util
import json
import re
import warnings
from pathlib import Path

import pytest
import torch

import evit_mm
from evit_mm.benchmark import cli
from evit_mm.benchmark.flops import complexity
from evit_mm.benchmark.inputs import OBJECTS_PER_IMAGE, synthetic_batch
from evit_mm.benchmark.targets import build_target
from evit_mm.benchmark.training import optim_wrapper_config, training_copy, training_iteration
from evit_mm.data.demo_coco import make_coco_demo
from evit_mm.deploy import cli as export_cli
from evit_mm.deploy import onnx_export
from evit_mm.deploy.onnx_export import dynamo_exporter_available
from evit_mm.tools.entry import run
from tests.conftest import REPO_ROOT

DET_DEMO = str(REPO_ROOT / 'configs/demo/retinanet_evit_m0_coco_demo.py')
needs_dynamo_exporter = pytest.mark.skipif(
    not dynamo_exporter_available(), reason=f'torch {torch.__version__} has no dynamo ONNX exporter for programs with '
    'symbolic sizes; test_dynamo_exporter_refused_where_torch_lacks_it covers it')
SEG_DEMO = str(REPO_ROOT / 'configs/demo/fpn_evit_m0_ade20k_demo.py')
FIELDS = {'target', 'kind', 'mode', 'device', 'dtype', 'batch', 'shape', 'images_per_s', 'latency_p50_ms',
          'latency_p90_ms', 'latency_p99_ms', 'peak_memory_mb', 'memory_kind', 'page_faults_per_call', 'params_m',
          'gflops', 'weights_mb', 'deploy', 'trained', 'bfloat16_weights', 'cuda_graphs', 'breakdown_ms',
          'speed_reference', 'speed_ratio', 'speed_ratio_middle_half'}


def _run(tmp_path, *args: str) -> list[dict]:
    out = tmp_path / 'r.json'
    assert cli.main([*args, '--warmup', '1', '--repeats', '2', '--json', str(out), '--csv',
                     str(tmp_path / 'r.csv'), '--threads', '2']) == 0
    data = json.loads(out.read_text())
    assert data['environment']['threads'] == 2 and data['environment']['keep_freed_memory'] is False
    assert data['environment']['cpu'].endswith(f', {torch.backends.cpu.get_cpu_capability()}')  # what chose the kernels
    rows = list(csv.DictReader(open(tmp_path / 'r.csv')))
    assert len(rows) == len(data['results'])
    for record in data['results']:
        assert set(record) == FIELDS
        assert record['images_per_s'] > 0 and record['latency_p50_ms'] > 0 and record['weights_mb'] > 0
        if record['mode'] == 'onnx':  # ONNX Runtime allocates outside PyTorch
            assert record['peak_memory_mb'] is None and record['memory_kind'] == 'not measured'
        else:
            assert record['peak_memory_mb'] > 0 and record['memory_kind'].startswith('one call')
        assert record['latency_p50_ms'] <= record['latency_p90_ms'] <= record['latency_p99_ms']
        assert record['page_faults_per_call'] >= 0  # counted in every mode
    first_of_group: dict[tuple[str, str], dict] = {}
    for record in data['results']:  # rows of one mode and shape: the first is the others' reference
        first = first_of_group.setdefault((record['mode'], record['shape']), record)
        if record is first:
            assert record['speed_reference'] is record['speed_ratio'] is record['speed_ratio_middle_half'] is None
        else:
            low, high = record['speed_ratio_middle_half']
            assert record['speed_reference'].startswith(first['target'])  # its label: name (deploy, ...)
            assert 0 < low <= record['speed_ratio'] <= high
    return data['results']


def test_rows_of_one_mode_and_shape_are_timed_in_the_same_rounds(tmp_path, monkeypatch, capsys):
    """Every call of every target of a mode and shape (a prediction's parts too) goes to one interleaved timing, so
    that their ratios share the machine's load; each row after the first gets its speed relative to the first."""
    import evit_mm.benchmark.measure as measure
    groups = []
    timed = measure.time_interleaved

    def recording(candidates, *args, **kwargs):
        groups.append(sorted(candidates))
        return timed(candidates, *args, **kwargs)
    monkeypatch.setattr(measure, 'time_interleaved', recording)
    results = _run(tmp_path, DET_DEMO, DET_DEMO + '@deploy', '--modes', 'forward', 'predict', '--shape', '96x128')
    assert groups == [['0:total', '1:total'],
                      sorted(f'{i}:{part}' for i in (0, 1)
                             for part in ('total', 'preprocess', 'backbone', 'forward', 'backbone+neck'))]
    assert [(r['mode'], r['deploy'], r['speed_reference']) for r in results] == [
        ('forward', False, None), ('forward', True, 'retinanet_evit_m0_coco_demo'),
        ('predict', False, None), ('predict', True, 'retinanet_evit_m0_coco_demo')]
    out = capsys.readouterr().out
    assert '| speed vs first' in out and cli.SPEED_NOTE in out


def test_speed_relative_to_the_first_row_pairs_the_rounds(monkeypatch):
    """The ratio is the median over rounds of the first row's time over this row's in the same round, not a ratio
    of medians: per-round pairs cancel the load both rows met in that round."""
    import evit_mm.benchmark.measure as measure
    from evit_mm.benchmark.timing import Timing
    latencies = {'0:total': [1.0, 2.0, 4.0, 1.0, 1.0], '1:total': [0.5, 2.0, 1.0, 0.25, 2.0]}
    monkeypatch.setattr(measure, 'time_interleaved', lambda calls, images, *a, **k: {
        name: Timing(name, latencies[name], images) for name in calls})
    monkeypatch.setattr(measure, 'call_peak_mb', lambda *a, **k: 1.0)
    target = build_target('evit_m0')
    opts = measure.Options(height=32, width=32, warmup=0, repeats=5)
    jobs = [measure.Job(target, 'backbone', opts, torch.device('cpu')) for _ in range(2)]
    first, second = measure.measure_together(jobs)
    assert first.speed_ratio is None and second.speed_reference == 'evit_m0'
    assert second.speed_ratio == 2.0  # per round: 2, 1, 4, 4, 0.5 (the ratio of the medians would be 1.0)
    assert second.speed_ratio_middle_half == (1.0, 4.0)
    assert second.latency_p50_ms == 1000.0


def test_rows_measured_together_must_share_their_input():
    import evit_mm.benchmark.measure as measure
    target = build_target('evit_m0')
    jobs = [measure.Job(target, 'backbone', measure.Options(height=h, width=32), torch.device('cpu'))
            for h in (32, 64)]
    with pytest.raises(ValueError, match='must share their mode, device and height'):
        measure.measure_together(jobs)


def test_backbone_mode_with_baselines_and_plot(tmp_path):
    results = _run(tmp_path, 'evit_m0', 'resnet18', 'timm:efficientvit_m0', '--shape', '64x96', '--batch-size', '2',
                   '--deploy', '--plot', str(tmp_path / 'p.png'))
    assert [r['target'] for r in results] == ['evit_m0', 'resnet18', 'timm:efficientvit_m0']
    assert all(r['gflops'] and r['gflops'] > 0 for r in results)
    assert (tmp_path / 'p.png').stat().st_size > 1000


def test_deploy_suffixes_deploy_one_listing_of_a_target(tmp_path, capsys):
    results = _run(tmp_path, DET_DEMO, DET_DEMO + '@deploy', DET_DEMO + '@deploy-bf16', '--modes', 'forward',
                   '--shape', '96x128')
    assert [r['deploy'] for r in results] == [False, True, True]
    assert [r['bfloat16_weights'] for r in results] == [False, False, True]
    err = capsys.readouterr().err
    assert 'Winograd' in err and 'backbone, neck, bbox_head on bfloat16 weights' in err
    with pytest.raises(SystemExit):
        cli.parse_args([DET_DEMO + '@fast'])
    assert 'choose from @deploy, @deploy-bf16, @deploy-cuda-graphs' in capsys.readouterr().err


def test_cuda_graphs_need_a_gpu(capsys, cuda_devices):
    cuda_devices(1)
    for argv in (['evit_m0@deploy-cuda-graphs'], ['evit_m0', '--deploy', '--cuda-graphs']):
        with pytest.raises(SystemExit):
            cli.parse_args(argv)
        assert 'CUDA graphs replay on a GPU only' in capsys.readouterr().err
    assert cli.parse_args(['evit_m0@deploy-cuda-graphs', '--device', 'cuda']).device == 'cuda'


def test_bfloat16_switch_applies_to_every_deployed_target(tmp_path, capsys):
    results = _run(tmp_path, 'evit_m0', 'evit_m0@deploy', '--bfloat16', '--shape', '64x96')
    assert [(r['deploy'], r['bfloat16_weights']) for r in results] == [(False, False), (True, True)]
    assert '(deploy, bf16 weights)' in capsys.readouterr().out


def test_forward_and_predict_modes_with_breakdown(tmp_path, capsys):
    results = _run(tmp_path, DET_DEMO, SEG_DEMO, '--modes', 'forward', 'predict', '--shape', '96x128')
    predict = [r for r in results if r['mode'] == 'predict']
    assert len(predict) == 2 and all(r['trained'] is False for r in predict)
    assert all(r['gflops'] and r['gflops'] > 0 for r in results)  # whole model in tensor mode
    for r in predict:
        b = r['breakdown_ms']
        assert set(b) == {'preprocess', 'backbone', 'neck', 'head', 'postprocess', 'total'}
        # parts are medians of separately timed calls: at this tiny size the backbone alone can time above the
        # whole prediction (it did: 26.8 vs 26.6 ms), so only their signs are facts, not their order
        assert b['backbone'] > 0 and b['total'] > 0 and all(v >= 0 for v in b.values())
    captured = capsys.readouterr()
    assert 'untrained weights' in captured.err and '| post-process |' in captured.out


def test_two_stage_detector_times_head_and_post_processing_as_one_part(tmp_path, capsys):
    """Tensor mode runs Mask R-CNN's RoI head on every proposal and its mask head on 100 RoIs, prediction on what
    NMS leaves: a head timed in tensor mode could exceed the whole prediction (it did: 1253 of 890 ms)."""
    results = _run(tmp_path, str(REPO_ROOT / 'configs/demo/mask_rcnn_evit_m0_coco_demo.py'), '--modes', 'predict',
                   '--shape', '96x128')
    b = results[0]['breakdown_ms']
    assert set(b) == {'preprocess', 'backbone', 'neck', 'head_and_postprocess', 'total'}
    assert 0 < b['head_and_postprocess'] <= b['total']
    assert '(with post-process) | in head |' in capsys.readouterr().out


MASK_DEMO = str(REPO_ROOT / 'configs/demo/mask_rcnn_evit_m0_coco_demo.py')
CLS_DEMO = str(REPO_ROOT / 'configs/demo/evit_m0_in1k_demo.py')


def test_train_mode_times_each_kind_of_target(tmp_path, capsys):
    results = _run(tmp_path, DET_DEMO, SEG_DEMO, CLS_DEMO, 'evit_m0', 'timm:efficientvit_m0', '--modes', 'train',
                   '--shape', '96x128', '--batch-size', '2')
    assert [(r['target'], r['mode']) for r in results] == [
        ('retinanet_evit_m0_coco_demo', 'train'), ('fpn_evit_m0_ade20k_demo', 'train'),
        ('evit_m0_in1k_demo', 'train'), ('evit_m0', 'train'), ('timm:efficientvit_m0', 'train')]
    out = capsys.readouterr().out
    assert 'paramwise_options' not in out  # the optimizer wrapper's per-parameter report is silenced


@pytest.mark.parametrize('config, losses', [
    (DET_DEMO, {'loss_cls', 'loss_bbox'}), (MASK_DEMO, {'loss_rpn_cls', 'loss_cls', 'loss_bbox', 'loss_mask'}),
    (SEG_DEMO, {'decode.loss_ce'}), (CLS_DEMO, {'loss'})])
def test_a_training_iteration_computes_every_loss_on_a_copy(config, losses):
    """The iteration runs the config's own train_step and optimizer on synthetic ground truth that reaches every
    loss, and trains a copy: the target keeps its weights for the other modes of the run."""
    target = build_target(config)
    before = {k: v.clone() for k, v in target.model.state_dict().items()}
    iteration = training_iteration(target, 2, 96, 128, torch.device('cpu'), deployed=False, compiled=False)
    first, second = iteration(), iteration()
    assert losses <= set(first) and all(torch.isfinite(torch.as_tensor(v)) for v in first.values())
    assert first['loss'] != second['loss']  # the optimizer stepped between them
    after = target.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and not target.model.training


def test_training_copies_take_the_train_tools_cpu_roi_align():
    from evit_mm.models.roi_align import SeparableRoIAlign
    target = build_target(MASK_DEMO)
    copy = training_copy(target)
    assert copy.training and copy is not target.model
    assert sum(type(m) is SeparableRoIAlign for m in copy.modules()) == 8  # box and mask extractors, 4 levels each
    assert not any(isinstance(m, SeparableRoIAlign) for m in target.model.modules())


def test_synthetic_ground_truth_lies_in_the_image_and_the_classes():
    batch = synthetic_batch('detector', 3, 90, 140, num_classes=5, ground_truth=True)
    for sample in batch['data_samples']:
        gt = sample.gt_instances
        boxes = gt.bboxes
        assert boxes.shape == (OBJECTS_PER_IMAGE, 4) and (boxes[:, 2:] > boxes[:, :2]).all()
        assert boxes.min() >= 0 and (boxes[:, 2] <= 140).all() and (boxes[:, 3] <= 90).all()
        assert 0 <= int(gt.labels.min()) and int(gt.labels.max()) < 5
        assert gt.masks.masks.shape == (OBJECTS_PER_IMAGE, 90, 140) and gt.masks.masks.any(axis=(1, 2)).all()
    seg = synthetic_batch('segmentor', 2, 40, 50, num_classes=7, ground_truth=True)['data_samples'][0].gt_sem_seg
    assert seg.data.shape == (1, 40, 50) and 0 <= int(seg.data.min()) and int(seg.data.max()) < 7
    labels = synthetic_batch('classifier', 4, 8, 8, num_classes=3, ground_truth=True)['data_samples']
    assert len(labels) == 4 and all(0 <= label < 3 for label in labels)


@pytest.mark.parametrize('device, dtype, wrapper', [
    ('cpu', 'fp32', dict(type='OptimWrapper')), ('cpu', 'bf16', dict(type='CPUBfloat16OptimWrapper')),
    ('cuda', 'fp16', dict(type='AmpOptimWrapper', loss_scale='dynamic')),
    ('cuda', 'bf16', dict(type='AmpOptimWrapper', dtype='bfloat16'))])
def test_mixed_precision_training_takes_the_train_tools_amp_wrapper(device, dtype, wrapper):
    """What ``tools/train.py --amp`` builds on that device (no GPU needed: only the configuration is read)."""
    built = optim_wrapper_config(build_target(DET_DEMO), torch.device(device), dtype)
    assert wrapper.items() <= dict(built).items() and built['optimizer']['type'] == 'AdamW'


def test_a_bfloat16_training_iteration_on_the_cpu_autocasts_its_forward_pass():
    target = build_target(DET_DEMO)
    dtypes = []
    target.model.backbone.register_forward_hook(lambda module, args, out: dtypes.append(out[0].dtype))
    losses = training_iteration(target, 2, 96, 128, torch.device('cpu'), False, False, dtype='bf16')()
    assert dtypes == [torch.bfloat16] and all(torch.isfinite(torch.as_tensor(v)) for v in losses.values())
    assert 'fp16' in run(cli.main, ['evit_m0', '--modes', 'train', '--dtype', 'fp16', '--shape', '64x64'])


def test_train_mode_refuses_deployed_and_compiled_targets():
    for args, message in ((['evit_m0@deploy'], 'not deployed'), (['evit_m0', '--compile'], 'torch.compile')):
        error = run(cli.main, [*args, '--modes', 'train', '--shape', '64x64', '--repeats', '1'])
        assert error.startswith('error: evit_m0: mode train') and message in error


def test_pipeline_mode_loads_data(tmp_path):
    root = make_coco_demo(tmp_path / 'coco', num_train=2, num_val=4, size=(96, 128))
    results = _run(tmp_path, DET_DEMO, '--modes', 'pipeline', '--shape', '64x64', '--batch-size', '2',
                   '--checkpoint', _tiny_checkpoint(tmp_path), '--cfg-options',
                   f'test_dataloader.dataset.data_root={root}/', 'test_dataloader.num_workers=0',
                   'test_dataloader.persistent_workers=False')
    assert results[0]['mode'] == 'pipeline' and results[0]['trained'] is True
    # the size of the images the dataset's pipeline served (96x128 resized to fit 256x256), not --shape's
    assert results[0]['shape'] == '192x256'
    assert root.is_dir()


def test_predict_mode_on_the_test_sets_first_batch(tmp_path, capsys):
    """``--images dataset``: forward and predict run on the config's first test batch (its pipeline's size, not
    --shape), with the breakdown, and the FLOPs are counted at that size."""
    root = make_coco_demo(tmp_path / 'coco', num_train=2, num_val=4, size=(96, 128))
    data = ['--cfg-options', f'test_dataloader.dataset.data_root={root}/', 'test_dataloader.num_workers=0',
            'test_dataloader.persistent_workers=False']
    dataset, synthetic = (_run(tmp_path, DET_DEMO, '--modes', 'forward', 'predict', '--shape', '64x64',
                               '--images', images, *data) for images in ('dataset', 'synthetic'))
    assert [(r['mode'], r['shape']) for r in dataset] == [('forward', '192x256'), ('predict', '192x256')]
    assert [r['shape'] for r in synthetic] == ['64x64', '64x64']
    assert dataset[1]['breakdown_ms']['backbone'] > 0
    assert dataset[0]['gflops'] > 5 * synthetic[0]['gflops']  # 192x256 against 64x64 pixels: 12x
    with pytest.raises(SystemExit):
        cli.parse_args([DET_DEMO, '--images', 'dataset', '--modes', 'backbone'])
    assert '--images dataset applies to the forward and predict modes' in capsys.readouterr().err


def test_images_of_several_sizes_are_labelled_by_their_smallest_and_largest():
    from evit_mm.benchmark.measure import size_label
    assert size_label({(800, 1199), (800, 800), (600, 1333)}) == '800x800-800x1199'
    assert size_label({(800, 800)}) == '800x800'


def test_checkpoints_per_target_listing_or_config(tmp_path, capsys):
    checkpoint = _tiny_checkpoint(tmp_path)
    listings = [DET_DEMO, DET_DEMO + '@deploy', SEG_DEMO]
    for entries, trained in (([f'{DET_DEMO}@deploy={checkpoint}'], [False, True, False]),
                             ([f'{DET_DEMO}={checkpoint}'], [True, True, False])):
        assert cli.parse_args([*listings, *(f'--checkpoint={entry}' for entry in entries)]).checkpoints == {
            spec: checkpoint for spec, on in zip(listings, trained) if on}
    results = _run(tmp_path, DET_DEMO, DET_DEMO + '@deploy', '--modes', 'forward', '--shape', '64x64',
                   '--checkpoint', f'{DET_DEMO}@deploy={checkpoint}')
    assert [r['trained'] for r in results] == [False, True]
    # one PATH still serves every config target
    assert cli.parse_args([*listings, 'evit_m0', '--checkpoint', checkpoint]).checkpoints == dict.fromkeys(
        listings, checkpoint)
    for argv, message in (
            ([DET_DEMO, '--checkpoint', f'configs/other.py={checkpoint}'], 'configs/other.py is not a listed target'),
            ([DET_DEMO, '--checkpoint', checkpoint, '--checkpoint', checkpoint],
             'one PATH for every config target at most'),
            ([DET_DEMO, 'evit_m0', '--checkpoint', f'evit_m0={checkpoint}'], 'apply to config targets'),
            (['evit_m0', '--checkpoint', checkpoint], 'none is listed')):
        with pytest.raises(SystemExit):
            cli.parse_args(argv)
        assert message in capsys.readouterr().err


def test_checkpoints_that_cannot_be_read_or_do_not_fit_are_named(tmp_path):
    (tmp_path / 'notes.pth').write_text('# not weights\n')
    message = run(cli.main, [DET_DEMO, '--checkpoint', str(tmp_path / 'notes.pth'), '--shape', '64x64'])
    assert message.startswith("error: cannot read checkpoint '") and 'not a file torch.save wrote' in message
    seg_checkpoint = tmp_path / 'seg.pth'
    torch.save({'state_dict': build_target(SEG_DEMO).model.state_dict()}, seg_checkpoint)
    message = run(cli.main, [DET_DEMO, '--checkpoint', str(seg_checkpoint), '--shape', '64x64'])
    assert message.startswith(f"error: '{seg_checkpoint}' does not fit this model (RetinaNet)")
    saved = torch.load(_tiny_checkpoint(tmp_path), weights_only=True)['state_dict']
    loaded = build_target(DET_DEMO, str(tmp_path / 'det.pth')).model.state_dict()
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)


def _tiny_checkpoint(tmp_path) -> str:
    import torch
    from mmengine.config import Config
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(DET_DEMO)
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    path = tmp_path / 'det.pth'
    torch.save({'state_dict': model.state_dict()}, path)
    return str(path)


def test_onnx_runtime_uses_torchs_thread_count_without_spinning():
    from evit_mm.benchmark.onnx_runtime import session_options
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        options = session_options()
    finally:
        torch.set_num_threads(threads)
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry('session.intra_op.allow_spinning') == '0'


def test_onnx_runtime_mode(tmp_path):
    results = _run(tmp_path, 'evit_m0', '--modes', 'onnx', '--shape', '64x64')
    assert results[0]['mode'] == 'onnx'


def test_a_mode_that_needs_a_config_is_refused_for_a_backbone_before_anything_is_built(capsys, monkeypatch):
    monkeypatch.setattr(cli, 'build_target', lambda *args: pytest.fail('a target was built'))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(['evit_m0', DET_DEMO, '--modes', 'backbone', 'predict', '--shape', '64x64'])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2
    assert 'mode predict needs a config target' in captured.err and 'evit_m0 is a backbone' in captured.err
    assert '| target' not in captured.out  # nothing was timed


def test_unknown_target_is_explained():
    message = run(cli.main, ['vgg16'])  # as tools/benchmark.py ends: a message, no traceback
    assert re.match(r"error: unknown target 'vgg16'.*evit_m0 \.\.\. evit_m5", message)
    assert run(cli.main, ['evit_m9']) == ("error: unknown EfficientViT arch in target 'evit_m9'; choose from evit_m0, "
                                          'evit_m1, evit_m2, evit_m3, evit_m4, evit_m5')
    message = run(cli.main, ['timm:efficientvit_m9'])
    assert message.startswith("error: unknown timm model 'efficientvit_m9'") and 'efficientvit_m5' in message


def test_two_stage_detectors_are_refused_by_the_onnx_export_with_a_message(tmp_path):
    message = run(export_cli.main, [str(REPO_ROOT / 'configs/demo/mask_rcnn_evit_m0_coco_demo.py'),
                                    str(tmp_path / 'm.onnx')])
    assert message.startswith('error: two-stage detectors') and not (tmp_path / 'm.onnx').exists()


@pytest.mark.parametrize('target,deploy', [('evit_m0', False), (DET_DEMO, False), (SEG_DEMO, False),
                                           ('evit_m0', True), (DET_DEMO, True)])
def test_onnx_export_matches_pytorch(tmp_path, target, deploy, capsys):
    extra = ['--deploy'] if deploy else []
    output = tmp_path / 'exports' / 'm.onnx'  # a folder that does not exist yet
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        assert export_cli.main([target, str(output), '--shape', '96x128', '--atol', '1e-3', *extra]) == 0
    assert output.is_file()
    out = capsys.readouterr().out
    assert 'max |ORT - PyTorch|' in out
    assert ('deploy: Conv+BN folded in EfficientViT' in out) == deploy
    # evit_mm's shape checks do not alarm the user; the check at other sizes above is what holds the graph to account
    ours = Path(evit_mm.__file__).parent
    alarms = [f'{w.filename}:{w.lineno}' for w in caught
              if issubclass(w.category, torch.jit.TracerWarning) and Path(w.filename).is_relative_to(ours)]
    assert not alarms


def test_onnx_export_without_window_padding_holds_where_padding_is_needed(tmp_path, capsys):
    """At 448x448 every stage's map is a whole number of 7x7 windows, so the eager forward pads nothing; the traced
    graph must still pad at the check's other size (485x429), or its windows would straddle the map's edges."""
    assert export_cli.main(['evit_m0', str(tmp_path / 'm.onnx'), '--shape', '448', '448', '--atol', '1e-3']) == 0
    assert '(2, 3, 485, 429)' in capsys.readouterr().out


@pytest.mark.slow
@needs_dynamo_exporter
def test_dynamo_onnx_export_keeps_every_size_dynamic(tmp_path, capsys):
    """A deployed detector (the backbone alone: tests/test_deploy/test_program_export.py) through the dynamo exporter:
    checked with ONNX Runtime at a second size, its input's dimensions named as the TorchScript exporter names them."""
    import onnx
    output = tmp_path / 'm.onnx'
    assert export_cli.main([DET_DEMO, str(output), '--exporter', 'dynamo', '--shape', '160x192', '--deploy']) == 0
    assert '(2, 3, 197, 173)' in capsys.readouterr().out
    graph = onnx.load(output).graph
    assert [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [
        'batch', 3, 'height', 'width']
    assert graph.output[0].type.tensor_type.shape.dim[0].dim_param == 'batch'


@pytest.mark.slow
@needs_dynamo_exporter
def test_dynamo_onnx_export_of_a_segmentor_whose_head_fixes_sizes_falls_back_to_one_size(tmp_path, capsys):
    """mmseg's FPNHead upsamples to ``int(h * 2.0)``, which the program keeps at the traced size: found by the check
    at a second size, and exported for the traced size only, as the TorchScript exporter does."""
    import onnx
    output = tmp_path / 'm.onnx'
    assert export_cli.main([SEG_DEMO, str(output), '--exporter', 'dynamo', '--shape', '96x128']) == 0
    out = capsys.readouterr().out
    assert 'the model computes a size from the input with Python numbers' in out
    assert 'segmentor exported for 96x128 inputs only' in out and '(2, 3, 96, 128)' in out
    dims = onnx.load(output).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ['batch', 3, 96, 128]


@pytest.mark.slow
@needs_dynamo_exporter
def test_dynamo_onnx_export_traced_where_a_map_is_one_pixel_is_refused(tmp_path):
    """At 96x128 RetinaNet's stride-128 map is 1x1 and torch chooses the layout of the convolutions on it by that:
    the program would take heights up to 128 only, which the user hears before an ONNX file is written."""
    message = run(export_cli.main, [DET_DEMO, str(tmp_path / 'm.onnx'), '--exporter', 'dynamo', '--shape', '96x128'])
    assert message.startswith('error: the exported program takes height 65-128, width 65-128 only (traced at (1, 3, '
                              '96, 128))') and message.endswith('trace at a larger size')
    assert not (tmp_path / 'm.onnx').exists()


def test_dynamo_exporter_refused_where_torch_lacks_it(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, 'dynamic_export_available', lambda: False)
    monkeypatch.setattr(export_cli, 'build_target', lambda *args: pytest.fail('a target was built'))
    message = run(export_cli.main, ['evit_m0', str(tmp_path / 'm.onnx'), '--exporter', 'dynamo'])
    onnxscript = 'present' if importlib.util.find_spec('onnxscript') else 'missing'
    assert message == (f'error: --exporter dynamo needs torch >= 2.7 and onnxscript (this is torch '
                       f'{torch.__version__}, onnxscript {onnxscript}); --exporter torchscript works with every '
                       'supported torch')
    with pytest.raises(RuntimeError, match=r'^the dynamo ONNX exporter needs torch >= 2\.7 .*the TorchScript exporter'):
        onnx_export.export_onnx(torch.nn.Identity(), torch.randn(1, 3, 8, 8), tmp_path / 'i.onnx', exporter='dynamo')
    assert not (tmp_path / 'i.onnx').exists()


def test_flops_of_config_and_backbone():
    c = complexity(DET_DEMO, (224, 224))
    assert c['gflops'] > c['backbone_gflops'] > 0
    dense = complexity('evit_m4', (224, 224))['backbone_gflops']  # windows 7 everywhere: stage 3 padded 4 -> 7
    import torch

    from evit_mm.benchmark.flop_count import count_macs
    from evit_mm.models import EfficientViT
    # the backbone's share of the whole model's trace is what the backbone alone counts
    alone = count_macs(build_target(DET_DEMO).backbone.eval(), (torch.randn(1, 3, 224, 224),))
    assert c['backbone_gflops'] == pytest.approx(alone / 1e9, rel=1e-9)
    classification = count_macs(EfficientViT('m4', window_size=(7, 7, 4)).eval(), (torch.randn(1, 3, 224, 224),))
    assert classification / 1e9 == pytest.approx(0.299, abs=0.004)  # paper: 299M MACs (head included there)
    assert dense > classification / 1e9


def test_flops_default_to_the_task_input_size():
    """Without --shape a detector is counted at COCO's test scale, a segmentor at ADE20K's crop, a backbone at 224."""
    assert complexity(DET_DEMO)['shape'] == '800x1333'
    assert complexity(SEG_DEMO)['shape'] == '512x512'
    assert complexity('evit_m0')['shape'] == '224x224'


def test_flops_table_breaks_the_model_down_by_module(capsys):
    """``--show-table``: mmengine's per-module table under the totals, to the depth asked for, its rows adding up."""
    from evit_mm.benchmark.flops import main as get_flops
    assert get_flops([DET_DEMO, '--shape', '128', '--show-table', '--max-depth', '1']) == 0
    out = capsys.readouterr().out
    rows = {cells[0].strip(): cells[1:] for cells in (
        [cell.strip() for cell in line.strip('|').split('|')] for line in out.splitlines() if line.startswith('| '))}
    assert set(rows) == {'module', 'model', 'backbone', 'neck', 'bbox_head'}

    def giga(text: str) -> float:
        return float(text[:-1]) * {'G': 1.0, 'M': 1e-3, 'K': 1e-6, 'T': 1e3}[text[-1]]
    totals = complexity(DET_DEMO, (128, 128))
    assert giga(rows['model'][1]) == pytest.approx(totals['gflops'], rel=5e-3)  # the table shows 3-4 digits
    assert giga(rows['backbone'][1]) == pytest.approx(totals['backbone_gflops'], rel=5e-3)
    assert sum(giga(rows[name][1]) for name in ('backbone', 'neck', 'bbox_head')) == pytest.approx(
        totals['gflops'], rel=1e-2)
    assert get_flops([DET_DEMO, '--shape', '128', '--show-table']) == 0  # default depth 2: the parts too
    assert '|   backbone.stages ' in capsys.readouterr().out
    assert get_flops([DET_DEMO, '--shape', '128']) == 0
    assert '| module' not in capsys.readouterr().out


def test_an_input_the_backbone_cannot_take_is_one_line_in_both_tools():
    from evit_mm.benchmark.flops import main as get_flops
    for tool, args in ((get_flops, ['evit_m0', '--shape', '8x64']),
                       (cli.main, ['evit_m0', '--shape', '12x12', '--repeats', '1'])):
        error = run(tool, args)
        assert isinstance(error, str) and error.startswith('error: EfficientViT needs images of at least 16x16')


def test_benchmark_defaults_to_each_target_kind_input_size(tmp_path):
    results = _run(tmp_path, DET_DEMO, 'evit_m0')
    assert [(r['kind'], r['shape']) for r in results] == [('detector', '800x1333'), ('backbone', '224x224')]


@pytest.mark.parametrize('config', ['retinanet_r50_fpn_coco.py', 'fpn_r50_ade20k.py'])
def test_baseline_configs_build_offline(config):
    from evit_mm.benchmark.targets import build_target
    target = build_target(str(REPO_ROOT / 'configs/baselines' / config))
    assert type(target.backbone).__name__.startswith('ResNet') and not target.trained


def test_shapes_parse_or_explain():
    from evit_mm.benchmark.inputs import parse_shape
    assert parse_shape('800X1333') == (800, 1333)
    assert parse_shape('16x224x224', dims=3) == (16, 224, 224)
    assert parse_shape('512') == (512, 512)  # a square, as mmseg's and mmpretrain's tools read one number
    for bad, dims in (('800x', 2), ('0x224', 2), ('0', 2), ('800x1333x3', 2), ('224x224', 3), ('224', 3)):
        with pytest.raises(ValueError, match='shape must be'):
            parse_shape(bad, dims)


@pytest.mark.parametrize('argv, message', [
    (['--threads', '0'], "argument --threads: must be an integer of at least 1, got '0'"),
    (['--repeats', '0'], "argument --repeats: must be an integer of at least 1, got '0'"),
    (['--batch-size', 'two'], "argument --batch-size: must be an integer of at least 1, got 'two'"),
    (['--warmup', '-1'], "argument --warmup: must be an integer of at least 0, got '-1'")])
def test_counts_out_of_range_are_usage_errors(argv, message, capsys):
    """``--threads 0`` used to be taken for "not given" (torch's default thread count ran), ``--repeats 0`` ended in
    a traceback after the models were built."""
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(['evit_m0', *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert cli.parse_args(['evit_m0', '--warmup', '0']).warmup == 0


@pytest.mark.parametrize('count, device, message', [
    (0, 'cuda', "argument --device: 'cuda': this machine has no CUDA device (torch.cuda.is_available() is False); "
                'use cpu'),
    (2, 'cuda:2', "argument --device: 'cuda:2': this machine has 2 CUDA device(s), cuda:0 to cuda:1"),
    (2, 'gpu', "argument --device: choose cpu, cuda or cuda:N, got 'gpu'"),
    (0, 'mps', "argument --device: choose cpu, cuda or cuda:N, got 'mps'")])
def test_devices_this_machine_lacks_are_usage_errors(capsys, cuda_devices, count, device, message):
    """Both benchmark tools' ``--device``: a traceback from CUDA's initialisation before (no NVIDIA driver)."""
    cuda_devices(count)
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(['evit_m0', '--device', device])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert cli.parse_args(['evit_m0', '--device', 'cpu']).device == 'cpu'
    if count:
        assert cli.parse_args(['evit_m0', '--device', 'cuda:1']).device == 'cuda:1'


def test_a_malformed_shape_is_a_usage_error_before_anything_is_built(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(['evit_m0', '--shape', '224x'])
    assert exit_info.value.code == 2
    assert "argument --shape: shape must be HxW, e.g. 800x1333, or N for NxN, got '224x'" in capsys.readouterr().err


@pytest.mark.parametrize('words, shape', [(['800x1333'], (800, 1333)), (['800', '1333'], (800, 1333)),
                                          (['512'], (512, 512)), ([], None)])
def test_one_size_tools_take_the_shape_as_openmmlab_tools_do(words, shape, monkeypatch):
    """get_flops and export_onnx read ``--shape`` as ``HxW``, or as mmseg's and mmpretrain's ``get_flops.py`` do:
    ``H W``, or one number for a square."""
    import evit_mm.benchmark.flops as flops
    seen = []
    monkeypatch.setattr(flops, 'complexity', lambda spec, shape, table_depth: seen.append(shape) or dict(
        target=spec, shape='', gflops=0.0, params_m=0.0, backbone_gflops=0.0, backbone_params_m=0.0))
    assert flops.main(['evit_m0', *(['--shape', *words] if words else [])]) == 0
    assert seen == [shape]


@pytest.mark.parametrize('tool', ['get_flops', 'export_onnx'])
@pytest.mark.parametrize('words', [['800', '1333', '3'], ['800x1333', '3'], ['big'], ['0', '64']])
def test_one_size_tools_explain_a_malformed_shape(tool, words, capsys):
    from evit_mm.benchmark.flops import main as get_flops
    main, args = (get_flops, ['evit_m0']) if tool == 'get_flops' else (export_cli.main, ['evit_m0', 'out.onnx'])
    with pytest.raises(SystemExit) as exit_info:
        main([*args, '--shape', *words])
    assert exit_info.value.code == 2
    assert (f"argument --shape: shape must be HxW, H W or N (NxN), e.g. 800x1333, 800 1333 or 512, "
            f"got {' '.join(words)!r}") in capsys.readouterr().err


def test_compile_mode_implies_compile_and_reaches_torch_compile(tmp_path, monkeypatch, capsys):
    import evit_mm.benchmark.measure as measure
    modes = []

    def fake_compiled(module, mode):
        modes.append(mode)
        return module  # the option's wiring is under test here, not inductor
    monkeypatch.setattr(measure, 'compiled', fake_compiled)
    results = _run(tmp_path, 'evit_m0', '--shape', '64x64', '--compile-mode', 'reduce-overhead')
    assert modes == ['reduce-overhead'] and len(results) == 1
    from evit_mm.benchmark.compilation import compile_mode_from
    assert compile_mode_from(cli.parse_args(['evit_m0', '--compile'])) == 'default'
    assert compile_mode_from(cli.parse_args(['evit_m0'])) is None
    with pytest.raises(SystemExit):
        cli.parse_args(['evit_m0', '--compile-mode', 'fast'])
    assert "invalid choice: 'fast'" in capsys.readouterr().err
