"""Training gives the weights the code gave before the trainer was rebuilt, and resumes its checkpoints.

The fixtures were written by ``python -m tests.train.golden_runs`` at commit d2894a4 (see that
module). On the machine that recorded them the weights are equal bit for bit; the tolerance
below allows another CPU's float rounding, not another computation (a changed phase order, RNG
draw or data position moves the weights by orders of magnitude more).
"""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.train.golden_runs import COMMON, CONFIGS, FIXTURES, tensors, train
from transgan.runs.checkpoint import latest_checkpoint, load_checkpoint
from transgan.runs.load import load_run
from transgan.train.build import build_trainer
from transgan.train.config import compose_config, resolve_run


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_training_gives_the_recorded_weights(name, tmp_path):
    recorded = load_file(str(FIXTURES / f"{name}.safetensors"))
    now = tensors(train(name, tmp_path / "run"))
    assert now.keys() == recorded.keys()
    for key, value in recorded.items():
        torch.testing.assert_close(now[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_a_checkpoint_written_before_resumes_exactly_and_loads(tmp_path):
    run = tmp_path / "old"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(FIXTURES / "conv_wgan_gp.pt", run / "checkpoints" / "step-000000003.pt")
    old = load_checkpoint(run / "checkpoints" / "step-000000003.pt")
    (run / "config.yaml").write_text(old["config"])
    assert load_run(run).info.source["step"] == 3


    cfg, _, resume_from = resolve_run([f"resume={run}", "train.max_steps=4"])
    threads = torch.get_num_threads()
    try:
        build_trainer(cfg, str(run), resume_from).train()
        straight, _ = compose_config([*CONFIGS["conv_wgan_gp"], "train.max_steps=4", *COMMON,
                                      f"hydra.run.dir={tmp_path / 'straight'}"])
        build_trainer(straight, str(tmp_path / "straight")).train()
    finally:
        torch.set_num_threads(threads)
    a, b = load_checkpoint(latest_checkpoint(run)), load_checkpoint(latest_checkpoint(tmp_path / "straight"))
    assert a["progress"]["step"] == b["progress"]["step"] == 4
    for net in ("G", "D", "G_ema"):
        for k in a[net]:
            torch.testing.assert_close(a[net][k], b[net][k], rtol=0, atol=0, msg=f"{net}.{k}")
