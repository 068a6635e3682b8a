"""G_ema: the decay schedule, the parameter average, and normalization statistics of its own."""

import copy
import json
import logging

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from tests.conftest import load_tool
from tests.eval.run_fixtures import tiny_digits_run
from transgan.models.common import recompute_norm_statistics, running_norm_layers
from transgan.runs.checkpoint import latest_checkpoint, load_checkpoint, save_atomic
from transgan.runs.load import load_generator, load_run
from transgan.runs.state import saved_channels_last
from transgan.train.ema import copied_buffers, ema_beta, update_ema


def test_ema_beta_matches_half_life_formula():
    # Half-life h images: after h images the old weight counts one half.
    b = ema_beta(batch_size=64, images_seen=10**9, half_life_kimg=10.0, rampup=0.05)
    assert abs(b - 0.5 ** (64 / 10_000)) < 1e-12
    assert abs(b ** (10_000 / 64) - 0.5) < 1e-9
    # Ramp-up: early on the half-life is images_seen * rampup.
    b_early = ema_beta(batch_size=64, images_seen=6400, half_life_kimg=10.0, rampup=0.05)
    assert abs(b_early - 0.5 ** (64 / (6400 * 0.05))) < 1e-12
    assert ema_beta(64, 6400, 10.0, None) == b


class _WithAverage(nn.Module):
    """A BatchNorm layer beside a buffer that is G's to give (like the style mapping's w_avg)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.bn = nn.Linear(4, 3), nn.BatchNorm1d(3)
        self.register_buffer("w_avg", torch.zeros(3))


def test_update_ema_averages_parameters_copies_other_buffers_and_leaves_norm_statistics_alone():
    torch.manual_seed(0)
    model = _WithAverage()
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        model.bn.running_mean.fill_(0.7)
        model.w_avg.fill_(0.3)
    before = [p.clone() for p in ema.parameters()]
    update_ema(ema, model, beta=0.9)
    for e, b, p in zip(ema.parameters(), before, model.parameters()):
        torch.testing.assert_close(e, 0.9 * b + 0.1 * p, rtol=0, atol=1e-6)
    assert torch.equal(ema.w_avg, model.w_avg)
    assert torch.equal(ema.bn.running_mean, torch.zeros(3))  # G's statistics are not G_ema's
    # train.ema_norm_stats=copy: the behaviour before G_ema had statistics of its own.
    update_ema(ema, model, beta=0.9, buffers=copied_buffers(ema, model, "copy"))
    assert torch.equal(ema.bn.running_mean, model.bn.running_mean)


def _standing_statistics_by_hand(G: nn.Module, num_batches: int, batch_size: int, seed: int) -> list:
    """Per norm layer: the average over batches of the batch mean and of the unbiased batch variance."""
    G = copy.deepcopy(G).train()
    layers = running_norm_layers(G)
    seen: dict[int, list] = {i: [] for i in range(len(layers))}
    hooks = [m.register_forward_pre_hook(lambda m, args, i=i: seen[i].append(args[0].detach().clone()))
             for i, m in enumerate(layers)]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(num_batches):
            z = torch.randn(batch_size, G.z_dim, generator=g)
            c = torch.randint(0, G.num_classes, (batch_size,), generator=g)
            G(z, c)
    for h in hooks:
        h.remove()
    out = []
    for i in range(len(layers)):
        dims = [0, 2, 3] if seen[i][0].dim() == 4 else [0]
        means = torch.stack([x.mean(dims) for x in seen[i]])
        variances = torch.stack([x.var(dims, unbiased=True) for x in seen[i]])
        out.append((means.mean(0), variances.mean(0)))
    return out


def test_recomputed_statistics_are_the_average_of_the_generators_own_batch_statistics():
    from transgan.registry import build_generator

    torch.manual_seed(0)
    G = build_generator({"name": "cwgan_gp", "channel_base": 256, "channel_max": 8}, img_resolution=16,
                        img_channels=1, num_classes=10).eval()
    rng_before = torch.get_rng_state()
    assert recompute_norm_statistics(G, num_batches=5, batch_size=8, seed=3)
    assert torch.equal(torch.get_rng_state(), rng_before)  # no global draw: the training stream stays put
    assert not G.training and all(m.momentum == 0.1 for m in running_norm_layers(G))
    expected = _standing_statistics_by_hand(G, num_batches=5, batch_size=8, seed=3)
    for m, (mean, var) in zip(running_norm_layers(G), expected):
        torch.testing.assert_close(m.running_mean, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m.running_var, var, rtol=1e-5, atol=1e-6)
    assert not recompute_norm_statistics(nn.Sequential(nn.Linear(2, 2)))  # nothing to do without norm layers


@pytest.fixture(scope="module")
def bn_run(tmp_path_factory):
    return tiny_digits_run(tmp_path_factory)  # 2 steps of a BatchNorm conv generator (cwgan_gp)


def test_a_trained_g_ema_holds_statistics_of_its_own_not_the_live_gs(bn_run):
    state = load_checkpoint(latest_checkpoint(bn_run))
    G, G_ema = load_generator(state, "G"), load_generator(state, "G_ema")
    # Recomputed in the layout and at the thread count the run trained with (NHWC on CPU for this G, one
    # thread: both change the reductions' rounding), so equal bit for bit.
    layout = torch.channels_last if saved_channels_last(state) else torch.contiguous_format
    fresh = copy.deepcopy(G_ema).to(memory_format=layout)
    threads = torch.get_num_threads()
    torch.set_num_threads(int(OmegaConf.create(state["config"]).train.cpu_threads))
    try:
        assert recompute_norm_statistics(fresh, **_protocol(state))
    finally:
        torch.set_num_threads(threads)
    for m_g, m_ema, m_fresh in zip(*(running_norm_layers(n) for n in (G, G_ema, fresh))):
        assert not torch.allclose(m_ema.running_mean, m_g.running_mean, atol=1e-3)
        torch.testing.assert_close(m_ema.running_mean, m_fresh.running_mean, rtol=0, atol=0)
        torch.testing.assert_close(m_ema.running_var, m_fresh.running_var, rtol=0, atol=0)


def test_eval_tool_on_a_checkpoint_equals_g_ema_with_freshly_recomputed_statistics(bn_run, tmp_path):
    from transgan.eval.metrics import evaluate, load_preset

    state = load_checkpoint(latest_checkpoint(bn_run))
    out = tmp_path / "eval.json"
    protocol = ["eval.num_samples=200", "eval.metrics=[fid]"]
    assert load_tool("eval").main([str(bn_run), *protocol, "--out", str(out)]) == 0
    tool_fd = json.loads(out.read_text())["fid"]

    # Independently: G_ema's statistics reset and recomputed here, evaluated directly.
    G = _g_ema_with_fresh_statistics(state)
    cfg = OmegaConf.create(state["config"])
    direct = evaluate(G, OmegaConf.to_container(cfg.dataset), load_preset("digits"), num_samples=200,
                      metrics=["fid"])
    assert tool_fd == pytest.approx(direct["fid"], rel=1e-6)


def _g_ema_with_fresh_statistics(state: dict) -> nn.Module:
    """G_ema of a checkpoint with its running statistics reset, then recomputed from its own outputs."""
    G = load_generator(state, "G_ema")
    for m in running_norm_layers(G):
        m.reset_running_stats()
    recompute_norm_statistics(G, **_protocol(state))
    return G


def _protocol(state: dict) -> dict:
    """The run's recomputation: train.ema_norm_batches batches of its training batch size, its seed."""
    cfg = OmegaConf.create(state["config"])
    return {"num_batches": int(cfg.train.ema_norm_batches), "batch_size": int(cfg.train.batch_size),
            "seed": int(cfg.seed)}


