"""One command-line style: config keys as key=value in every command, process options as --flags, --help."""

from __future__ import annotations

import importlib

import pytest

from transgan.cli import CommandLine, is_override
from transgan.errors import ConfigError

COMMANDS = ["train", "eval", "generate", "serve", "ablate", "model_stats", "load_test", "convert"]


@pytest.mark.parametrize("name", COMMANDS)
def test_help_of_every_command_exits_0_and_lists_its_keys_and_flags(name, capsys):
    module = importlib.import_module(f"transgan.commands.{name}")
    assert module.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "-h, --help" in out
    keys = module.command_line().keys
    if keys:
        assert "config keys (key=value):" in out
        assert all(f"  {k}=" in out for k in keys)
    if name in ("train", "eval", "generate", "serve"):
        assert "model.attention" in out  # the one spelling of the kernel setting
    assert "--attention" not in out


@pytest.mark.parametrize("name, argv", [
    ("eval", ["runs/x"]), ("generate", ["images", "runs/x"]), ("serve", ["runs/x"]), ("train", []),
])
def test_the_same_override_is_taken_by_train_eval_generate_and_serve(name, argv):
    cli = importlib.import_module(f"transgan.commands.{name}").command_line()
    _, overrides = cli.parse([*argv, "model.attention=math"])
    assert overrides == ["model.attention=math"]
    with pytest.raises(ConfigError, match=r"model.attention must be one of .*'flash'"):
        cli.parse([*argv, "model.attention=flash"])


@pytest.mark.parametrize("name, argv", [("eval", ["runs/x"]), ("serve", ["runs/x"]),
                                        ("generate", ["images", "runs/x"])])
def test_a_key_a_command_does_not_take_and_an_unknown_flag_are_one_error_line(name, argv, capsys):
    module = importlib.import_module(f"transgan.commands.{name}")
    assert module.main([*argv, "train.lr_g=1"]) == 2
    assert module.main([*argv, "--attention", "math"]) == 2  # the old spelling is gone, said clearly
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
    assert "takes no config key 'train.lr_g'" in err[0] and "unrecognized arguments: --attention" in err[1]


def test_train_refuses_a_bad_kernel_before_anything_is_written(tmp_path, capsys):
    from transgan.commands import train

    assert train.main(["model=cwgan_gp", "model.attention=flash", f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    assert "model.attention must be one of" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_kernel_key_names_every_kernel():
    from transgan.cli import ATTENTION_KEY
    from transgan.nn.attention import KERNELS

    assert all(k in ATTENTION_KEY["model.attention"] for k in KERNELS)


def test_overrides_are_told_from_paths_and_flags():
    assert is_override("model.attention=math") and is_override("+train.x=1") and is_override("model/generator=a")
    assert not is_override("/tmp/a=b") and not is_override("./a=b") and not is_override("--out=x")
    assert not is_override("runs/x")
    cli = CommandLine("tool", "a tool", {"eval.*": "protocol keys", "dataset": "a dataset"})
    assert cli.takes("eval.num_samples") and cli.takes("dataset") and not cli.takes("datasets")
