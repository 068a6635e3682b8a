"""Equal tuning per cell (Optuna), final seeds apart from tuning seeds, bootstrap intervals, no rerun of finished work."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import optuna
import pytest
from omegaconf import OmegaConf
from scipy import stats

from transgan.ablation import AblationError, compose_ablation, run_ablation
from transgan.ablation.report import bootstrap_ci, contrast, mean_curve, plateau_gain, statistics_section
from transgan.ablation.tuning import check_equal_tuning, check_tuning, counted_trials, final_plan


@pytest.fixture(autouse=True)
def _cpu_and_private_cache(tmp_path, monkeypatch):
    """Cells run on CPU and cache reference statistics under the test's folder."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("TRANSGAN_CACHE_DIR", str(tmp_path / "eval-cache"))


def test_tuned_preset_plans_six_cells_with_one_space_and_disjoint_seeds():
    cfg = compose_ablation(["experiment=ablation_digits_tuned"])
    check_tuning(cfg)
    assert cfg.tuning.trials >= 1 and not set(cfg.tuning.seeds) & set(cfg.seeds) and len(cfg.seeds) >= 3
    recipes = {f"{c.generator}+{c.discriminator}": {"recipe": ["loss=ns_r1", "train.batch_size=32", "train.n_critic=1"]}
               for c in cfg.cells}
    recipes["cwgan_gp+cwgan_gp"] = {"recipe": ["loss=wgan_gp", "train.batch_size=64", "train.n_critic=3"]}
    cells = final_plan(cfg, recipes)
    assert len(cells) == 18
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


def test_bootstrap_interval_equals_scipy_and_a_plain_numpy_resampling():
    x = [7.8, 6.9, 8.7, 7.1, 9.4]
    low, high = bootstrap_ci(x)
    ref = stats.bootstrap((x,), np.mean, confidence_level=0.95, n_resamples=9999, method="percentile",
                          random_state=0).confidence_interval
    assert (low, high) == pytest.approx((ref.low, ref.high), abs=1e-12)
    # independent: percentile interval of 20000 plain resampled means
    rng = np.random.default_rng(1)
    means = np.asarray(x)[rng.integers(0, len(x), (20000, len(x)))].mean(axis=1)
    assert (low, high) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), abs=0.05)
    assert low < statistics.fmean(x) < high
    assert all(math.isnan(v) for v in bootstrap_ci([3.0]))  # one value: no interval


def test_contrast_effect_size_test_and_interval():
    a, b = [3.1, 2.9, 3.3], [7.9, 7.1, 8.6]
    k = contrast(a, b)
    assert k["diff"] == pytest.approx(statistics.fmean(a) - statistics.fmean(b))
    pooled = math.sqrt((statistics.variance(a) + statistics.variance(b)) / 2)  # equal n
    assert k["d"] == pytest.approx(k["diff"] / pooled)
    assert k["p"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    ref = stats.bootstrap((a, b), lambda u, v, axis=-1: np.mean(u, axis=axis) - np.mean(v, axis=axis),
                          n_resamples=9999, method="percentile", random_state=0).confidence_interval
    assert (k["low"], k["high"]) == pytest.approx((ref.low, ref.high))


def test_plateau_gain_over_the_last_third():
    curve = [{"images_seen": i, "metric_value": v} for i, v in ((100, 20.0), (200, 10.0), (300, 9.0))]
    assert plateau_gain(curve) == pytest.approx((10.0 - 9.0) / 10.0)  # 10% gain after 2/3: not converged
    assert plateau_gain(curve, lower_better=False) == pytest.approx(-0.1)


def test_the_plateau_check_reads_the_cells_seed_mean_not_one_noisy_seed():
    # Seed 0 improves 30% over the last third, seed 1 gets 30% worse: the cell's mean is flat.
    curves = [{"cell": "a", "seed": s, "images_seen": i, "metric_value": v}
              for s, vals in ((0, (20.0, 10.0, 7.0)), (1, (20.0, 10.0, 13.0))) for i, v in zip((100, 200, 300), vals)]
    curves.append({"cell": "a", "seed": 2, "images_seen": 300, "metric_value": 1.0})  # a seed not in the rows
    assert mean_curve(curves, [0, 1]) == [{"images_seen": i, "metric_value": v}
                                          for i, v in ((100, 20.0), (200, 10.0), (300, 10.0))]
    rows = [{"cell": "a", "seed": s, "metric": "fd_digits", "metric_value": v} for s, v in ((0, 7.0), (1, 13.0))]
    table = statistics_section(rows, curves, ["a"], [])
    line = next(ln for ln in table.splitlines() if ln.startswith("| a |"))
    assert "| +0.0% | +30.0% | yes |" in line  # mean gain (10 - 10) / 10; largest seed (10 - 7) / 10
    curves[5]["metric_value"] = 11.0  # seed 1 now ends at 11: the mean goes 10 -> 9, a 10% gain
    line = next(ln for ln in statistics_section(rows, curves, ["a"], []).splitlines() if ln.startswith("| a |"))
    assert "| +10.0% | +30.0% | **no: not converged** |" in line


def _journal_trials(out):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(out / "tuning" / "optuna.journal")))
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
            for s in optuna.get_all_study_summaries(storage)}


def test_tuning_then_final_runs_with_fresh_seeds_and_nothing_rerun(tmp_path):
    out = tmp_path / "abl"
    args = ["experiment=ablation_digits_tuned", f"out_dir={out}", "seeds=[0]", "launcher=[python]",
            "budget.value=16", "eval.points=2", "tuning.trials=2", "tuning.seeds=[7]", "tuning.budget.value=16",
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
    assert chosen["value"] == min(t.value for t in counted_trials(study) if t.value is not None)
    trial_seeds = {OmegaConf.load(p).seed for p in (out / "tuning").glob("*/*/runs/*/config.yaml")}
    final = OmegaConf.load(out / "runs" / "cwgan_gp+cwgan_gp__seed0" / "config.yaml")
    assert trial_seeds == {7} and final.seed == 0  # the final seed never appears in tuning
    assert f"loss={final.loss.name}" in chosen["recipe"] and final.train.max_steps == 2
    report = (out / "ablation.md").read_text()
    assert "Chosen recipes" in report and "95% CI" in report

    said.clear()
    run_ablation(args, echo=said.append)  # every trial and run finished: nothing trains again
    (study,) = _journal_trials(out).values()
    assert len(study.trials) == 2
    assert not any("tuning cwgan_gp+cwgan_gp: trial" in s for s in said)
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
                            "cells=[{generator:cwgan_gp,discriminator:cwgan_gp}]"])
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
