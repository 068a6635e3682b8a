"""tools/load_test.py's new modes: the largest allowed request, latency under load, the HTTP ceiling,
and the batched-vs-unbatched comparison against two real tools/serve.py processes."""

from __future__ import annotations

import json

from tests.conftest import load_tool
from tests.serve.conftest import LIMITS
from transgan.serve.loadtest import get_info, largest_request, run_load_test, run_under_load


def test_largest_request_fills_the_pixel_budget():
    info = {"resolution": 32, "limits": {"max_count": 64, "max_size": 512, "max_request_pixels": 2**21}}
    assert largest_request(info) == (64, 181)  # 64 * 181^2 = 2,096,704 <= 2^21 < 64 * 182^2
    info["limits"]["max_request_pixels"] = 16 * 32**2  # not even 64 images at the model's own size
    assert largest_request(info) == (16, None)


def test_under_load_and_refused_modes(digits_server):
    under = run_under_load(digits_server.url, probes=5, clients=2)
    assert (under.large_count, under.large_size) == largest_request(get_info(digits_server.url))
    assert under.large_count == LIMITS.max_count
    assert under.probe.completed == 5 and under.probe.errors == 0 and under.load.errors == 0
    assert under.load.completed >= 1 and under.load.images_per_request == LIMITS.max_count
    refused = run_load_test(digits_server.url, requests=10, clients=2, refused=True)
    assert refused.completed == 10 and refused.errors == 0


def test_compare_batching_runs_both_servers_in_one_run(repo_root, tmp_path, capsys, digits_model, digits_server):
    from transgan.runs.export import export_generator

    export = export_generator(digits_model.G, digits_model.info, tmp_path / "exp")
    tool = load_tool("load_test")
    out = tmp_path / "results.json"
    # The session's running server stands in for a server of another version (--baseline-url).
    assert tool.main(["--source", str(export), "--compare-batching", "--requests", "16", "--clients", "4",
                      "--probes", "3", "--threads", "1", "--baseline-url", digits_server.url,
                      "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "unbatched server (--batch 1)" in printed and "batched / unbatched images/s" in printed
    assert f"baseline server ({digits_server.url})" in printed and "batched / baseline images/s" in printed
    results = json.loads(out.read_text())
    assert results["baseline"]["completed"] == results["unbatched"]["completed"] == results["batched"]["completed"] == 16
    assert results["under_load"]["probe"]["completed"] == 3 and results["http_ceiling"]["errors"] == 0
    assert results["speedup"] == results["batched"]["images_per_s"] / results["unbatched"]["images_per_s"]
    assert results["speedup_over_baseline"] == results["batched"]["images_per_s"] / results["baseline"]["images_per_s"]


def test_baseline_url_needs_compare_batching(digits_server, capsys):
    assert load_tool("load_test").main(["--url", digits_server.url, "--baseline-url", digits_server.url]) == 2
    assert "add --compare-batching" in capsys.readouterr().err


def test_a_url_where_nothing_listens_is_one_error_line(capsys):
    import socket

    with socket.socket() as sock:  # a free loopback port, closed again: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert load_tool("load_test").main(["--url", f"http://127.0.0.1:{port}/", "--requests", "2"]) == 2
    err = capsys.readouterr().err
    assert "error: no transgan app answers at" in err and "Traceback" not in err


def test_the_server_process_leaves_one_core_to_http_unless_told(tmp_path, digits_model):
    import subprocess
    import sys

    from transgan.commands.load_test import serve_process
    from transgan.runs.export import export_generator

    export = str(export_generator(digits_model.G, digits_model.info, tmp_path / "exp"))
    # torch's own choice in a fresh process (this test process's count may have been set by other tests)
    torch_default = int(subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                                       capture_output=True, text=True, check=True).stdout)
    with serve_process(export, batch=1, threads=None) as url:
        assert get_info(url)["torch_threads"] == max(1, torch_default - 1)
    with serve_process(export, batch=1, threads=3) as url:
        assert get_info(url)["torch_threads"] == 3
