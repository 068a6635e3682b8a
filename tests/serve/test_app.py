"""The web app over a real socket: JSON and PNG API, validation, no reachable server paths, concurrency, load test."""

from __future__ import annotations

import base64
import http.client
import io
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import load_tool
from tests.eval.run_fixtures import STYLE_CONFIG, tiny_math_attention_run, tiny_style_generator
from tests.serve.conftest import LIMITS
from transgan.errors import ConfigError
from transgan.eval.generate import sample
from transgan.eval.sampling import to_rgb, to_uint8
from transgan.runs.export import GeneratorInfo, LoadedGenerator
from transgan.serve.app import create_app
from transgan.serve.loadtest import percentile, run_load_test
from transgan.serve.server import BackgroundServer, is_loopback_url


def call(url: str, body: dict | None = None, method: str | None = None) -> tuple[int, bytes, dict]:
    """One HTTP request; (status, body, headers) also for 4xx answers."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def decode(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))


def expected_pixels(G, seeds, classes, truncation=None) -> np.ndarray:
    """What the library makes for these seeds, as the uint8 arrays a PNG holds ([N, H, W] for gray)."""
    return to_uint8(sample(G, seeds, classes, truncation)).permute(0, 2, 3, 1).squeeze(-1).numpy()


def test_info_page_and_json_api_serve_the_models_images(digits_server, digits_model):
    status, body, _ = call(digits_server.url + "api/info")
    info = json.loads(body)
    assert status == 200 and [c["name"] for c in info["classes"]] == [str(d) for d in range(10)]
    assert info["truncation"]["kind"] == "z_threshold" and info["limits"]["max_count"] == LIMITS.max_count
    status, page, headers = call(digits_server.url)
    assert status == 200 and b'<select id="class"' in page and b">7</option>" in page
    assert "script-src 'self'" in headers["content-security-policy"]

    status, body, _ = call(digits_server.url + "api/generate", {"class": 7, "seed": 40, "count": 3, "truncation": 1.2})
    result = json.loads(body)
    assert status == 200 and [(i["seed"], i["class"], i["class_name"]) for i in result["images"]] == \
        [(40, 7, "7"), (41, 7, "7"), (42, 7, "7")]
    got = np.stack([decode(i["png"]) for i in result["images"]])
    assert np.array_equal(got, expected_pixels(digits_model.G, [40, 41, 42], [7, 7, 7], 1.2))
    by_name = json.loads(call(digits_server.url + "api/generate", {"class": "7", "seed": 41, "truncation": 1.2})[1])
    assert np.array_equal(decode(by_name["images"][0]["png"]), expected_pixels(digits_model.G, [41], [7], 1.2)[0])


def test_png_api_returns_a_grid_of_the_same_images(digits_server, digits_model):
    status, body, headers = call(digits_server.url + "api/generate.png?class=2&seed=5&count=4&cols=2&size=32")
    assert status == 200 and headers["content-type"] == "image/png"
    grid = np.asarray(Image.open(io.BytesIO(body)))
    assert grid.shape == (2 * 32 + 3 * 2, 2 * 32 + 3 * 2, 3)
    images = to_rgb(to_uint8(sample(digits_model.G, [5, 6, 7, 8], [2] * 4)))
    big = torch.nn.functional.interpolate(images.float(), size=(32, 32), mode="nearest").to(torch.uint8)
    assert np.array_equal(grid[2:34, 36:68], big[1].permute(1, 2, 0).numpy())  # row 0, column 1: seed 6


BAD_JSON = [
    ({"class": 10}, "class: must be a class index 0..9"),
    ({"class": -1}, "class: must be a class index 0..9"),
    ({"class": "horse"}, "class: must be a class index 0..9 or a class name"),
    ({}, "class: choose a class"),
    ({"class": 1, "count": 0}, "count"),
    ({"class": 1, "count": LIMITS.max_count + 1}, f"count: must be at most {LIMITS.max_count}"),
    ({"class": 1, "size": 4}, "size: must be in"),
    ({"class": 1, "size": 4096}, "size: must be in"),
    ({"class": 1, "seed": -1}, "seed"),
    ({"class": 1, "seed": 2**31}, "seed"),
    ({"class": 1, "seed": 1.5}, "seed"),
    ({"class": 1, "seed": "abc"}, "seed"),
    ({"class": 1, "seed": True}, "seed"),
    ({"class": 1, "seed": None}, "seed"),
    ({"class": 1, "truncation": 0.01}, "truncation: the |z| threshold must be in"),
    ({"class": 1, "truncation": "high"}, "truncation"),
    ({"class": 1, "path": "/etc/passwd"}, "an unknown field (the fields are class, seed"),
    ({"class": [1]}, "class"),
]


@pytest.mark.parametrize("body,message", BAD_JSON, ids=[json.dumps(b) for b, _ in BAD_JSON])
def test_every_bad_json_request_gets_422_with_a_message(digits_server, body, message):
    status, answer, _ = call(digits_server.url + "api/generate", body)
    assert status == 422, answer
    detail = json.loads(answer)["detail"]
    assert message in detail
    # the field and its rule, never what was sent
    assert not any(str(v) in detail for k, v in body.items() if k != "class" or str(v) not in "0123456789")
    assert "horse" not in detail and "/etc/passwd" not in detail and "path" not in detail


def test_bad_query_parameters_and_bodies_get_4xx(digits_server):
    for query, message in [("class=11", "class: must be a class index"), ("class=1&seed=x", "seed"),
                           ("class=1&cols=99", "cols"), ("class=1&file=../x", "an unknown field"),
                           ("class=1&truncation=nan", "truncation")]:
        status, answer, _ = call(digits_server.url + "api/generate.png?" + query)
        assert status == 422 and message in json.loads(answer)["detail"], (query, answer)
    request = urllib.request.Request(digits_server.url + "api/generate", data=b"{not json",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=30)
    assert e.value.code == 422
    assert call(digits_server.url + "api/generate", method="GET")[0] == 405


def test_no_server_file_is_reachable(digits_server):
    app_paths = [r.path for r in digits_server.server.config.app.routes]
    assert not any("{" in p for p in app_paths)  # no route takes a path parameter
    for path in ["../../etc/passwd", "static/../../../etc/passwd", "static/%2e%2e/%2e%2e/etc/passwd",
                 "static/app.py", "api/../../etc/passwd", "docs", "redoc", "%2fetc%2fpasswd", "..%2f..%2fetc%2fpasswd"]:
        status, body, _ = call(digits_server.url + path)
        assert status == 404 and b"root:" not in body, path


def test_concurrent_requests_each_get_their_own_images(digits_server, digits_model):
    results: dict[int, np.ndarray] = {}

    def client(k: int) -> None:
        _, body, _ = call(digits_server.url + "api/generate", {"class": k, "seed": 100 + k, "count": 2})
        results[k] = np.stack([decode(i["png"]) for i in json.loads(body)["images"]])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(8):
        assert np.array_equal(results[k], expected_pixels(digits_model.G, [100 + k, 101 + k], [k, k]))


def test_unconditional_style_model_takes_psi_and_refuses_a_class():
    G = tiny_style_generator(num_classes=0)
    info = GeneratorInfo(generator=dict(STYLE_CONFIG), img_resolution=16, img_channels=3, num_classes=0)
    with BackgroundServer(create_app(LoadedGenerator(G, info))) as server:
        described = json.loads(call(server.url + "api/info")[1])
        assert described["classes"] == [] and described["truncation"]["kind"] == "psi"
        status, page, _ = call(server.url)
        assert status == 200 and b'id="class"' not in page
        status, body, _ = call(server.url + "api/generate", {"seed": 3, "count": 2, "truncation": 0.5})
        got = np.stack([decode(i["png"]) for i in json.loads(body)["images"]])
        expected = to_uint8(sample(G, [3, 4], [None, None], 0.5)).permute(0, 2, 3, 1).numpy()
        assert status == 200 and np.array_equal(got, expected)
        status, body, _ = call(server.url + "api/generate", {"class": 0})
        assert status == 422 and "unconditional" in json.loads(body)["detail"]
        status, body, _ = call(server.url + "api/generate", {"truncation": 1.5})
        assert status == 422 and "truncation: the psi must be in [0.0, 1.0]" in json.loads(body)["detail"]


def test_load_test_counts_requests_latencies_and_refuses_other_hosts(digits_server):
    result = run_load_test(digits_server.url, requests=24, clients=4, images_per_request=2)
    assert (result.completed, result.errors, result.not_sent) == (24, 0, 0)
    assert 0 < result.p50_ms <= result.p95_ms <= result.max_ms and result.images_per_s > 0
    assert "OK: 0 errors" in result.summary()
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == float(np.percentile([1, 2, 3, 4], 50))
    assert percentile([5.0, 1.0, 9.0, 3.0, 7.0], 95) == float(np.percentile([5, 1, 9, 3, 7], 95))
    for url in ("http://example.com/", "http://10.0.0.1:8000/", "file:///etc/passwd"):
        assert not is_loopback_url(url)
        with pytest.raises(ConfigError, match="loopback"):
            run_load_test(url, requests=1)
    with pytest.raises(ConfigError, match="requests"):
        run_load_test(digits_server.url, requests=10**6)


def post_raw(url: str, data: bytes, headers: dict | None = None) -> tuple[int, bytes, dict]:
    """POST raw bytes (JSON content type unless told otherwise); (status, body, headers) also for 4xx."""
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers=headers if headers is not None else {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


HOSTILE_JSON = [
    ('{"class": "\u00b2"}', "class: must be a class index"),  # superscript two: isdigit() but not int()
    ('{"class": "\u2460"}', "class: must be a class index"),  # circled one
    ('{"class": "' + "7" * 5000 + '"}', "class: must be a class index"),
    ('{"class": ' + "7" * 5000 + "}", "number out of range"),
    ('{"class": 1, "count": ' + "9" * 5000 + "}", "number out of range"),
    ('{"class_": 1}', "an unknown field"),
    ('{"class": 1, "seed": "5"}', "seed"),
    ('{"class": 1, "count": "2"}', "count"),
    ('{"class": 1, "truncation": true}', "truncation"),
    ('{"class": 1, "truncation": "1.5"}', "truncation"),
    ("[" * 5000 + "]" * 5000, "not valid JSON"),
    ("class=1&seed=2", "not valid JSON"),
    ("", "not valid JSON"),
    ('{"class": 1, "x": ' + "[" * 3000 + "]" * 3000 + "}", "not valid JSON"),
]


@pytest.mark.parametrize("body,message", HOSTILE_JSON, ids=[b[:30] for b, _ in HOSTILE_JSON])
def test_hostile_json_gets_a_short_422_that_does_not_echo_the_input(digits_server, body, message):
    status, answer, _ = post_raw(digits_server.url + "api/generate", body.encode())
    assert status == 422, answer[:300]
    detail = json.loads(answer)["detail"]
    assert message in detail and len(detail) < 400 and "7" * 60 not in detail and "9" * 60 not in detail


def test_hostile_query_parameters_get_422(digits_server):
    for query, message in [("class=%C2%B2", "class: must be"), ("class=%E2%91%A0", "class: must be"),
                           ("class=" + "7" * 2000, "class: must be"), ("class=1&seed=1&seed=2", "repeated"),
                           ("class=1&class=2", "repeated"), ("class=1&count=" + "9" * 2000, "count")]:
        status, answer, _ = call(digits_server.url + "api/generate.png?" + query)
        assert status == 422, (query[:40], answer[:300])
        detail = json.loads(answer)["detail"]
        assert message in detail and len(detail) < 400 and "7" * 60 not in detail, (query[:40], detail)


def send_body_start(server, headers: dict, data: bytes) -> tuple[int, bytes]:
    """Send a POST's headers and the first bytes of its body, then read the answer without sending the rest."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
    connection.putrequest("POST", "/api/generate")
    for key, value in {"Content-Type": "application/json", **headers}.items():
        connection.putheader(key, value)
    connection.endheaders()
    connection.send(data)
    response = connection.getresponse()
    try:
        return response.status, response.read()
    finally:
        connection.close()


