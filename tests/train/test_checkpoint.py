import os
import pickle

import pytest
import torch

from transgan.runs import checkpoint as ckpt


def test_save_is_atomic_and_listed(tmp_path):
    state = {"format": ckpt.FORMAT, "x": torch.arange(3)}
    for step in (5, 10, 15):
        ckpt.save_atomic(state, ckpt.checkpoint_path(tmp_path, step))
    names = [p.name for p in (tmp_path / "checkpoints").iterdir()]
    assert not [n for n in names if n.endswith(".tmp")]
    assert ckpt.latest_checkpoint(tmp_path).name == "step-000000015.pt"
    ckpt.prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000000010.pt", "step-000000015.pt"]
    assert torch.equal(ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))["x"], torch.arange(3))


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        ckpt.save_atomic({"format": ckpt.FORMAT}, ckpt.checkpoint_path(tmp_path, 1))
    assert list((tmp_path / "checkpoints").iterdir()) == []


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_code_executing_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": ckpt.FORMAT, "x": _Evil(marker)}, f)
    with pytest.raises(ckpt.CheckpointError, match="cannot load"):
        ckpt.load_checkpoint(path)
    assert not marker.exists()


def test_foreign_and_truncated_files_are_refused(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ckpt.CheckpointError, match="not a transgan checkpoint"):
        ckpt.load_checkpoint(other)
    good = tmp_path / "good.pt"
    torch.save({"format": ckpt.FORMAT, "x": torch.zeros(1000)}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:500])
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_checkpoint(truncated)


def test_no_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        ckpt.latest_checkpoint(tmp_path)


def test_rng_state_round_trips_through_safe_load(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    state = ckpt.capture_rng_state()
    expected = (torch.rand(3), random.random(), np.random.rand())
    path = tmp_path / "rng.pt"
    torch.save({"format": ckpt.FORMAT, "rng": state}, path)
    ckpt.restore_rng_state(ckpt.load_checkpoint(path)["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1]
    assert np.random.rand() == expected[2]


def test_preserved_rng_state_leaves_every_generator_where_it_was():
    import random

    import numpy as np

    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    with ckpt.preserved_rng_state():
        torch.nn.Linear(4, 4)  # draws from the torch RNG, like building a model lazily
        random.random()
        np.random.rand()
    after = (torch.rand(2), random.random(), np.random.rand())
    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    assert torch.equal(after[0], torch.rand(2)) and after[1] == random.random() and after[2] == np.random.rand()
