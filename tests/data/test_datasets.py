from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.data.fixtures import make_celeba, make_cifar10, make_flowers102, make_imagefolder
from transgan.data import DatasetNotFoundError, build_dataset
from transgan.errors import ConfigError


def cfg(name, root=None, **kw):
    return {"name": name, "root": str(root) if root else None, "channels": 3, "conditional": True,
            "center_crop": None, "split": "train", "download": False, "bad_images": "skip", "cache": False, **kw}


def check_images(ds, n, channels, res):
    assert len(ds) == n
    x, y = ds[0]
    assert x.shape == (channels, res, res) and x.dtype == torch.float32
    assert -1.0 <= x.min() and x.max() <= 1.0
    return x, y


def test_digits_split_sizes_and_range():
    train = build_dataset(cfg("digits", channels=1), 32)
    test = build_dataset(cfg("digits", channels=1, split="test"), 32)
    assert (len(train), len(test)) == (1437, 360)
    check_images(train, 1437, 1, 32)
    assert train.num_classes == 10 and train.class_names == [str(i) for i in range(10)]
    assert torch.bincount(test.labels).min() >= 35  # stratified: every class held out
    rgb = build_dataset(cfg("digits", channels=3), 16)
    assert rgb.images.shape == (1437, 3, 16, 16) and torch.equal(rgb.images[:, 0], rgb.images[:, 2])


def test_digits_resize_keeps_the_8x8_content():
    from sklearn.datasets import load_digits

    from transgan.data import digits_split_indices

    ds = build_dataset(cfg("digits", channels=1), 8)
    raw = load_digits().images[digits_split_indices()[0]] / 8.0 - 1.0
    np.testing.assert_allclose(ds.images[:, 0].numpy(), raw, atol=1e-6)


def test_imagefolder_conditional_and_flat(tmp_path):
    make_imagefolder(tmp_path / "cls", {"dandelion": 3, "marigold": 4})
    ds = build_dataset(cfg("imagefolder", tmp_path / "cls"), 16)
    check_images(ds, 7, 3, 16)
    assert ds.num_classes == 2 and ds.class_names == ["dandelion", "marigold"]
    assert [ds[i][1] for i in range(7)] == [0, 0, 0, 1, 1, 1, 1]
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.new("RGB", (10, 10), (255, 0, 0)).save(flat / f"{i}.png")
    ds = build_dataset(cfg("imagefolder", flat, channels=1), 8)
    x, y = check_images(ds, 3, 1, 8)
    assert ds.num_classes == 0 and y == 0
    torch.testing.assert_close(x, torch.full_like(x, 255 / 3 / 127.5 - 1), atol=1e-5, rtol=0)


def test_imagefolder_cache_equals_decoding(tmp_path):
    make_imagefolder(tmp_path, {"a": 2, "b": 2})
    lazy = build_dataset(cfg("imagefolder", tmp_path), 16)
    cached = build_dataset(cfg("imagefolder", tmp_path, cache=True), 16)
    assert cached.images.shape == (4, 3, 16, 16)
    for i in range(4):
        assert torch.equal(lazy[i][0], cached[i][0]) and lazy[i][1] == cached[i][1]


def test_wrong_modes_are_converted(tmp_path):
    root = tmp_path / "modes"
    root.mkdir()
    Image.new("L", (8, 8), 128).save(root / "gray.png")
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(root / "rgba.png")  # fully transparent -> black
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(root / "cmyk.jpg")  # red
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(root / "gray16.png")  # white
    Image.new("RGB", (8, 8), (0, 0, 255)).convert("P").save(root / "palette.png")
    ds = build_dataset(cfg("imagefolder", root, conditional=False), 8)
    got = {p.name: ds[i][0][:, 0, 0] for i, (p, _) in enumerate(ds.items)}
    to = lambda *rgb: torch.tensor(rgb, dtype=torch.float32) / 127.5 - 1  # noqa: E731
    torch.testing.assert_close(got["gray.png"], to(128, 128, 128))
    torch.testing.assert_close(got["rgba.png"], to(0, 0, 0))
    assert got["cmyk.jpg"][0] > 0.9 and got["cmyk.jpg"][1:].max() < -0.9
    torch.testing.assert_close(got["gray16.png"], to(255, 255, 255))
    torch.testing.assert_close(got["palette.png"], to(0, 0, 255))


