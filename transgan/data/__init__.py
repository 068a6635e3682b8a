"""Datasets and transforms. ``build_dataset(cfg.dataset, resolution)`` is the one entry point."""

from transgan.data.datasets import (DatasetNotFoundError, ImageDataset, build_dataset, build_heldout_dataset,
                                    digits_split_indices)

__all__ = ["DatasetNotFoundError", "ImageDataset", "build_dataset", "build_heldout_dataset", "digits_split_indices"]
