"""Tiny datasets written in exactly torchvision's on-disk layouts, so the real loaders run."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def _photo(rng: np.random.Generator, size: tuple[int, int], tint: int) -> Image.Image:
    a = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    a[..., tint % 3] = 255
    return Image.fromarray(a)


def make_imagefolder(root: Path, classes: dict[str, int], size: tuple[int, int] = (20, 16), seed: int = 0) -> Path:
    """root/<class>/<i>.png with the given number of images per class."""
    rng = np.random.default_rng(seed)
    for k, (name, n) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _photo(rng, size, k).save(root / name / f"{i:03d}.png")
    return root


def make_celeba(root: Path, n: int = 12, seed: int = 0) -> Path:
    """torchvision CelebA layout: img_align_celeba/*.jpg and the five metadata text files."""
    base = root / "celeba"
    (base / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    for name in names:
        _photo(rng, (178, 218), 0).save(base / "img_align_celeba" / name, quality=95)
    # Partition: 0 train, 1 valid, 2 test (2/3 train, then alternating).
    part = [0 if i < 2 * n // 3 else 1 + i % 2 for i in range(n)]
    (base / "list_eval_partition.txt").write_text("".join(f"{f} {p}\n" for f, p in zip(names, part)))
    (base / "identity_CelebA.txt").write_text("".join(f"{f} {i % 3 + 1}\n" for i, f in enumerate(names)))
    attrs = ["5_o_Clock_Shadow", "Smiling"]
    (base / "list_attr_celeba.txt").write_text(
        f"{n}\n" + " ".join(attrs) + "\n" + "".join(f"{f} {'1' if i % 2 else '-1'} -1\n" for i, f in enumerate(names)))
    (base / "list_bbox_celeba.txt").write_text(
        f"{n}\nimage_id x_1 y_1 width height\n" + "".join(f"{f} 1 2 3 4\n" for f in names))
    marks = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
    (base / "list_landmarks_align_celeba.txt").write_text(
        f"{n}\n{marks}\n" + "".join(f"{f} " + " ".join(["50"] * 10) + "\n" for f in names))
    return root


def make_flowers102(root: Path, per_split: tuple[int, int, int] = (6, 3, 3), num_classes: int = 3,
                    seed: int = 0) -> Path:
    """torchvision Flowers102 layout: jpg/image_XXXXX.jpg, imagelabels.mat, setid.mat."""
    from scipy.io import savemat

    base = root / "flowers-102"
    (base / "jpg").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    n = sum(per_split)
    labels = np.array([1 + i % num_classes for i in range(n)], dtype=np.uint8)  # 1-based as in the .mat
    for i in range(n):
        _photo(rng, (40, 30), int(labels[i])).save(base / "jpg" / f"image_{i + 1:05d}.jpg", quality=95)
    ids = np.arange(1, n + 1)
    a, b = per_split[0], per_split[0] + per_split[1]
    savemat(base / "imagelabels.mat", {"labels": labels[None]})
    savemat(base / "setid.mat", {"trnid": ids[:a][None], "valid": ids[a:b][None], "tstid": ids[b:][None]})
    return root


def make_cifar10(root: Path, n_train_batch: int = 4, n_test: int = 5, seed: int = 0) -> Path:
    """torchvision CIFAR10 layout: cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(seed)

    def batch(n: int) -> dict:
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": [i % 10 for i in range(n)]}

    for i in range(1, 6):
        with open(base / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(n_train_batch), f)
    with open(base / "test_batch", "wb") as f:
        pickle.dump(batch(n_test), f)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    return root
