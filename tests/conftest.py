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

    opts = TrainOptions(c_grid=(0.3, 1.0), cv_folds=2, n_hash_features=2**12, n_jobs=1)
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
