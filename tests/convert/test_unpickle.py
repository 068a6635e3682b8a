"""The converter's loaders read tensors and plain containers only; pickled code never runs."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from tests.convert.official_pickle import Net, write_snapshot
from transgan.convert.unpickle import ConvertError, PersistentObject, load_official


class _Payload:
    """Pickles to a call of os.system that writes a marker file (the classic malicious pickle)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _snapshot(tmp_path: Path, protocol: int = 4) -> Path:
    torch.manual_seed(0)
    mapping = Net("MappingNetwork", params={"fc0.weight": torch.randn(4, 3)}, buffers={"w_avg": torch.randn(4)})
    G = Net("Generator", modules={"mapping": mapping}, z_dim=3, c_dim=0)
    path = tmp_path / "network-snapshot.pkl"
    write_snapshot(path, {"G_ema": G, "training_set_kwargs": {"resolution": 8}}, protocol=protocol)
    return path


@pytest.mark.parametrize("protocol", [2, 4])
def test_snapshot_rebuilds_tensors_and_structure(tmp_path, protocol):
    """Networks come back as inert records holding exactly the pickled tensors and plain values."""
    path = _snapshot(tmp_path, protocol)
    data = load_official(path)
    G = data["G_ema"]
    assert isinstance(G, PersistentObject) and G.class_name == "Generator"
    assert G.state["z_dim"] == 3 and G.state["weight_gain"] == 0.5 and G.state["_init_kwargs"] == {"z_dim": 3,
                                                                                                    "c_dim": 0}
    torch.manual_seed(0)
    want_w, want_avg = torch.randn(4, 3), torch.randn(4)
    tensors = G.tensors()
    assert sorted(tensors) == ["mapping.fc0.weight", "mapping.w_avg"]
    assert torch.equal(tensors["mapping.fc0.weight"], want_w) and torch.equal(tensors["mapping.w_avg"], want_avg)
    assert data["training_set_kwargs"] == {"resolution": 8}


@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, protocol):
    """A __reduce__ that calls os.system is refused by name; the marker file is never written."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"G_ema": _Payload(marker)}, f, protocol=protocol)
    with pytest.raises(ConvertError, match=r"refusing to load.*(posix|os)\.system"):
        load_official(path)
    assert not marker.exists()
    # The same object inside a torch.save archive: torch's weights-only unpickler refuses it.
    pt = tmp_path / "evil.pt"
    torch.save({"g_ema": {"w": torch.zeros(1)}, "x": _Payload(marker)}, pt)
    with pytest.raises(ConvertError, match="refusing to load"):
        load_official(pt)
    assert not marker.exists()


def test_persistent_source_code_is_never_executed(tmp_path):
    """A network record whose module_src writes a file (the official loader would exec it) is read as data."""
    marker = tmp_path / "ran"
    src = f"open({str(marker)!r}, 'w').write('x')\n"
    path = tmp_path / "snap.pkl"
    write_snapshot(path, {"G_ema": Net("Generator", params={"w": torch.ones(2)}, module_src=src)})
    G = load_official(path)["G_ema"]
    assert torch.equal(G.tensors()["w"], torch.ones(2))
    assert not marker.exists()


def test_truncated_and_foreign_files_are_named(tmp_path):
    """Cut files and non-checkpoints fail with a message saying what is wrong; the name does not matter."""
    path = _snapshot(tmp_path)
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ConvertError, match="truncated"):
        load_official(cut)
    text = tmp_path / "notes.pkl"
    text.write_text("hello")
    with pytest.raises(ConvertError, match="not a checkpoint: it starts with b'hello'"):
        load_official(text)
    pt = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(3)}, pt)
    cut_pt = tmp_path / "cut.pt"
    cut_pt.write_bytes(pt.read_bytes()[:200])
    with pytest.raises(ConvertError, match="not a complete torch.save file"):
        load_official(cut_pt)
    # Recognized by content: a torch.save archive named .pkl, a pickle named .ckpt, no suffix at all.
    assert torch.equal(load_official(pt.rename(tmp_path / "model.pkl"))["w"], torch.zeros(3))
    assert "G_ema" in load_official(path.rename(tmp_path / "model.ckpt"))
    assert torch.equal(load_official((tmp_path / "model.pkl").rename(tmp_path / "checkpoint"))["w"], torch.zeros(3))