def test_bad_images_skipped_or_refused_by_name(tmp_path, caplog):
    make_imagefolder(tmp_path, {"a": 3, "b": 3})
    (tmp_path / "a" / "zero.png").write_bytes(b"")
    good = (tmp_path / "a" / "000.png").read_bytes()
    (tmp_path / "b" / "truncated.png").write_bytes(good[: len(good) // 2])
    with caplog.at_level("WARNING"):
        ds = build_dataset(cfg("imagefolder", tmp_path), 8)
    assert len(ds) == 6 and "zero.png" in caplog.text and "truncated.png" in caplog.text
    with pytest.raises(ConfigError, match="zero.png"):
        build_dataset(cfg("imagefolder", tmp_path, bad_images="fail"), 8)


def test_missing_and_empty_roots(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="class_name"):
        build_dataset(cfg("imagefolder", tmp_path / "nope"), 8)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ConfigError, match="empty_class"):
        build_dataset(cfg("imagefolder", tmp_path), 8)
    with pytest.raises(DatasetNotFoundError, match="img_align_celeba"):
        build_dataset(cfg("celeba", tmp_path / "nope"), 8)
    with pytest.raises(DatasetNotFoundError, match="setid.mat"):
        build_dataset(cfg("flowers102", tmp_path / "nope"), 8)
    with pytest.raises(DatasetNotFoundError, match="data_batch_1"):
        build_dataset(cfg("cifar10", tmp_path / "nope"), 8)
    with pytest.raises(DatasetNotFoundError, match="dataset.root"):
        build_dataset(cfg("celeba"), 8)


def test_bad_options(tmp_path):
    with pytest.raises(ConfigError, match="power of two"):
        build_dataset(cfg("digits", channels=1), 48)
    with pytest.raises(ConfigError, match="colour"):
        build_dataset(cfg("digits", channels=1, colour=True), 32)


def test_celeba_through_torchvision(tmp_path):
    make_celeba(tmp_path, n=12)
    train = build_dataset(cfg("celeba", tmp_path, center_crop=140, conditional=False), 16)
    check_images(train, 8, 3, 16)
    assert train.num_classes == 0
    test = build_dataset(cfg("celeba", tmp_path, split="test", conditional=False), 16)
    assert len(test) == 2
    flat = build_dataset(cfg("celeba", tmp_path / "celeba" / "img_align_celeba", conditional=False), 16)
    assert len(flat) == 12


def test_flowers102_through_torchvision(tmp_path):
    make_flowers102(tmp_path, per_split=(6, 3, 3), num_classes=3)
    ds = build_dataset(cfg("flowers102", tmp_path), 16)
    check_images(ds, 6, 3, 16)
    assert ds.num_classes == 102
    assert [ds[i][1] for i in range(6)] == [0, 1, 2, 0, 1, 2]
    assert len(build_dataset(cfg("flowers102", tmp_path, split="all"), 16)) == 12


def test_cifar10_through_torchvision(tmp_path):
    make_cifar10(tmp_path, n_train_batch=4, n_test=5)
    ds = build_dataset(cfg("cifar10", tmp_path), 32)
    check_images(ds, 20, 3, 32)
    assert ds.num_classes == 10 and ds.class_names[0] == "airplane"
    assert len(build_dataset(cfg("cifar10", tmp_path, split="test"), 32)) == 5


def test_max_images_fixed_subset_of_digits():
    full = build_dataset(cfg("digits", channels=1), 8)
    a = build_dataset(cfg("digits", channels=1, max_images=300), 8)
    torch.manual_seed(123)  # the training seed must not change the subset
    b = build_dataset(cfg("digits", channels=1, max_images=300), 8)
    assert len(a) == 300 and torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    # every kept image is one of the full split's, each at most once, labels kept with their image
    flat = full.images.flatten(1)
    match = [(flat == x.flatten()).all(1).nonzero().flatten().tolist() for x in a.images]
    idx = [m[0] for m in match]
    assert all(len(m) >= 1 for m in match) and len(set(idx)) == 300
    assert torch.equal(full.labels[idx], a.labels)
    assert idx == sorted(idx) and idx != list(range(300))  # a spread subset, not the first 300
    assert len(set(a.labels.tolist())) == 10
    # a smaller N is a different draw of the same permutation: its prefix
    c = build_dataset(cfg("digits", channels=1, max_images=50), 8)
    assert set((flat[None] == c.images.flatten(1)[:, None]).all(2).nonzero()[:, 1].tolist()) <= set(idx)


def test_max_images_validated():
    n = len(build_dataset(cfg("digits", channels=1), 8))
    assert len(build_dataset(cfg("digits", channels=1, max_images=n), 8)) == n
    with pytest.raises(ConfigError, match=f"exceeds the {n} images"):
        build_dataset(cfg("digits", channels=1, max_images=n + 1), 8)
    for bad in (0, -3, 2.5, "10", True):
        with pytest.raises(ConfigError, match="positive integer"):
            build_dataset(cfg("digits", channels=1, max_images=bad), 8)


def test_max_images_folder_dataset(tmp_path):
    root = tmp_path / "f"
    make_imagefolder(root, {"a": 3, "b": 4})
    full = build_dataset(cfg("imagefolder", root), 8)
    sub = build_dataset(cfg("imagefolder", root, max_images=3), 8)
    assert len(sub) == 3 and set(sub.items) <= set(full.items)


def test_max_images_is_a_config_key_of_every_dataset():
    from transgan.train.config import compose_config

    for name in ("digits", "synthetic", "imagefolder", "celeba", "flowers102", "cifar10"):
        cfg_, _ = compose_config([f"dataset={name}"])
        assert cfg_.dataset.max_images is None
    cfg_, _ = compose_config(["dataset=digits", "dataset.max_images=300"])
    assert cfg_.dataset.max_images == 300 and len(build_dataset(cfg_.dataset, 8)) == 300


def test_heldout_split_for_the_overfitting_monitor(tmp_path):
    from transgan.data import build_heldout_dataset

    # digits: the fixed test split, whole (not limited by the training run's max_images)
    held = build_heldout_dataset(cfg("digits", channels=1, max_images=50), 8)
    test = build_dataset(cfg("digits", channels=1, split="test"), 8)
    assert torch.equal(held.images, test.images) and held.split == "test"
    # flowers102: val, the smaller held-out split
    make_flowers102(tmp_path, per_split=(6, 3, 3), num_classes=3)
    held = build_heldout_dataset(cfg("flowers102", tmp_path), 8)
    assert held.split == "val" and len(held) == 3
    # none where the data has no split, or the run itself trains on another split
    make_imagefolder(tmp_path / "f", {"a": 3})
    assert build_heldout_dataset(cfg("imagefolder", tmp_path / "f"), 8) is None
    assert build_heldout_dataset(cfg("digits", channels=1, split="all"), 8) is None
