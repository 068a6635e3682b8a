"""A full disk during a run: the checkpoints before stay complete, the run stops with one error, resume works."""

from __future__ import annotations

import errno
import json

import torch

from transgan.runs import checkpoint as ckpt
from transgan.runs.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint

SMALL = ["model=cwgan_gp", "model.resolution=16", "model.generator.channel_max=16",
         "model.discriminator.channel_max=16", "dataset=synthetic", "dataset.size=32", "train.batch_size=8",
         "train.n_critic=1", "train.cpu_threads=1", "dataset.num_workers=0", "eval.metrics=[]",
         "train.log_every=1", "train.sample_every=1000", "train.eval_every=1000", "train.ckpt_every=1"]


def _full_after(bytes_ok: int):
    """torch.save into a file system with ``bytes_ok`` bytes left: part of the file, then ENOSPC."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as handle:  # leave a partial file behind, as a real full disk would
            handle.truncate(bytes_ok)
        raise OSError(errno.ENOSPC, "No space left on device")

    return save


def test_a_full_disk_stops_the_run_with_one_error_and_resume_continues(tmp_path, monkeypatch, capsys):
    from transgan.commands import train

    run = tmp_path / "run"
    assert train.main([*SMALL, "train.max_steps=2", f"hydra.run.dir={run}"]) == 0
    monkeypatch.setattr(ckpt.torch, "save", _full_after(1000))
    assert train.main([f"resume={run}", "train.max_steps=4"]) == 2
    printed = capsys.readouterr().err
    err = [line for line in printed.splitlines() if line.startswith("error:")]
    assert "Traceback" not in printed
    assert len(err) == 1 and err[0].startswith("error: stopped at step 3: cannot write a checkpoint")
    assert "No space left on device" in err[0] and "step-000000002.pt" in err[0] and f"resume={run}" in err[0]
    # the checkpoint before is complete and loadable; no partial file is left to be mistaken for one
    assert [p.name for p in list_checkpoints(run)] == ["step-000000001.pt", "step-000000002.pt"]
    assert load_checkpoint(latest_checkpoint(run))["progress"]["step"] == 2
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()  # space freed
    assert train.main([f"resume={run}", "train.max_steps=4"]) == 0
    assert load_checkpoint(latest_checkpoint(run))["progress"]["step"] == 4


class _FillingUp:
    """A file that takes one record, then half of the next before the disk is full."""

    def __init__(self, f) -> None:
        self.f, self.writes = f, 0

    def write(self, data: bytes) -> int:
        self.writes += 1
        if self.writes == 2:
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_a_metrics_line_that_does_not_fit_is_not_left_half_written(tmp_path, monkeypatch, capsys):
    from transgan.commands import train
    from transgan.train import outputs

    run = tmp_path / "run"
    real_init = outputs.RunWriter.__init__

    def init(self, run_dir):
        real_init(self, run_dir)
        self._metrics = _FillingUp(self._metrics)

    monkeypatch.setattr(outputs.RunWriter, "__init__", init)
    assert train.main([*SMALL, "train.max_steps=3", f"hydra.run.dir={run}"]) == 2
    assert "cannot write a metrics line" in capsys.readouterr().err
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1]  # whole records only
    assert load_checkpoint(latest_checkpoint(run))["progress"]["step"] == 1
