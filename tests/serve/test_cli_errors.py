"""tools/generate.py and tools/serve.py: every failure is one `error:` line and exit status 2, no traceback."""

from __future__ import annotations

import json
import shutil
import socket
import time

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import load_tool
from tests.eval.run_fixtures import tiny_digits_run
from transgan.runs.checkpoint import latest_checkpoint


@pytest.fixture(scope="module")
def generate_tool(repo_root):
    return load_tool("generate")


@pytest.fixture(scope="module")
def serve_tool(repo_root):
    return load_tool("serve")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_digits_run(tmp_path_factory)


@pytest.fixture(scope="module")
def export_dir(run_dir, generate_tool, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "exp"
    assert generate_tool.main(["export", str(run_dir), "--out", str(out)]) == 0
    return out


def one_error(capsys, status: int, *fragments: str) -> str:
    """Assert exit status 2 and exactly one stderr line, `error: ...`, holding each fragment."""
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def edited_export(export_dir, tmp_path, **changes):
    """A copy of the export whose generator.json has ``changes`` (generator.<key> for the generator's options)."""
    out = tmp_path / "edited"
    shutil.copytree(export_dir, out)
    data = json.loads((out / "generator.json").read_text())
    for key, value in changes.items():
        if key.startswith("generator_"):
            data["generator"][key[len("generator_"):]] = value
        else:
            data[key] = value
    (out / "generator.json").write_text(json.dumps(data))
    return out


@pytest.mark.parametrize("changes,message", [
    ({"num_classes": 1e9}, "num_classes must be an integer"),
    ({"num_classes": 10**9}, "num_classes must be an integer in 0..100000"),
    ({"generator_z_dim": 10**9}, "GiB of weights"),
    ({"img_resolution": "32"}, "img_resolution must be an integer"),
    ({"generator_channel_base": "wide"}, "cannot be built"),
    ({"generator_z_dim": 65}, "does not fit the generator"),
], ids=["num_classes_float", "num_classes_huge", "z_dim_huge", "string_resolution", "string_option", "z_dim_wrong"])
def test_export_sizes_are_validated_before_allocation(generate_tool, export_dir, tmp_path, capsys, changes, message):
    source = edited_export(export_dir, tmp_path, **changes)
    start = time.perf_counter()
    one_error(capsys, generate_tool.main(["images", str(source), "--classes", "1", "--seeds", "0"]), message)
    assert time.perf_counter() - start < 20  # refused, not allocated (z_dim 1e9 would be 4 TB)


def test_corrupt_or_truncated_safetensors_is_a_clean_error(generate_tool, export_dir, tmp_path, capsys):
    weights = export_dir / "generator.safetensors"
    truncated = tmp_path / "truncated"
    shutil.copytree(export_dir, truncated)
    (truncated / "generator.safetensors").write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    one_error(capsys, generate_tool.main(["images", str(truncated), "--classes", "1"]), "corrupt or truncated")
    garbage = tmp_path / "alone.safetensors"  # no JSON beside it: the header itself is read
    garbage.write_bytes(b"\xff" * 64)
    one_error(capsys, generate_tool.main(["images", str(garbage), "--classes", "1"]), "corrupt or truncated")


def test_checkpoint_whose_config_does_not_fit_its_weights(generate_tool, run_dir, tmp_path, capsys):
    state = torch.load(latest_checkpoint(run_dir), map_location="cpu", weights_only=True)
    cfg = OmegaConf.create(state["config"])  # the run's config as recorded (YAML text)
    cfg.model.generator.channel_max = 8  # narrower than the weights
    state["config"] = OmegaConf.to_yaml(cfg) if isinstance(state["config"], str) else OmegaConf.to_container(cfg)
    bad = tmp_path / "mismatch.pt"
    torch.save(state, bad)
    one_error(capsys, generate_tool.main(["images", str(bad), "--classes", "1"]), "do not fit")


def test_run_directory_without_a_checkpoint_does_not_talk_of_resuming(generate_tool, run_dir, tmp_path, capsys):
    empty = tmp_path / "fresh_run"
    empty.mkdir()
    shutil.copy(run_dir / "config.yaml", empty / "config.yaml")
    err = one_error(capsys, generate_tool.main(["images", str(empty)]), "without a checkpoint", "train it first")
    assert "resume" not in err


@pytest.mark.parametrize("size", ["0", "-5", "100000"])
def test_generate_size_out_of_range(generate_tool, run_dir, capsys, size):
    one_error(capsys, generate_tool.main(["images", str(run_dir), "--size", size]), "--size must be in 1..4096")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present here")
def test_unavailable_device_is_refused_before_loading(generate_tool, serve_tool, tmp_path, capsys):
    missing = str(tmp_path / "missing")  # the device is checked first: the source is never looked at
    one_error(capsys, generate_tool.main(["images", missing, "--device", "cuda"]), "--device cuda", "no such CUDA")
    one_error(capsys, generate_tool.main(["images", missing, "--device", "tpu9"]), "not a torch device")
    one_error(capsys, serve_tool.main([missing, "--device", "cuda:1", "--port", "0"]), "--device cuda:1")


def test_export_refuses_an_existing_export_or_file_unless_forced(generate_tool, run_dir, export_dir, tmp_path, capsys):
    before = (export_dir / "generator.safetensors").stat().st_mtime_ns
    one_error(capsys, generate_tool.main(["export", str(run_dir), "--out", str(export_dir)]), "--force")
    assert (export_dir / "generator.safetensors").stat().st_mtime_ns == before
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    one_error(capsys, generate_tool.main(["export", str(run_dir), "--out", str(a_file)]), "is a file")
    assert a_file.read_text() == "keep me"
    again = tmp_path / "again"
    shutil.copytree(export_dir, again)
    assert generate_tool.main(["export", str(run_dir), "--out", str(again), "--force"]) == 0


def test_serve_refuses_a_taken_port_before_loading_the_model(serve_tool, tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # The source does not exist: reaching the model load would give a different message.
        status = serve_tool.main([str(tmp_path / "missing"), "--port", str(port)])
    one_error(capsys, status, f"cannot listen on 127.0.0.1:{port}", "--port")


def test_serve_refuses_a_wildcard_host_without_allowed_hosts(serve_tool, tmp_path, capsys):
    one_error(capsys, serve_tool.main([str(tmp_path / "missing"), "--host", "0.0.0.0"]), "--allowed-host")


@pytest.mark.parametrize("flag, value", [("--max-head-kib", "2"), ("--max-count", "0"), ("--batch", "300")])
def test_serve_refuses_an_out_of_range_limit_before_loading_the_model(serve_tool, tmp_path, capsys, flag, value):
    one_error(capsys, serve_tool.main([str(tmp_path / "missing"), flag, value]), f"{flag} must be in")


@pytest.mark.parametrize("out", ["grid.noext", "grid.jpgx", "/dev/null", "FOLDER"])
def test_generate_refuses_an_output_it_cannot_write_with_one_line(run_dir, generate_tool, tmp_path, capsys, out):
    target = str(tmp_path) if out == "FOLDER" else out if out.startswith("/") else str(tmp_path / out)
    assert generate_tool.main(["images", str(run_dir), "--seeds", "0", "--out", target]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --out") and "Traceback" not in err[0]


def test_ctrl_c_stops_the_server_with_status_130_and_no_traceback(run_dir, repo_root, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    proc = subprocess.Popen([sys.executable, "-m", "transgan.commands.serve", str(run_dir), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "serving on" in line, line + proc.stderr.read()
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]


def test_non_finite_weights_are_refused_naming_the_tensor(generate_tool, serve_tool, run_dir, export_dir, tmp_path,
                                                          capsys):
    """A NaN in an export or a checkpoint: generate, serve and eval each stop with one line naming the tensor."""
    from safetensors.torch import load_file, save_file

    from tests.conftest import load_tool

    damaged = tmp_path / "damaged"
    shutil.copytree(export_dir, damaged)
    weights = load_file(damaged / "generator.safetensors")
    name = sorted(k for k, v in weights.items() if v.is_floating_point())[0]
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, damaged / "generator.safetensors")
    one_error(capsys, generate_tool.main(["images", str(damaged), "--classes", "1"]), name, "non-finite")
    one_error(capsys, serve_tool.main([str(damaged), "--port", "0"]), name, "non-finite")
    state = torch.load(latest_checkpoint(run_dir), map_location="cpu", weights_only=True)
    state["G_ema"][name].view(-1)[0] = float("inf")
    bad = tmp_path / "inf.pt"
    torch.save(state, bad)
    one_error(capsys, generate_tool.main(["images", str(bad), "--classes", "1"]), f"G_ema: {name} holds 1",
              "non-finite")
    one_error(capsys, load_tool("eval").main([str(bad), "eval.num_samples=8"]), name, "non-finite")