def test_oversized_bodies_and_queries_are_refused_before_parsing(digits_server):
    # Refused by its Content-Length alone: the server answers before any of the 10 MB is sent.
    status, answer = send_body_start(digits_server, {"Content-Length": str(10**7)}, b"")
    assert status == 413 and b"too large" in answer
    # Streamed without a Content-Length (chunked): refused once the bytes received pass the limit.
    chunk = b"a" * 8192
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(LIMITS.max_body_bytes // 8192 + 1))
    status, answer = send_body_start(digits_server, {"Transfer-Encoding": "chunked"}, chunks)
    assert status == 413 and b"too large" in answer and b"aaaa" not in answer
    status, answer, _ = call(digits_server.url + "api/generate.png?class=1&x=" + "a" * 4000)
    assert status == 414 and b"aaaa" not in answer
    # Just under the limits still works.
    assert post_raw(digits_server.url + "api/generate", b'{"class": 1}' + b" " * 60000)[0] == 200
    assert call(digits_server.url + "api/generate.png?class=1&size=16&" + "seed=0&" * 1)[0] == 200


@pytest.fixture(scope="module")
def serve_tool():
    return load_tool("serve")


def test_serving_a_math_run_generates_with_math_unless_overridden(tmp_path_factory, serve_tool, kernels_run):
    run = str(tiny_math_attention_run(tmp_path_factory))
    for argv, kernel in (([run], "math"), ([run, "model.attention=chunked"], "chunked")):
        app = serve_tool.build_app(serve_tool.parse_args(argv))
        assert app.state.service.G.attention_kernel == kernel
        kernels_run.clear()
        with BackgroundServer(app) as server:
            status, body, _ = call(server.url + "api/generate", {"class": 3, "seed": 0, "count": 2})
        assert status == 200 and len(json.loads(body)["images"]) == 2
        assert kernels_run and set(kernels_run) == {kernel}
