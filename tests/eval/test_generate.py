"""Generation helpers and tools/generate.py: interpolation, truncation, style mixing, export, nearest neighbours."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from tests.conftest import load_tool
from tests.eval.run_fixtures import STYLE_CONFIG, tiny_digits_run, tiny_math_attention_run, tiny_style_generator
from transgan.errors import ConfigError
from transgan.eval.generate import memorization_report, parse_classes, parse_seeds, resolve_class, sample
from transgan.eval.sampling import (
    interpolate, lerp, nearest_neighbours, seed_latents, slerp, style_mixing_grid, synthesize, to_uint8)
from transgan.registry import build_generator
from transgan.runs.checkpoint import latest_checkpoint, load_checkpoint, save_atomic
from transgan.runs.export import GeneratorInfo, export_generator, load_exported_generator
from transgan.runs.load import load_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_digits_run(tmp_path_factory)


@pytest.fixture(scope="module")
def style_G():
    return tiny_style_generator()


# ----------------------------------------------------------------------------- interpolation maths

def test_lerp_and_slerp_return_exactly_the_endpoints():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, generator=g), torch.randn(64, generator=g)
    t = torch.linspace(0, 1, 7)
    for path in (lerp(a, b, t), slerp(a, b, t)):
        assert path.shape == (7, 64)
        assert torch.equal(path[0], a) and torch.equal(path[-1], b)


def test_slerp_keeps_the_norm_of_unit_vectors_and_follows_the_great_circle():
    g = torch.Generator().manual_seed(1)
    a = torch.nn.functional.normalize(torch.randn(32, dtype=torch.float64, generator=g), dim=0)
    b = torch.nn.functional.normalize(torch.randn(32, dtype=torch.float64, generator=g), dim=0)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    path = slerp(a, b, t)
    assert torch.allclose(path.norm(dim=1), torch.ones(11, dtype=torch.float64), atol=1e-12)
    # Reference: rotate a by angle t*theta toward the unit vector u orthogonal to a in the a-b plane.
    theta = torch.acos(a @ b)
    u = torch.nn.functional.normalize(b - (a @ b) * a, dim=0)
    expected = torch.cos(t * theta)[:, None] * a + torch.sin(t * theta)[:, None] * u
    assert torch.allclose(path, expected, atol=1e-12)
    assert lerp(a, b, t)[5].norm() < 0.99  # the straight line cuts the sphere; slerp must not
    parallel = slerp(a, 2 * a, t)  # no angle: falls back to lerp, no NaN
    assert torch.isfinite(parallel).all() and torch.allclose(parallel, lerp(a, 2 * a, t))


def test_seed_latents_are_seeded_normals_and_truncation_redraws_only_entries_beyond_the_threshold():
    z = seed_latents([5, 6], 128)
    assert torch.equal(z[0], torch.randn(128, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(seed_latents([6], 128)[0], z[1])
    truncated = seed_latents([5, 6], 128, threshold=0.5)
    assert truncated.abs().max() <= 0.5
    inside = z.abs() <= 0.5
    assert torch.equal(truncated[inside], z[inside])  # redraws touch only the entries outside
    assert torch.equal(truncated, seed_latents([5, 6], 128, threshold=0.5))
    with pytest.raises(ConfigError, match="> 0"):
        seed_latents([0], 8, threshold=0.0)


def test_nearest_neighbours_match_brute_force():
    g = torch.Generator().manual_seed(2)
    q, r = torch.randn(5, 7, generator=g), torch.randn(40, 7, generator=g)
    d, i = nearest_neighbours(q, r, 3)
    brute = np.linalg.norm(q.numpy()[:, None] - r.numpy()[None], axis=-1)
    order = np.argsort(brute, axis=1)[:, :3]
    assert np.array_equal(i.numpy(), order)
    assert np.allclose(d.numpy(), np.take_along_axis(brute, order, 1))
    with pytest.raises(ConfigError):
        nearest_neighbours(q, r, 41)


# ----------------------------------------------------------------------------- images of generators

@pytest.mark.parametrize("method", ["lerp", "slerp"])
def test_interpolation_strip_starts_and_ends_at_the_two_seed_samples(run_dir, style_G, method):
    plain = load_run(run_dir).G
    for G, space, c in ((plain, "z", 4), (style_G, "z", 1), (style_G, "w", 1)):
        strip = interpolate(G, (3, 9), steps=5, method=method, space=space, c=c)
        ends = sample(G, [3, 9], [c, c])
        assert strip.shape[0] == 5
        # Same latents; only the batch size differs (5 vs 2), hence float tolerance.
        assert torch.allclose(strip[0], ends[0], atol=1e-5) and torch.allclose(strip[-1], ends[1], atol=1e-5)
        assert not torch.allclose(strip[2], ends[0], atol=1e-3)  # the middle is somewhere else


def test_w_truncation_psi_zero_gives_the_class_average_and_samples_repeat(style_G):
    at_zero = sample(style_G, [0, 1, 2], [2, 2, 2], truncation=0.0)
    assert torch.allclose(at_zero[0], at_zero[1], atol=1e-6) and torch.allclose(at_zero[0], at_zero[2], atol=1e-6)
    other_class = sample(style_G, [0], [3], truncation=0.0)
    assert not torch.allclose(other_class[0], at_zero[0], atol=1e-3)  # w_avg is per class
    free = sample(style_G, [0, 1], [2, 2])
    assert not torch.allclose(free[0], free[1], atol=1e-3)
    assert torch.equal(free, sample(style_G, [0, 1], [2, 2]))  # constant noise: a seed is an image


def test_style_mixing_grid_takes_coarse_styles_from_rows_and_fine_from_columns(style_G):
    rows, cols, c = [0, 1], [5, 6, 7], 1
    num_ws = style_G.num_ws
    grid = style_mixing_grid(style_G, rows, cols, c=c, crossover=2).view(3, 4, 3, 16, 16)
    row_images, col_images = sample(style_G, rows, [c] * 2), sample(style_G, cols, [c] * 3)
    assert (grid[0, 0] == -1).all()
    assert torch.allclose(grid[0, 1:], col_images, atol=1e-5) and torch.allclose(grid[1:, 0], row_images, atol=1e-5)
    # Independent mixing: ws of row seed i before the crossover, of column seed j after it.
    z = seed_latents(rows + cols, style_G.z_dim)
    ws = style_G.mapping(z, torch.full((5,), c))
    cell = ws[1].clone()
    cell[2:] = ws[2 + 2][2:]  # row seed 1, column seed 7
    expected = style_G.synthesis(cell[None], noise_mode="const")[0]
    assert torch.allclose(grid[2, 3], expected, atol=1e-5)
    # Crossover at the ends: all styles from one side.
    assert torch.allclose(style_mixing_grid(style_G, rows, cols, c, crossover=num_ws).view(3, 4, 3, 16, 16)[1:, 1],
                          row_images, atol=1e-5)
    assert torch.allclose(style_mixing_grid(style_G, rows, cols, c, crossover=0).view(3, 4, 3, 16, 16)[1, 1:],
                          col_images, atol=1e-5)
    with pytest.raises(ConfigError, match="crossover"):
        style_mixing_grid(style_G, rows, cols, c, crossover=num_ws + 1)


# ----------------------------------------------------------------------------- export

def test_a_run_loads_from_its_checkpoint_alone_when_the_data_is_gone(run_dir, monkeypatch):
    state = load_checkpoint(latest_checkpoint(run_dir))
    assert state["model"]["num_classes"] == 10 and state["class_names"] == [str(d) for d in range(10)]

    def no_data(cfg):
        raise ConfigError("the dataset is gone")

    import transgan.runs.load as runs
    monkeypatch.setattr(runs, "_dataset_listing", no_data)
    loaded = load_run(run_dir)  # neither the class count nor the names need the dataset
    assert loaded.info.num_classes == 10 and loaded.info.class_names == [str(d) for d in range(10)]


def test_export_load_generate_gives_the_runs_g_ema_images_in_a_process_without_the_trainer(run_dir, tmp_path,
                                                                                            repo_root):
    state = load_checkpoint(latest_checkpoint(run_dir))
    cfg = OmegaConf.create(state["config"])
    # The run's G_ema, built here from the checkpoint without transgan's loaders.
    reference = build_generator(cfg.model.generator, img_resolution=16, img_channels=1, num_classes=10)
    reference.load_state_dict(state["G_ema"])
    seeds, classes = list(range(10, 20)), list(range(10))
    expected = sample(reference.eval(), seeds, classes, truncation=1.5)

    loaded = load_run(run_dir)
    assert loaded.info.class_names == [str(d) for d in range(10)] and loaded.info.num_classes == 10
    out = export_generator(loaded.G, loaded.info, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["generator.json", "generator.safetensors"]
    assert json.loads((out / "generator.json").read_text())["generator"]["name"] == "cwgan_gp"

    script = f"""