def _as_written_before_the_fix(state: dict) -> dict:
    """The checkpoint as code before train.ema_norm_stats wrote it: G's statistics in G_ema, no config key."""
    cfg = OmegaConf.create(state["config"])
    del cfg.train["ema_norm_stats"]
    del cfg.train["ema_norm_batches"]
    G_ema = dict(state["G_ema"])
    for k, v in state["G"].items():
        if "running" in k or "num_batches" in k:
            G_ema[k] = v.clone()
    return {**state, "G_ema": G_ema, "config": OmegaConf.to_yaml(cfg)}


def test_checkpoints_and_exports_from_before_are_corrected_on_load_and_say_so(bn_run, tmp_path, caplog):
    from transgan.runs.export import export_generator, load_exported_generator

    state = load_checkpoint(latest_checkpoint(bn_run))
    old = tmp_path / "old" / "checkpoints" / "step-000000002.pt"
    old.parent.mkdir(parents=True)
    save_atomic(_as_written_before_the_fix(state), old)
    with caplog.at_level(logging.WARNING, logger="transgan.eval"):
        loaded = load_run(old)
    assert "before G_ema kept its own BatchNorm statistics" in caplog.text
    expected = _g_ema_with_fresh_statistics(state)
    for m, e in zip(running_norm_layers(loaded.G), running_norm_layers(expected)):
        torch.testing.assert_close(m.running_mean, e.running_mean, rtol=0, atol=0)

    # An export written before: generator.json without norm_stats, G's statistics in the weights.
    stale = load_generator(state, "G_ema")
    stale.load_state_dict(_as_written_before_the_fix(state)["G_ema"])
    loaded.info.norm_stats = None
    folder = export_generator(stale, loaded.info, tmp_path / "export")
    data = json.loads((folder / "generator.json").read_text())
    del data["norm_stats"]
    (folder / "generator.json").write_text(json.dumps(data))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="transgan.eval"):
        exported = load_exported_generator(folder)
    assert "exported before G_ema kept its own BatchNorm statistics" in caplog.text
    assert not torch.allclose(running_norm_layers(stale)[0].running_mean, running_norm_layers(exported.G)[0].running_mean)
    # A current export records its statistics as G_ema's own and loads without a word.
    current = export_generator(loaded.G, load_run(bn_run).info, tmp_path / "current")
    assert json.loads((current / "generator.json").read_text())["norm_stats"] == "own"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="transgan.eval"):
        load_exported_generator(current)
    assert "BatchNorm" not in caplog.text
