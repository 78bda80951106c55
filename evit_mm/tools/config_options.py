"""Command-line options applied to an mmengine Config, shared by ``tools/train.py`` and ``tools/test.py``.

The same tools serve detection (mmdet), segmentation (mmseg) and classification configs: the config's
``default_scope`` says which, and these functions adapt the task-specific parts (result dumping, drawing).
"""
from __future__ import annotations

import argparse
import copy
import os.path as osp

from mmengine.config import Config, ConfigDict, DictAction
from mmengine.device import get_device


class ConfigOptionError(ValueError):
    """A command-line option that the config cannot take (``--out`` of the wrong kind, ``--tta`` without a TTA
    model, ...); the tools print it as one line."""


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--work-dir', help='where logs and checkpoints go (default: ./work_dirs/<config name>)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. model.backbone.arch=m0 train_dataloader.batch_size=4')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                        help='job launcher: none (single process), pytorch (torchrun), slurm (srun)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)


def load_config(args: argparse.Namespace) -> Config:
    """Read the config, apply ``--cfg-options``, the launcher and the work dir."""
    if not osp.isfile(args.config):
        raise FileNotFoundError(f'config file not found: {args.config!r}')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg


def enable_amp(cfg: Config, device: str | None = None) -> None:
    """Mixed precision: mmengine's ``AmpOptimWrapper`` (float16, dynamic loss scaling) where training runs on an
    accelerator, :class:`~evit_mm.engine.CPUBfloat16OptimWrapper` (bfloat16 autocast) where it runs on the CPU,
    which mmengine's wrapper refuses; a warning where that CPU has no native bfloat16 (it would be slower).
    ``device``: the device type training runs on (default: mmengine's ``get_device()``)."""
    wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if wrapper in ('AmpOptimWrapper', 'CPUBfloat16OptimWrapper'):
        return
    if wrapper != 'OptimWrapper':
        raise ConfigOptionError(f'--amp needs optim_wrapper.type OptimWrapper, AmpOptimWrapper or '
                                f'CPUBfloat16OptimWrapper, got {wrapper!r}')
    if (device or get_device()) != 'cpu':
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
        return
    from ..deploy.bfloat16 import warn_where_bfloat16_is_slow
    warn_where_bfloat16_is_slow('cpu', '--amp (bfloat16 autocast)')
    cfg.optim_wrapper.type = 'CPUBfloat16OptimWrapper'


def enable_auto_scale_lr(cfg: Config) -> None:
    if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
        raise ConfigOptionError('--auto-scale-lr needs auto_scale_lr=dict(base_batch_size=...) in the config')
    cfg.auto_scale_lr.enable = True


def apply_resume(cfg: Config, resume: str | None) -> None:
    """``--resume`` alone resumes from the work dir's latest checkpoint; ``--resume PATH`` from that file."""
    if resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif resume is not None:
        cfg.resume, cfg.load_from = True, resume


def _task(cfg: Config) -> str:
    return cfg.get('default_scope') or 'mmengine'


def apply_show(cfg: Config, show_dir: str | None = None, show: bool = False, wait_time: float = 0.0) -> None:
    """Draw predictions through the task's visualization hook: into ``work_dir/<timestamp>/show_dir`` and/or on
    screen (``show``, each image for ``wait_time`` seconds; 0: until a key is pressed), as mmdet's and mmseg's
    ``tools/test.py`` do."""
    hook = cfg.default_hooks.get('visualization')
    if hook is None:
        option = '--show-dir' if show_dir else '--show'
        raise ConfigOptionError(f'{option} needs a visualization hook in default_hooks (task: {_task(cfg)})')
    hook.draw = True
    if show_dir:
        hook.test_out_dir = show_dir
    if show:
        hook.show = True
        hook.wait_time = wait_time


#: mmseg's metrics that write prediction maps into their ``output_dir``.
SEGMENTATION_MAP_WRITERS = ('IoUMetric', 'CityscapesMetric', 'DepthMetric')


