"""Shared fixtures: a real fake-gcs-server process, and UCS instances on both backends."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from backtest_pipeline.storage.emulator import GCSEmulator
from backtest_pipeline.storage.ucs import UnifiedCloudService

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BUCKET_VARS = (
    "INSTRUMENTS_GCS_BUCKET",
    "MARKET_DATA_GCS_BUCKET",
    "SIGNALS_GCS_BUCKET",
    "EXECUTION_STORE_GCS_BUCKET",
)


#: Test modules whose every ``run_engine`` call also runs the other engine feed and asserts the
#: two give identical outputs (tests/_feeds.py): each engine scenario proves the operations feed.
BOTH_FEEDS_MODULES = {"test_engine_run", "test_engine_books", "test_book_gaps"}


@pytest.fixture(autouse=True)
def _both_engine_feeds(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = request.module
    if mod.__name__ not in BOTH_FEEDS_MODULES or not hasattr(mod, "run_engine"):
        return
    from _feeds import run_both

    monkeypatch.setattr(mod, "run_engine", run_both(mod.run_engine))


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[GCSEmulator]:
    emu = GCSEmulator().start()
    yield emu
    emu.stop()


@pytest.fixture
def unique_buckets(monkeypatch: pytest.MonkeyPatch) -> str:
    """Fresh bucket names per test, so tests sharing one emulator never see each other's objects."""
    tag = uuid.uuid4().hex[:10]
    for var in BUCKET_VARS:
        monkeypatch.setenv(var, f"{var.split('_')[0].lower()}-{tag}")
    return tag


@pytest.fixture
def gcs_ucs(
    gcs_emulator: GCSEmulator, monkeypatch: pytest.MonkeyPatch, unique_buckets: str
) -> UnifiedCloudService:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.url)
    return UnifiedCloudService("gs://")


@pytest.fixture
def local_ucs(tmp_path: Path) -> UnifiedCloudService:
    return UnifiedCloudService(str(tmp_path / "root"))


@pytest.fixture(params=["local", pytest.param("gcs", marks=pytest.mark.slow)])
def ucs(request: pytest.FixtureRequest, tmp_path: Path) -> UnifiedCloudService:
    """The UCS contract holds on both backends: every test using this runs twice.

    The emulator twin is in the full suite (``slow``): the quick loop keeps the local one, and
    the emulator itself is still exercised there by the tests that use ``gcs_ucs`` directly.
    """
    if request.param == "local":
        return UnifiedCloudService(str(tmp_path / "root"))
    return request.getfixturevalue("gcs_ucs")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real market data folder {SHARED_DATA} is absent")
    return SHARED_DATA


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
