"""``tools/make_demo_data.py``: the demo datasets at the command line's counts and size, refused where they do not
apply."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from tests.helpers import load_tool


def test_coco_and_ade20k_at_the_given_counts_and_size(tmp_path, capsys):
    tool = load_tool('make_demo_data')
    tool.main(['coco', str(tmp_path / 'coco'), '--num-train', '1', '--num-val', '2', '--size', '60x100'])
    val = json.loads((tmp_path / 'coco/annotations/instances_val2017.json').read_text())
    assert len(val['images']) == 2 and {(i['height'], i['width']) for i in val['images']} == {(60, 100)}
    tool.main(['ade20k', str(tmp_path / 'ade'), '--num-train', '1', '--num-val', '3', '--size', '40x56'])
    images = sorted((tmp_path / 'ade/images/validation').iterdir())
    assert len(images) == 3 and Image.open(images[0]).size == (56, 40)  # PIL: width, height
    assert 'demo data ready' in capsys.readouterr().out


def test_counts_and_size_are_refused_for_imagenet(tmp_path, capsys):
    with pytest.raises(SystemExit):
        load_tool('make_demo_data').main(['imagenet', str(tmp_path / 'in'), '--size', '64x64'])
    assert '--num-train, --num-val and --size apply to coco and ade20k, not imagenet' in capsys.readouterr().err


def test_a_file_as_root_is_refused(tmp_path, capsys):
    (tmp_path / 'notes.txt').write_text('x')
    with pytest.raises(SystemExit):
        load_tool('make_demo_data').main(['coco', str(tmp_path / 'notes.txt')])
    assert f"root '{tmp_path / 'notes.txt'}' is a file; give a folder (made if missing)" in capsys.readouterr().err
