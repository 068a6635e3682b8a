"""Every backbone's G and D forward is one dynamo graph: no graph break, static shapes.

A graph break splits what ``torch.compile`` fuses and what a CUDA graph can capture; the usual
culprits are host reads of tensors (``.item()``, ``bool()``), Python logging and data-dependent
control flow. ``torch._dynamo.explain`` traces without compiling kernels, so this runs in seconds.
Each preset is built conditional (the class-embedding path is traced too) at its own resolution.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from transgan.runs.state import TrainingState
from transgan.train.config import compose_config

CASES = [
    ["model=cwgan_gp"], ["model=transgan"], ["model=swin_gan"], ["model=stylegan2"], ["model=styletoken"],
    ["model=r3gan"],
    # The discriminators no preset above builds (StyleSwin's is unconditional).
    ["model=swin_gan", "model/discriminator=styleswin", "dataset.conditional=false"],
    ["model=swin_gan", "model/discriminator=vitgan"],
]


def _explain(module: torch.nn.Module, *inputs: torch.Tensor):
    torch._dynamo.reset()
    return torch._dynamo.explain(module)(*inputs)


@pytest.mark.parametrize("overrides", CASES, ids=lambda o: "+".join(x.split("=")[1] for x in o))
def test_generator_and_discriminator_forwards_have_no_graph_break(overrides):
    cfg, _ = compose_config(["dataset=synthetic", "dataset.conditional=true", "train.device=cpu", *overrides])
    conditional = bool(cfg.dataset.conditional)
    state = TrainingState.build(cfg, num_classes=10 if conditional else 0, fused=False)
    G, D = state.G.eval(), state.D.eval()
    z, c = torch.randn(2, G.z_dim), (torch.tensor([3, 7]) if conditional else None)
    res = int(cfg.model.resolution)
    x = torch.randn(2, int(cfg.dataset.channels), res, res)
    for name, module, inputs in (("G", G, (z, c)), ("D", D, (x, c))):
        report = _explain(module, *inputs)
        reasons = [str(b.reason).splitlines()[0] for b in report.break_reasons]
        assert report.graph_break_count == 0 and report.graph_count == 1, (name, reasons)
    torch._dynamo.reset()
