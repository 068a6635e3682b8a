import pytest
import torch
import torch.nn.functional as F

from transgan.data import build_dataset
from transgan.eval import digits_judge as dj


@pytest.fixture(scope="module")
def judge():
    return dj.load_digits_judge()


@pytest.mark.parametrize("res", [8, 32, 64])
def test_shipped_judge_is_accurate_on_held_out_digits(judge, res):
    ds = build_dataset({"name": "digits", "channels": 1, "split": "test"}, res)
    with torch.no_grad():
        pred = judge(ds.images).argmax(1)
    assert (pred == ds.labels).float().mean() >= 0.97


def test_judge_split_is_the_datasets_split():
    from transgan.data import digits_split_indices

    images, labels = dj.digits_split("test")
    ds = build_dataset({"name": "digits", "channels": 1, "split": "test"}, 8)
    assert torch.equal(labels, ds.labels)
    torch.testing.assert_close(images, ds.images, atol=1e-6, rtol=0)
    assert len(digits_split_indices()[1]) == 360


class _RealDigits(torch.nn.Module):
    """A 'generator' returning held-out digits of the requested class."""

    def __init__(self):
        super().__init__()
        ds = build_dataset({"name": "digits", "channels": 1, "split": "test"}, 32)
        self.by_class = [ds.images[ds.labels == k] for k in range(10)]
        self.z_dim, self.num_classes, self.img_resolution, self.img_channels = 4, 10, 32, 1

    def forward(self, z, c):
        idx = (z[:, 0].abs() * 1000).long()
        return torch.stack([self.by_class[k][i % len(self.by_class[k])] for k, i in zip(c.tolist(), idx.tolist())])


class _Noise(_RealDigits):
    def forward(self, z, c):
        g = torch.Generator().manual_seed(int(z[0, 0].abs() * 1e6))
        return torch.rand(len(c), 1, 32, 32, generator=g) * 2 - 1


def test_class_accuracy_of_real_digits_and_noise(judge):
    assert dj.digits_class_accuracy(_RealDigits(), judge, n_per_class=20) >= 0.97
    assert dj.digits_class_accuracy(_Noise(), judge, n_per_class=20) <= 0.3


def test_judge_is_deterministic_and_frozen(judge):
    x = F.interpolate(torch.rand(3, 1, 8, 8) * 2 - 1, size=32)
    assert torch.equal(judge(x), judge(x))
    assert not any(p.requires_grad for p in judge.parameters())


def test_missing_weights_file_is_named(tmp_path, monkeypatch):
    missing = tmp_path / "nope.safetensors"
    monkeypatch.setattr(dj, "JUDGE_WEIGHTS", missing)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        dj.load_digits_judge()
