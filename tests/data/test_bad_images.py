"""Bad image files in an image folder: skipped by name (or refused at start), never a crash mid-run.

Some damage only shows when the pixels are decoded: a truncated JPEG, BMP or TIFF passes PIL's
header check. Caching and ``bad_images=fail`` decode everything at start; without a cache, a
file that fails mid-run is replaced by the next readable one.
"""

from __future__ import annotations

import importlib.util
import io

import numpy as np
import pytest
import torch
from PIL import Image

from tests.data.fixtures import make_imagefolder
from tests.data.test_datasets import cfg
from transgan.data import build_dataset
from transgan.errors import ConfigError


def _encoded(fmt: str, size=(24, 24)) -> bytes:
    buf = io.BytesIO()
    a = np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(a).save(buf, format=fmt)
    return buf.getvalue()


def _damage(folder) -> dict[str, str]:
    """Write one file per kind of damage into ``folder``; return {name: kind}."""
    files = {
        "zero.png": b"",
        "garbage.png": np.random.default_rng(2).integers(0, 256, 500, dtype=np.uint8).tobytes(),
        "truncated.png": _encoded("PNG")[:300],
        "truncated.jpg": _encoded("JPEG")[:-200],  # header intact: only decoding finds out
        "truncated.bmp": _encoded("BMP")[:1000],
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def test_cached_folder_skips_every_damaged_file_by_name(tmp_path, caplog):
    make_imagefolder(tmp_path, {"a": 3, "b": 3})
    bad = _damage(tmp_path / "a")
    with caplog.at_level("WARNING"):
        ds = build_dataset(cfg("imagefolder", tmp_path, cache=True), 8)
    assert len(ds) == 6 and ds.images.shape == (6, 3, 8, 8)
    assert f"skipping {len(bad)} of 11 image files" in caplog.text
    for name in bad:
        assert name in caplog.text
    assert "truncated" in caplog.text  # the reason, not just the name


def test_uncached_folder_checks_headers_at_start_and_replaces_the_rest_mid_run(tmp_path, caplog):
    make_imagefolder(tmp_path, {"a": 3})
    _damage(tmp_path / "a")
    with caplog.at_level("WARNING"):
        ds = build_dataset(cfg("imagefolder", tmp_path, cache=False), 8)
    # The header check caught zero, garbage and the truncated PNG; the truncated JPEG and BMP look fine.
    assert len(ds) == 5 and "skipping 3 of 8 image files" in caplog.text
    names = [p.name for p, _ in ds.items]
    assert names == ["000.png", "001.png", "002.png", "truncated.bmp", "truncated.jpg"]
    caplog.clear()
    with caplog.at_level("WARNING"):
        got = [ds[i] for i in range(len(ds))]  # a whole epoch: no exception
    # Each broken file yields the next readable one (wrapping around), the same every time.
    expected = build_dataset(cfg("imagefolder", tmp_path, cache=True), 8)
    assert torch.equal(got[3][0], expected.images[0]) and torch.equal(got[4][0], expected.images[0])
    assert "truncated.bmp" in caplog.text and "truncated.jpg" in caplog.text
    assert torch.equal(ds[4][0], got[4][0])


def test_fail_refuses_at_start_what_only_decoding_finds(tmp_path):
    make_imagefolder(tmp_path, {"a": 3})
    (tmp_path / "a" / "truncated.jpg").write_bytes(_encoded("JPEG")[:-200])
    with pytest.raises(ConfigError, match=r"1 of 4 image files are unreadable \(dataset.bad_images=fail\): "
                                          r".*truncated.jpg \(OSError: image file is truncated"):
        build_dataset(cfg("imagefolder", tmp_path, cache=False, bad_images="fail"), 8)


def test_a_class_with_only_unreadable_files_is_an_error(tmp_path):
    make_imagefolder(tmp_path, {"a": 3})
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "zero.png").write_bytes(b"")
    with pytest.raises(ConfigError, match="class.* b: every image file is unreadable"):
        build_dataset(cfg("imagefolder", tmp_path), 8)


@pytest.mark.parametrize("size", [(1, 1), (3, 1000), (1000, 3), (17, 9)])
def test_odd_sizes_become_the_model_resolution(tmp_path, size):
    Image.new("RGB", size, (200, 40, 90)).save(tmp_path / "odd.png")
    ds = build_dataset(cfg("imagefolder", tmp_path, conditional=False), 16)
    x = ds[0][0]
    assert x.shape == (3, 16, 16)
    expected = torch.tensor([200, 40, 90], dtype=torch.float32).view(3, 1, 1) / 127.5 - 1
    torch.testing.assert_close(x, expected.expand_as(x), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- through the trainer


@pytest.fixture
def train_main(repo_root):
    spec = importlib.util.spec_from_file_location("train_tool", repo_root / "tools" / "train.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool.main


TINY = ["model=cwgan_gp", "model.resolution=16", "model.generator.channel_max=16", "model.discriminator.channel_max=16",
        "dataset=imagefolder", "train.n_critic=1", "train.device=cpu", "train.cpu_threads=1",
        "train.sample_every=1000", "train.eval_every=1000", "train.ckpt_every=1000",
        "eval.metrics=[]"]  # image folders are evaluated with Inception, whose weights tests do not have


def test_training_runs_through_files_that_break_mid_run(train_main, tmp_path, capsys):
    root = make_imagefolder(tmp_path / "images", {"a": 4, "b": 4})
    (root / "a" / "truncated.jpg").write_bytes(_encoded("JPEG")[:-200])
    (root / "b" / "truncated.bmp").write_bytes(_encoded("BMP")[:1000])
    # Two epochs through a DataLoader worker: both broken files are met, twice.
    code = train_main([*TINY, f"dataset.root={root}", "dataset.cache=false", "dataset.num_workers=1",
                       "train.batch_size=10", "train.max_steps=2", f"hydra.run.dir={tmp_path / 'run'}"])
    assert code == 0, capsys.readouterr().err


def test_fewer_readable_images_than_one_batch_is_refused(train_main, tmp_path, capsys):
    root = make_imagefolder(tmp_path / "images", {"a": 3})
    for i in range(3):
        (root / "a" / f"zero{i}.png").write_bytes(b"")
    code = train_main([*TINY, f"dataset.root={root}", "train.batch_size=4", f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and "dataset has 3 images, fewer than one batch (4)" in err
    assert not (tmp_path / "run").exists()
