"""A real server for the serving tests: uvicorn on a free loopback port, over the tiny digits run's G_ema."""

from __future__ import annotations

import pytest

from tests.eval.run_fixtures import tiny_digits_run
from transgan.runs.load import load_run
from transgan.serve.app import ServeLimits, create_app
from transgan.serve.server import BackgroundServer

LIMITS = ServeLimits(max_count=16, max_size=128)


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory):
    """The tiny digits run's G_ema with its info (10 classes named "0".."9")."""
    return load_run(tiny_digits_run(tmp_path_factory))


@pytest.fixture(scope="session")
def digits_server(digits_model):
    """The app on http://127.0.0.1:<free port>/, for the whole session."""
    with BackgroundServer(create_app(digits_model, LIMITS, title="Digits test")) as server:
        yield server