import sys, torch
torch.set_num_threads({torch.get_num_threads()})  # same reduction order as this process: bit-for-bit images
from safetensors.torch import save_file
from transgan.eval.generate import sample
from transgan.runs.export import load_exported_generator
loaded = load_exported_generator({str(out)!r})
images = sample(loaded.G, {seeds}, {classes}, truncation=1.5)
save_file({{"images": images}}, {str(tmp_path / 'images.safetensors')!r})
print(sorted(m for m in sys.modules if m.startswith("transgan.train")))
"""
    env = {**os.environ, "PYTHONPATH": str(repo_root), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"  # nothing of the trainer was imported
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(tmp_path / "images.safetensors"))["images"], expected)


def test_style_export_keeps_w_avg_and_constant_noise(style_G, tmp_path):
    info = GeneratorInfo(generator=dict(STYLE_CONFIG), img_resolution=16, img_channels=3, num_classes=4,
                         class_names=["rose", "tulip", "daisy", "iris"])
    export_generator(style_G, info, tmp_path / "style")
    loaded = load_exported_generator(tmp_path / "style" / "generator.safetensors")
    assert loaded.info.class_names == ["rose", "tulip", "daisy", "iris"]
    assert torch.equal(loaded.G.mapping.w_avg, style_G.mapping.w_avg)
    assert torch.equal(sample(loaded.G, [1, 2, 3], [0, 1, 2], 0.6), sample(style_G, [1, 2, 3], [0, 1, 2], 0.6))
    (tmp_path / "style" / "generator.json").unlink()  # the header copy of the config suffices
    assert load_exported_generator(tmp_path / "style").info.class_names[0] == "rose"
    bad = dict(info.to_json(), img_resolution=32)
    (tmp_path / "style" / "generator.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="does not fit"):
        load_exported_generator(tmp_path / "style")


# ----------------------------------------------------------------------------- parsing, report, tool

def test_seed_and_class_parsing_refuse_bad_input():
    assert parse_seeds("0-3,10") == [0, 1, 2, 3, 10]
    for bad in ("", "a", "3-1", "-2", "0-100000"):
        with pytest.raises(ConfigError):
            parse_seeds(bad)
    info = GeneratorInfo(generator={"name": "x"}, img_resolution=8, img_channels=1, num_classes=3,
                         class_names=["cat", "dog", "7"])
    assert resolve_class("dog", info) == 1 and resolve_class("7", info) == 2 and resolve_class("0", info) == 0
    assert parse_classes("all", info) == [0, 1, 2] and parse_classes("cat,2", info) == [0, 2]
    for bad in (3, -1, "horse", True, None):
        with pytest.raises(ConfigError):
            resolve_class(bad, info)


def test_memorization_report_lists_the_true_nearest_training_images(run_dir, tmp_path):
    from transgan.data import build_dataset
    from transgan.eval.generate import FeatureSpace

    loaded = load_run(run_dir)
    report = memorization_report(loaded, seeds=[0, 1], classes=[3, 8], k=3)
    assert report.features == "fd-digits"  # the digits default
    png, meta = report.save(tmp_path / "nn.png")
    assert Image.open(png).size == (4 * 16 + 5 * 2, 4 * 16 + 5 * 2)  # 4 rows: sample + 3 neighbours
    saved = json.loads(meta.read_text())
    records = saved["samples"]
    assert [(r["class"], r["seed"]) for r in records] == [(3, 0), (3, 1), (8, 0), (8, 1)]
    # Recompute independently: every training image's distance to each sample.
    train = build_dataset(OmegaConf.create(loaded.info.dataset), resolution=16)
    space = FeatureSpace("fd-digits")
    real = space(train.images)
    others = torch.cdist(real, real) + torch.diag(torch.full((len(real),), float("inf"), dtype=real.dtype))
    assert math.isclose(saved["train_nn_median"], others[:1000].min(dim=1).values.median().item(), rel_tol=1e-9)
    fakes = space(sample(loaded.G, [0, 1, 0, 1], [3, 3, 8, 8]))
    for r, f in zip(records, fakes):
        all_d = (real - f).norm(dim=1)
        listed = [n["distance"] for n in r["neighbours"]]
        assert listed == sorted(listed) and math.isclose(listed[0], all_d.min().item(), rel_tol=1e-6)
        assert [n["label"] for n in r["neighbours"]] == [int(train.labels[n["index"]]) for n in r["neighbours"]]


@pytest.fixture(scope="module")
def generate_tool():
    return load_tool("generate")


def test_generate_tool_writes_grids_files_and_an_export(run_dir, tmp_path, generate_tool, capsys):
    grid = tmp_path / "grid.png"
    assert generate_tool.main(["images", str(run_dir), "--classes", "1,7", "--seeds", "0-2", "--out", str(grid),
                               "--per-image", str(tmp_path / "each")]) == 0
    assert Image.open(grid).size == (3 * 16 + 4 * 2, 2 * 16 + 3 * 2)
    each = tmp_path / "each" / "class7-seed2.png"
    expected = to_uint8(sample(load_run(run_dir).G, [2], [7]))[0, 0].numpy()
    assert np.array_equal(np.asarray(Image.open(each)), expected)
    strip = tmp_path / "strip.png"
    assert generate_tool.main(["interp", str(run_dir), "--seeds", "1,2", "--class", "3", "--steps", "4",
                               "--out", str(strip)]) == 0
    assert Image.open(strip).size == (4 * 16 + 5 * 2, 2 * 16 + 3 * 2)  # lerp and slerp rows
    assert generate_tool.main(["export", str(run_dir), "--out", str(tmp_path / "exp")]) == 0
    from_export = tmp_path / "from_export.png"
    assert generate_tool.main(["images", str(tmp_path / "exp"), "--classes", "1,7", "--seeds", "0-2",
                               "--out", str(from_export)]) == 0
    assert np.array_equal(np.asarray(Image.open(from_export)), np.asarray(Image.open(grid)))
    capsys.readouterr()
    assert generate_tool.main(["images", str(run_dir), "--classes", "12"]) == 2
    assert "unknown class 12" in capsys.readouterr().err
    assert generate_tool.main(["mixing", str(run_dir)]) == 2  # cwgan_gp has no mapping network
    assert "style-based generator" in capsys.readouterr().err
    assert generate_tool.main(["images", str(tmp_path / "missing")]) == 2


def test_synthesize_leaves_batchnorm_statistics_and_mode_alone(run_dir):
    G = load_run(run_dir).G.train()
    before = {k: v.clone() for k, v in G.state_dict().items()}
    synthesize(G, seed_latents([0, 1], G.z_dim), torch.tensor([0, 1]))
    assert G.training
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())


# ----------------------------------------------------------------------------- the run's attention kernel

def test_generating_from_a_math_run_uses_math_and_the_export_records_it(tmp_path_factory, tmp_path, generate_tool,
                                                                         kernels_run):
    run = tiny_math_attention_run(tmp_path_factory)
    loaded = load_run(run)
    assert loaded.G.attention_kernel == "math" and loaded.info.attention == "math"

    assert generate_tool.main(["images", str(run), "--classes", "1,7", "--seeds", "0-1",
                               "--out", str(tmp_path / "grid.png")]) == 0
    assert kernels_run and set(kernels_run) == {"math"}
    kernels_run.clear()
    assert generate_tool.main(["images", str(run), "--seeds", "0", "model.attention=chunked",
                               "--out", str(tmp_path / "chunked.png")]) == 0
    assert kernels_run and set(kernels_run) == {"chunked"}

    assert generate_tool.main(["export", str(run), "--out", str(tmp_path / "exp")]) == 0
    recorded = json.loads((tmp_path / "exp" / "generator.json").read_text())
    assert recorded["attention"] == "math"
    kernels_run.clear()
    assert generate_tool.main(["images", str(tmp_path / "exp"), "--seeds", "0", "--out", str(tmp_path / "e.png")]) == 0
    assert kernels_run and set(kernels_run) == {"math"}
    assert load_exported_generator(tmp_path / "exp", attention="sdpa").G.attention_kernel == "sdpa"

    # An export written before the kernel was recorded: the backbone's default.
    del recorded["attention"]
    (tmp_path / "exp" / "generator.json").write_text(json.dumps(recorded))
    old_export = load_exported_generator(tmp_path / "exp")
    assert old_export.G.attention_kernel == "auto" and old_export.info.attention is None


def test_a_checkpoint_without_a_recorded_kernel_still_loads(tmp_path_factory, tmp_path):
    state = load_checkpoint(latest_checkpoint(tiny_math_attention_run(tmp_path_factory)))
    cfg = OmegaConf.create(state["config"])
    del cfg.model["attention"]
    state["config"] = OmegaConf.to_yaml(cfg)  # as the trainer writes it, less model.attention
    save_atomic(state, tmp_path / "old.pt")
    old = load_run(tmp_path / "old.pt")
    assert old.G.attention_kernel == "auto" and old.info.attention is None
    for name, tensor in old.G.state_dict().items():
        assert torch.equal(tensor, state["G_ema"][name]), name
    assert load_run(tmp_path / "old.pt", attention="math").G.attention_kernel == "math"
