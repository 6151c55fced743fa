"""Shared fixtures: a small real router trained once per test session on bundled data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"


def _sample(path: Path, n: int) -> list:
    from training.logs import load_records

    records = load_records([path]).records
    step = max(len(records) // n, 1)
    return records[::step][:n]


@pytest.fixture(scope="session")
def sample_records() -> list:
    """~600 real records: RouterBench (11 models, real cost) and RouteLLM (2 models)."""
    return _sample(DATA / "routerbench.jsonl.gz", 300) + _sample(DATA / "routellm.jsonl.gz", 300)


@pytest.fixture(scope="session")
def catalog():
    from models.catalog import load_catalog

    return load_catalog()


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory, sample_records, catalog) -> Path:
    """A real artifact folder trained on `sample_records` with small settings (a few seconds)."""
    from models.artifact import save_router
    from training.trainer import TrainOptions, train

    # With idf weights (off by default): every serving test then runs the weighted feature row.
    opts = TrainOptions(
        c_grid=(0.3, 1.0), cv_folds=2, n_hash_features=2**12, n_jobs=1, idf_power=1.0
    )
    result = train(sample_records, catalog, opts)
    path = tmp_path_factory.mktemp("artifacts") / "tiny"
    save_router(
        result.router,
        path,
        catalog=catalog.to_dict(),
        training={"files": ["sample"], "data_sha256": "0" * 64},
        metrics=result.report,
    )
    return path


@pytest.fixture(scope="session")
def tiny_router(tiny_artifact):
    from models.artifact import load_router

    router, _manifest = load_router(tiny_artifact)
    return router


@pytest.fixture(scope="session")
def catalog_path(tmp_path_factory, tiny_router) -> Path:
    """The bundled catalog restricted to `tiny_router`'s models, as a YAML file."""
    import yaml

    from models.catalog import load_catalog

    data = load_catalog().to_dict(only=tiny_router.models)
    path = tmp_path_factory.mktemp("catalog") / "catalog.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- real browser
# Debian's chromium driven by playwright's Python package (no browser download). Without it the
# browser tests skip and say why; CI sets PROMPTROUTE_REQUIRE_BROWSER=1, which makes that a failure.
CHROMIUM = os.environ.get("PROMPTROUTE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium for this test module (module scope: playwright's sync API keeps an
    event loop of its own, which must not outlive the module into tests that run asyncio)."""
    reason = None
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "playwright is not installed (pip install -e '.[dev]')"
    if reason is not None:
        if os.environ.get("PROMPTROUTE_REQUIRE_BROWSER") == "1":
            pytest.fail(
                f"browser tests are required here (PROMPTROUTE_REQUIRE_BROWSER=1): {reason}"
            )
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


class RedisServer:
    """A real `redis-server` on a free loopback port, with no persistence; `stop`/`start`
    simulate an outage on the same port."""

    def __init__(self, binary: str, folder: Path) -> None:
        import socket

        self.binary = binary
        self.folder = folder
        with socket.socket() as s:  # a free port (bound and released: redis binds it next)
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None

    def start(self) -> None:
        import subprocess
        import time

        import redis

        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis(port=self.port, socket_timeout=0.2) as client:
                    client.ping()
                return
            except redis.ConnectionError:
                assert self.process.poll() is None, "redis-server exited at start"
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def flush(self) -> None:
        import redis

        with redis.Redis(port=self.port) as client:
            client.flushall()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server for the shared-state tests. Missing: a skip locally, a failure in
    CI (CI=true), where .ci/run installs it."""
    import os
    import shutil

    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    server = RedisServer(binary, tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server) -> str:
    """The shared Redis, emptied for this test (it must be running: a test may stop it)."""
    if redis_server.process is None:
        redis_server.start()
    redis_server.flush()
    return redis_server.url
