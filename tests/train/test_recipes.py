"""Per-model training recipes (configs/recipes/<model>.yaml) and how they yield to the command line."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from transgan.errors import ConfigError
from transgan.train.config import CONFIG_DIR, TrainConfig, compose_config

RECIPES = sorted((CONFIG_DIR / "recipes").glob("*.yaml"))


def recipe_lines(path: Path) -> list[str]:
    return list(OmegaConf.load(path).overrides)


def value(cfg, key: str):
    return OmegaConf.select(cfg, key)


def test_the_default_model_is_swin_gan_with_its_recipe():
    cfg, _ = compose_config([])
    assert cfg.model.generator.name == "swin_gan" and cfg.model.discriminator.name == "stylegan2"
    assert cfg.recipe == "auto"
    assert cfg.loss.name == "ns_r1" and cfg.train.n_critic == 1


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_each_recipe_sets_exactly_what_it_lists(path):
    cfg, _ = compose_config([f"model={path.stem}"])
    plain, _ = compose_config([f"model={path.stem}", "recipe=none"])
    for line in recipe_lines(path):
        key, raw = line.split("=", 1)
        if "." not in key:  # a group choice
            assert value(cfg, key).name == raw
            continue
        expected = OmegaConf.from_dotlist([line])
        assert value(cfg, key) == OmegaConf.select(expected, key), line
    # keys the recipe does not name keep the plain composition's values
    assert cfg.train.max_steps == plain.train.max_steps and cfg.dataset == plain.dataset


def test_recipe_none_gives_the_trainer_defaults():
    cfg, _ = compose_config(["model=swin_gan", "recipe=none"])
    defaults = TrainConfig()
    assert cfg.loss.name == "wgan_gp"
    assert (cfg.train.n_critic, cfg.train.batch_size, cfg.train.lr_g) == (defaults.n_critic, defaults.batch_size, defaults.lr_g)


def test_a_key_on_the_command_line_beats_the_recipe_line_for_that_key_only():
    cfg, _ = compose_config(["model=swin_gan", "train.lr_g=3e-4"])
    assert cfg.train.lr_g == 3e-4
    assert cfg.train.lr_d == 1e-3 and cfg.loss.name == "ns_r1"


def test_choosing_a_group_drops_every_recipe_line_of_that_group():
    cfg, _ = compose_config(["model=swin_gan", "loss=ns_r1"])
    assert cfg.loss.r1_gamma == OmegaConf.load(CONFIG_DIR / "loss" / "ns_r1.yaml").r1_gamma  # not the recipe's
    assert cfg.train.n_critic == 1  # train lines still apply
    cfg, _ = compose_config(["model=swin_gan", "loss=hinge"])
    assert cfg.loss.name == "hinge" and cfg.loss.r1_gamma == 0.0


def test_an_experiment_preset_switches_recipes_off():
    cfg, _ = compose_config(["experiment=styleswin_paper", "model=swin_gan"])
    assert cfg.train.lr_g == 5e-5 and cfg.loss.r1_gamma == 2.04  # StyleSwin's 10 in [-1, 1] units


def test_a_model_without_a_recipe_composes_as_before():
    assert not (CONFIG_DIR / "recipes" / "cwgan_gp.yaml").exists()
    cfg, _ = compose_config(["model=cwgan_gp"])
    plain, _ = compose_config(["model=cwgan_gp", "recipe=none"])
    strip = lambda c: {k: v for k, v in OmegaConf.to_container(c).items() if k != "recipe"}  # noqa: E731
    assert strip(cfg) == strip(plain)


def test_a_bad_recipe_value_is_refused():
    with pytest.raises(ConfigError, match="recipe must be auto or none"):
        compose_config(["recipe=sometimes"])