def apply_out(cfg: Config, out: str) -> None:
    """Write raw predictions: mmdet's ``DumpDetResults`` (``.pkl``) for detection, mmseg's prediction maps
    (a folder) for segmentation, mmengine's ``DumpResults`` (``.pkl``) otherwise."""
    task = _task(cfg)
    if task == 'mmseg':
        evaluators = cfg.test_evaluator if isinstance(cfg.test_evaluator, list) else [cfg.test_evaluator]
        writers = [e for e in evaluators if str(e.get('type', '')).split('.')[-1] in SEGMENTATION_MAP_WRITERS]
        if not writers:
            raise ConfigOptionError(f'--out for segmentation needs a test evaluator that writes prediction maps '
                                    f'({", ".join(SEGMENTATION_MAP_WRITERS)}); this config has '
                                    f'{[e.get("type") for e in evaluators]}')
        for evaluator in writers:
            evaluator['output_dir'] = out
            evaluator['keep_results'] = True  # what mmseg's tools/test.py sets too
        return
    if not out.endswith(('.pkl', '.pickle')):
        raise ConfigOptionError(f'--out must be a .pkl file for {task} configs, got {out!r}')
    dump = dict(type='DumpDetResults' if task == 'mmdet' else 'DumpResults', out_file_path=out)
    evaluator = cfg.test_evaluator
    cfg.test_evaluator = [*evaluator, dump] if isinstance(evaluator, list) else [evaluator, dump]


#: mmdet's ``tools/test.py --tta`` defaults, for configs that name no ``tta_model`` / ``tta_pipeline``: the detections
#: of the image and its horizontal flip merged by NMS; with masks (Mask R-CNN) through evit_mm's
#: :class:`~evit_mm.models.instance_seg_tta.InstanceSegTTAModel`, since mmdet's ``DetTTAModel`` merges boxes only.
DETECTION_TTA_CFG = dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)
DETECTION_TTA_MODEL = dict(type='DetTTAModel', tta_cfg=DETECTION_TTA_CFG)
INSTANCE_SEG_TTA_MODEL = dict(type='InstanceSegTTAModel', tta_cfg=DETECTION_TTA_CFG)
DETECTION_TTA_META_KEYS = ('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip', 'flip_direction')


def _has_key(node: object, key: str) -> bool:
    """Whether ``key`` is a key of ``node`` or of a dict anywhere inside it (a config's nested dicts and lists)."""
    if isinstance(node, dict):
        return key in node or any(_has_key(value, key) for value in node.values())
    return isinstance(node, (list, tuple)) and any(_has_key(value, key) for value in node)


def apply_tta(cfg: Config) -> list[str]:
    """Test-time augmentation as mmdet's and mmseg's ``tools/test.py --tta`` apply it: the model wrapped in the
    config's ``tta_model`` and the test data read through its ``tta_pipeline``. Detection configs without them get
    mmdet's defaults (horizontal flip, detections merged by NMS at IoU 0.5), a model with a mask head through
    :data:`INSTANCE_SEG_TTA_MODEL` instead of mmdet's box-only ``DetTTAModel``; mmseg's base configs define both
    (ADE20K: six scales, each flipped). Returns what was taken from defaults, for the log."""
    task = _task(cfg)
    if task not in ('mmdet', 'mmseg'):
        raise ConfigOptionError(f'--tta is for detection (mmdet) and segmentation (mmseg) configs; this config\'s '
                                f'default_scope is {task!r}')
    defaults = []
    masks = task == 'mmdet' and _has_key(cfg.model, 'mask_head')
    if task == 'mmdet' and 'tta_model' not in cfg:
        cfg.tta_model = copy.deepcopy(INSTANCE_SEG_TTA_MODEL if masks else DETECTION_TTA_MODEL)
        defaults.append(f'tta_model ({cfg.tta_model.type}, NMS at IoU {cfg.tta_model.tta_cfg.nms.iou_threshold})')
    if task == 'mmdet' and 'tta_pipeline' not in cfg:
        dataset = cfg.test_dataloader.dataset
        while 'dataset' in dataset:  # dataset wrappers
            dataset = dataset.dataset
        pipeline = copy.deepcopy(dataset.pipeline)
        pipeline[-1] = dict(type='TestTimeAug', transforms=[
            [dict(type='RandomFlip', prob=1.0), dict(type='RandomFlip', prob=0.0)],
            [dict(type='PackDetInputs', meta_keys=DETECTION_TTA_META_KEYS)]])
        cfg.tta_pipeline = pipeline
        defaults.append('tta_pipeline (the test pipeline on the image and its horizontal flip)')
    if masks and str(cfg.tta_model.get('type', '')).split('.')[-1] == 'DetTTAModel':
        raise ConfigOptionError("--tta: the config's tta_model is mmdet's DetTTAModel, which merges boxes only, and this "
                                'model predicts masks (mmdet asserts "TTA of instance segmentation does not support '
                                'now" at the first image); use type=\'InstanceSegTTAModel\' (evit_mm), which merges '
                                'the masks with their boxes')
    missing = [key for key in ('tta_model', 'tta_pipeline') if key not in cfg]
    if missing:
        raise ConfigOptionError(f'--tta needs {" and ".join(missing)} in the config (mmseg\'s '
                                f'_base_/default_runtime.py and dataset configs define them)')
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    return defaults
