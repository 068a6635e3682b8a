"""Equal tuning per cell (Optuna), final seeds apart from tuning seeds, bootstrap intervals, no rerun of finished work."""

from __future__ import annotations

import hashlib
import json
import math
import statistics

import optuna
import pytest
from omegaconf import OmegaConf
from scipy import stats

from transgan.ablation import AblationError, compose_ablation, run_ablation
from transgan.ablation.report import contrast_rows, mean_curve, plateau, statistics_section
from transgan.ablation.tuning import check_equal_tuning, check_tuning, counted_trials, final_plan


@pytest.fixture(autouse=True)
def _cpu_and_private_cache(tmp_path, monkeypatch):
    """Cells run on CPU and cache reference statistics under the test's folder."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("TRANSGAN_CACHE_DIR", str(tmp_path / "eval-cache"))


def test_tuned_preset_plans_every_cell_with_one_space_and_disjoint_seeds():
    cfg = compose_ablation(["experiment=ablation_digits_tuned"])
    check_tuning(cfg)
    assert cfg.tuning.trials >= 1 and not set(cfg.tuning.seeds) & set(cfg.seeds) and len(cfg.seeds) >= 3
    recipes = {f"{c.generator}+{c.discriminator}": {"recipe": ["loss=ns_r1", "train.batch_size=32", "train.n_critic=1"]}
               for c in cfg.cells}
    recipes["cwgan_gp+cwgan_gp"] = {"recipe": ["loss=wgan_gp", "train.batch_size=64", "train.n_critic=3"]}
    cells = final_plan(cfg, recipes)
    assert len(cells) == len(cfg.cells) * len(cfg.seeds) and {"r3gan+r3gan", "transgan+r3gan"} <= set(recipes)
    by = {c.label: c.cfg for c in cells}
    images = int(cfg.budget.value)
    assert by["cwgan_gp+cwgan_gp"].train.max_steps == -(-images // (64 * 3))  # equal images, own batch x n_critic
    assert by["transgan+transgan"].train.max_steps == images // 32
    assert by["transgan+transgan"].loss.adversarial == "ns" and by["cwgan_gp+cwgan_gp"].loss.adversarial == "wgan"


@pytest.mark.parametrize("override, message", [
    ("tuning.seeds=[1]", "share"),                    # a final seed reused for tuning
    ("tuning.budget.kind=steps", "unequal compute"),  # steps with batch and n_critic tuned
    ("tuning.seeds=[]", "trial seeds"),
])
def test_tuning_that_cannot_be_equal_or_separate_is_refused(override, message):
    cfg = compose_ablation(["experiment=ablation_digits_tuned", override])
    with pytest.raises(AblationError, match=message):
        check_tuning(cfg)


def test_cells_with_unequal_trial_counts_are_refused():
    studies = {}
    for label, n in (("a", 3), ("b", 2)):
        study = optuna.create_study(study_name=label)
        for _ in range(n):
            t = study.ask()
            study.tell(t, t.suggest_float("x", 0.0, 1.0))
        studies[label] = study
    check_equal_tuning({"a": studies["a"]}, 3)
    with pytest.raises(AblationError, match=r"unequal tuning budgets.*'b': 2"):
        check_equal_tuning(studies, 3)


def test_the_report_gives_t_intervals_exact_permutation_p_holm_and_detectable_differences():
    rows = [{"cell": c, "seed": s, "metric": "fd_digits", "metric_value": v}
            for c, vals in (("a", (3.1, 2.9, 3.3)), ("b", (7.9, 7.1, 8.6)), ("c", (3.0, 3.4, 2.8)))
            for s, v in enumerate(vals)]
    contrasts = [{"name": "a vs b", "a": "a", "b": "b"}, {"name": "c vs a", "a": "c", "b": "a"}]
    table = contrast_rows({c: [r for r in rows if r["cell"] == c] for c in "abc"}, contrasts, lower=True)
    a, b = [3.1, 2.9, 3.3], [7.9, 7.1, 8.6]
    assert table[0]["p_perm"] == pytest.approx(0.1)  # all of a below all of b: the smallest 3-vs-3 p
    assert table[0]["p_holm"] == pytest.approx(min(1.0, 2 * 0.1))  # smallest of two contrasts: x 2
    assert table[0]["reading"] == "no finding"  # with 3 seeds no contrast can pass Holm at 0.05
    assert table[0]["diff"] == pytest.approx(statistics.fmean(a) - statistics.fmean(b))
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (table[0]["low"], table[0]["high"]) == pytest.approx((ci.low, ci.high))
    assert table[0]["detectable"] > 0
    md = statistics_section(rows, [], ["a", "b", "c"], contrasts, eval_sd={"a": 0.05}, exploratory=True)
    mean, low, high = statistics.fmean(a), *stats.t.interval(0.95, 2, loc=statistics.fmean(a),
                                                               scale=statistics.stdev(a) / math.sqrt(3))
    assert f"| a | 3 | {mean:.3f} | {statistics.stdev(a):.3f} | [{low:.3f}, {high:.3f}] | 0.050 |" in md
    assert "exploratory" in md and "Holm" in md


def test_the_plateau_check_reads_the_cells_seed_mean_through_the_evaluation_noise():
    # Seed 0 keeps falling, seed 1 rises: the cell's mean is flat, so it has converged.
    images = (8000, 16000, 24000, 32000, 40000, 48000)
    curves = [{"cell": "a", "seed": s, "images_seen": i, "metric_value": v}
              for s, vals in ((0, (9, 8, 7, 6, 5, 4)), (1, (9, 10, 11, 12, 13, 14))) for i, v in zip(images, vals)]
    curves.append({"cell": "a", "seed": 2, "images_seen": 48000, "metric_value": 1.0})  # a seed not in the rows
    assert [p["metric_value"] for p in mean_curve(curves, [0, 1])] == [9.0] * 6
    rows = [{"cell": "a", "seed": s, "metric": "fd_digits", "metric_value": v} for s, v in ((0, 4.0), (1, 14.0))]
    line = next(ln for ln in statistics_section(rows, curves, ["a"], []).splitlines() if ln.startswith("| a |"))
    assert line.endswith("| yes |")
    falling = [{**p, "metric_value": p["metric_value"] - p["images_seen"] / 8000 * 0.5} for p in curves]
    line = next(ln for ln in statistics_section(rows, falling, ["a"], [], eval_sd={"a": 0.01}).splitlines()
                if ln.startswith("| a |"))
    assert "still improving" in line
    # the same fall read through evaluation noise as large as the fall itself is no finding of improvement
    assert plateau(mean_curve(falling, [0, 1]), noise_sd=5.0)["converged"] is True


def _journal_trials(out):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(out / "tuning" / "optuna.journal")))
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
            for s in optuna.get_all_study_summaries(storage)}


def test_tuning_then_final_runs_with_fresh_seeds_and_nothing_rerun(tmp_path):
    out = tmp_path / "abl"
    args = ["experiment=ablation_digits_tuned", f"out_dir={out}", "seeds=[0]", "launcher=[python]",
            "budget.value=16", "eval.points=2", "tuning.trials=2", "tuning.seeds=[7,8]", "tuning.budget.value=8",
            "tuning.survivors=1", "eval.memorization=true", "eval.noise_seeds=1",
            "cells=[{generator:cwgan_gp,discriminator:cwgan_gp}]", "contrasts=[]",
            "extra_args=['eval.num_samples=30','train.log_every=1']",
            "tuning.space={loss:{wgan_gp:{gp_weight:[1.0,10.0]},ns_r1:{r1_gamma:[0.1,1.0]}},"
            "train.lr_g:[1.0e-4,1.0e-3],train.n_critic:[1],train.batch_size:[8]}"]
    said: list[str] = []
    run_ablation(args, echo=said.append)
    (study,) = _journal_trials(out).values()
    assert len(counted_trials(study)) == 2
    recipes = json.loads((out / "tuning" / "recipes.json").read_text())
    chosen = recipes["cwgan_gp+cwgan_gp"]
    # successive halving: both trials ran 8 images at seed 7; the better one trained on to the final 16
    # images (its seed-7 run continued, a seed-8 run added); its value is the mean over those two
    best = min(counted_trials(study), key=lambda t: t.value)
    halving = json.loads((out / "tuning" / "cwgan_gp+cwgan_gp" / "halving.json").read_text())
    assert list(halving) == [f"1/{best.number}"] and chosen["trial"] == best.number
    assert chosen["value"] == halving[f"1/{best.number}"] and chosen["second"] is None
    tag_dir = next(p for p in (out / "tuning" / "cwgan_gp+cwgan_gp").iterdir() if (p / "runs").is_dir()
                   and (p / "runs" / "cwgan_gp+cwgan_gp__seed8").is_dir())
    rows = [json.loads((tag_dir / "runs" / f"cwgan_gp+cwgan_gp__seed{k}" / "ablation_cell.json").read_text())["row"]
            for k in (7, 8)]
    assert [r["images_seen"] for r in rows] == [16, 16]
    assert chosen["value"] == pytest.approx(statistics.fmean(r["metric_value"] for r in rows))
    trial_seeds = {OmegaConf.load(p).seed for p in (out / "tuning").glob("*/*/runs/*/config.yaml")}
    final = OmegaConf.load(out / "runs" / "cwgan_gp+cwgan_gp__seed0" / "config.yaml")
    assert trial_seeds == {7, 8} and final.seed == 0  # the final seed never appears in tuning
    assert f"loss={final.loss.name}" in chosen["recipe"] and final.train.max_steps == 2
    report = (out / "ablation.md").read_text()
    assert "Chosen recipes" in report and "95% t-interval" in report and "eval SD" in report
    # memorization: the final run's copying figures, and the data itself as the generator
    (figures,) = (out / "runs" / "cwgan_gp+cwgan_gp__seed0" / "ablation_memorization").glob("step-*.json")
    res = json.loads(figures.read_text())
    assert 0 <= res["copy_fraction"] <= 1 and res["nn_ratio"] > 0 and "fid" not in res
    rows = json.loads((out / "reference_rows.json").read_text())
    # the preset's reference is the held-out split: copying the training set does not score 0
    assert set(rows) == {"train"} and rows["train"]["images"] == 1437 and 0.2 < rows["train"]["fd_digits"] < 2
    assert "| the training images themselves (pure copying) (1,437) | | 0.00 | 1.00 |" in report
    assert f"| cwgan_gp+cwgan_gp | 1 | {res['nn_ratio']:.3f} | {res['copy_fraction']:.3f} | |" in report

    said.clear()
    run_ablation(args, echo=said.append)  # every trial and run finished: nothing trains again
    (study,) = _journal_trials(out).values()
    assert len(study.trials) == 2
    assert not any("tuning cwgan_gp+cwgan_gp: trial" in s or "rung" in s for s in said)
    assert any("finished earlier, not rerun" in s for s in said)
    attempts = (out / "runs" / "cwgan_gp+cwgan_gp__seed0" / "ablation_attempts.jsonl").read_text().splitlines()
    assert len(attempts) == 1

    # another search space on the same folder belongs to another tuning: refused
    with pytest.raises(AblationError, match="another search space"):
        run_ablation([*args[:-1], "tuning.space={train.lr_g:[1.0e-4,1.0e-3]}"], echo=said.append)


def test_curve_bands_are_the_sample_std_over_seeds():
    from transgan.ablation.report import mean_curves

    curves = [{"cell": "a", "seed": s, "step": k, "images_seen": 8 * k, "train_s": k, "metric_value": v}
              for s, vs in enumerate(([9.0, 5.0], [7.0, 4.0], [8.0, 6.5])) for k, v in zip((1, 2), vs)]
    first, last = mean_curves(curves)["a"]
    assert first["metric_std"] == pytest.approx(statistics.stdev([9.0, 7.0, 8.0]))
    assert last["metric_value"] == pytest.approx(statistics.fmean([5.0, 4.0, 6.5]))


def test_an_interrupted_trial_is_asked_again_with_its_parameters_and_finished_ones_are_kept(tmp_path):
    from transgan.ablation.tuning import tune

    cfg = compose_ablation(["experiment=ablation_digits_tuned", f"out_dir={tmp_path / 'abl'}", "tuning.trials=2",
                            "tuning.method=tpe", "cells=[{generator:cwgan_gp,discriminator:cwgan_gp}]"])
    calls: list[list[str]] = []

    def interrupted(trial_cfg, cells):
        calls.append(list(trial_cfg.extra_args))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process stops in the second trial's run
        return [{"metric_value": 5.0}]

    with pytest.raises(KeyboardInterrupt):
        tune(cfg, interrupted, echo=lambda m: None)
    (study,) = _journal_trials(tmp_path / "abl").values()
    assert [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING"]

    def finishing(trial_cfg, cells):
        calls.append(list(trial_cfg.extra_args))
        return [{"metric_value": 3.0}]

    recipes = tune(cfg, finishing, echo=lambda m: None)
    assert len(calls) == 3 and calls[2] == calls[1]  # only the interrupted trial again, same recipe (its run resumes)
    (study,) = _journal_trials(tmp_path / "abl").values()
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert len(counted_trials(study)) == 2 and recipes["cwgan_gp+cwgan_gp"]["value"] == 3.0


def test_only_names_cells_of_the_grid():
    with pytest.raises(AblationError, match=r"only names \['stylegan2\+cwgan_gp'\]"):
        run_ablation(["experiment=ablation_digits_tuned", "only=[stylegan2+cwgan_gp]"], dry_run=True)


def test_a_grid_run_in_parts_is_reported_whole_without_rerunning_a_part(tmp_path):
    out = tmp_path / "abl"
    cells = ["cwgan_gp+cwgan_gp", "transgan+cwgan_gp"]
    args = ["experiment=ablation_digits_tuned", f"out_dir={out}", "seeds=[0]", "launcher=[python]",
            "budget.value=16", "eval.points=1", "tuning.trials=1", "tuning.seeds=[7]", "tuning.budget.value=16",
            "tuning.method=tpe", "eval.noise_seeds=0", "eval.memorization=false",  # (tested elsewhere)
            "cells=[{generator:cwgan_gp,discriminator:cwgan_gp},{generator:transgan,discriminator:cwgan_gp}]",
            "contrasts=[]", "extra_args=['eval.num_samples=30','train.log_every=1','train.cpu_threads=1']",
            "tuning.space={loss:{wgan_gp:{gp_weight:[1.0,10.0]}},train.lr_g:[1.0e-4,1.0e-3],"
            "train.n_critic:[1],train.batch_size:[8]}"]
    for part in cells:  # the parts (side by side on a real machine; one after the other here)
        said: list[str] = []
        run_ablation([*args, f"only=[{part}]"], echo=said.append)
        assert any(f"tuning {part}: trial" in s for s in said)
        assert not any(f"tuning {other}: trial" in m for other in cells if other != part for m in said)
        assert not (out / "ablation.md").exists() and not (out / "tuning" / "recipes.json").exists()
    studies = _journal_trials(out)
    assert sorted(studies) == cells and all(len(counted_trials(s)) == 1 for s in studies.values())

    said = []
    run_ablation(args, echo=said.append)  # the whole grid: nothing trains again, the report covers both cells
    assert not any(": trial" in s for s in said)
    assert sum("finished earlier, not rerun" in s for s in said) == 2  # the 2 final runs
    recipes = json.loads((out / "tuning" / "recipes.json").read_text())
    assert {k: v["value"] for k, v in recipes.items()} == {k: s.best_value for k, s in studies.items()}
    report = (out / "ablation.md").read_text()
    assert all(c in report for c in cells)


def test_the_report_header_gives_each_tuned_cell_its_own_schedule(tmp_path):
    from transgan.ablation.grid import Cell
    from transgan.ablation.run import report_header

    cfg = OmegaConf.create({"name": "g", "seeds": [0, 1], "budget": {"kind": "images", "value": 9600}})

    def cell(label: str, seed: int, steps: int, batch: int, k: int) -> Cell:
        train = {"max_steps": steps, "batch_size": batch, "n_critic": k}
        return Cell(label, seed, [], OmegaConf.create({"train": train}), tmp_path / f"{label}{seed}")

    # 9,600 images = 100 steps of 32 x 3 D steps, or 150 steps of 64 x 1: the first cell's schedule is not the grid's
    tuned = [cell("a", 0, 100, 32, 3), cell("a", 1, 100, 32, 3), cell("b", 0, 150, 64, 1), cell("b", 1, 150, 64, 1)]
    assert report_header(cfg, tuned) == ("Ablation `g`: images budget 9600 per run (a: 100 steps of batch 32, n_critic 3; "
                                         "b: 150 steps of batch 64, n_critic 1); seeds [0, 1]; mean ± sample std over seeds")
    shared = [cell("a", 0, 100, 32, 3), cell("b", 0, 100, 32, 3)]
    assert report_header(cfg, shared) == ("Ablation `g`: images budget 9600 per run (100 steps of batch 32, n_critic 3); "
                                          "seeds [0, 1]; mean ± sample std over seeds")


def test_a_tied_loss_key_draws_one_value_for_both():
    from transgan.ablation.tuning import suggest

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = OmegaConf.create({"loss": {"rpgan_r1r2": {"r1_gamma+r2_gamma": [0.01, 1.0]}}})
    recipe = suggest(study.ask(), space)
    assert recipe[0] == "loss=rpgan_r1r2"
    (r1,), (r2,) = [[o.split("=")[1] for o in recipe if o.startswith(f"loss.{k}=")] for k in ("r1_gamma", "r2_gamma")]
    assert r1 == r2 and 0.01 <= float(r1) <= 1.0


def test_equal_g_images_gives_g_as_many_generated_images_as_d_real_ones_in_every_tuned_cell():
    cfg = compose_ablation(["experiment=ablation_digits_tuned", "budget.g_images=equal"])
    recipes = {f"{c.generator}+{c.discriminator}": {"recipe": ["loss=ns_r1", "train.batch_size=32", "train.n_critic=1"]}
               for c in cfg.cells}
    recipes["cwgan_gp+cwgan_gp"] = {"recipe": ["loss=wgan_gp", "train.batch_size=64", "train.n_critic=3"]}
    for c in final_plan(cfg, recipes):
        t = c.cfg.train
        d_images, g_images = t.max_steps * t.batch_size * t.n_critic, t.max_steps * t.batch_size_g
        assert g_images == d_images, c.label  # both the same count, whatever batch and n_critic the cell chose
        assert d_images - int(cfg.budget.value) < t.batch_size * t.n_critic  # the budget, to one step
    free = final_plan(compose_ablation(["experiment=ablation_digits_tuned", "budget.g_images=free"]), recipes)
    assert {c.cfg.train.batch_size_g for c in free} == {None}  # the default: G's batch is the cell's own
    with pytest.raises(AblationError, match="batch_size_g"):
        compose_ablation(["experiment=ablation_digits_tuned", "budget.g_images=equal",
                          "extra_args=['train.batch_size_g=16']"])


def test_the_width_matched_conv_generator_has_the_attention_generators_parameter_count():
    from transgan.commands.model_stats import model_stats

    base = ["model=cwgan_gp", "dataset=digits"]
    attention = model_stats([*base, "model/generator=transgan"], num_classes=10)["generator"]["parameters"]
    default = model_stats(base, num_classes=10)["generator"]["parameters"]
    matched = model_stats([*base, "model/generator=cwgan_gp_matched"], num_classes=10)["generator"]["parameters"]
    assert abs(matched / attention - 1) <= 0.10 and default / attention < 0.25, (default, matched, attention)


def test_successive_halving_promotes_the_best_third_and_trains_the_survivors_at_every_tuning_seed(tmp_path):
    from transgan.ablation.tuning import rung_plan, tune

    assert rung_plan(12, 3, 2, 4800, 48000) == [(12, 4800), (4, 14400), (2, 48000)]
    assert rung_plan(27, 3, 1, 100, 10000) == [(27, 100), (9, 300), (3, 900), (1, 10000)]
    cfg = compose_ablation(["experiment=ablation_digits_tuned", f"out_dir={tmp_path / 'abl'}",
                            "cells=[{generator:cwgan_gp,discriminator:cwgan_gp}]"])
    assert (cfg.tuning.method, cfg.tuning.trials, cfg.tuning.survivors) == ("halving", 12, 2)
    calls: list[tuple[str, float, tuple[int, ...]]] = []

    def score(recipe: str, images: float, seed: int) -> float:  # a recipe's quality, better with more images
        return (int(hashlib.sha256(recipe.encode()).hexdigest(), 16) % 1000) / 100 + 48000 / images + seed / 1000

    def run(trial_cfg, cells):
        recipe, images = " ".join(list(trial_cfg.extra_args)[-8:]), trial_cfg.budget.value
        calls.append((recipe, images, tuple(trial_cfg.seeds)))
        return [{"metric_value": score(recipe, images, seed)} for seed in trial_cfg.seeds]

    recipes = tune(cfg, run, echo=lambda m: None)
    first, second, last = calls[:12], calls[12:16], calls[16:]
    assert {(i, s) for _, i, s in first} == {(4800, (100,))} and len({r for r, _, _ in first}) == 12
    assert {(i, s) for _, i, s in second} == {(14400, (100,))} and {(i, s) for _, i, s in last} == {(48000, (100, 101))}
    rung0 = sorted(first, key=lambda c: score(c[0], 4800, 100))
    assert [r for r, _, _ in second] == [r for r, _, _ in rung0[:4]]  # the best 4 of 12, in order
    rung1 = sorted(second, key=lambda c: score(c[0], 14400, 100))
    assert sorted(r for r, _, _ in last) == sorted(r for r, _, _ in rung1[:2])
    finals = sorted(statistics.fmean(score(r, 48000, s) for s in (100, 101)) for r, _, _ in last)
    chosen = recipes["cwgan_gp+cwgan_gp"]
    assert (chosen["value"], chosen["second"], chosen["trials"]) == (pytest.approx(finals[0]), pytest.approx(finals[1]), 12)

    calls.clear()
    assert tune(cfg, run, echo=lambda m: None) == recipes and not calls  # every rung written down: nothing reruns


def test_the_stacked_digits_preset_is_the_digits_one_on_1000_unconditional_modes():
    from transgan.ablation.grid import cell_specs, plan_grid

    digits = compose_ablation(["experiment=ablation_digits_tuned"])
    stacked = compose_ablation(["experiment=ablation_stacked_digits_tuned"])
    check_tuning(stacked)
    assert cell_specs(stacked) == cell_specs(digits) and stacked.contrasts == digits.contrasts
    assert stacked.tuning == digits.tuning and stacked.seeds == digits.seeds and stacked.budget == digits.budget
    cells = plan_grid(stacked)
    data = {(c.cfg.dataset.name, c.cfg.dataset.channels, c.cfg.dataset.conditional) for c in cells}
    assert data == {("stacked_digits", 3, False)} and stacked.eval.metric == "modes_kl"
    assert {c.cfg.eval.num_samples for c in cells} == {10000}
