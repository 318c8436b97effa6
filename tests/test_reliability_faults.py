"""Storage faults, idempotence and secrets (issue 6).

Faults run against an emulator of their own (filesystem backend, so objects survive a restart on
the same port), never the shared session one. A backend method is wrapped so that the emulator is
stopped at a precise moment of the run (the n-th read of day 2's trades, the upload of
`fills.parquet`) and brought back either by a timer (inside the retry budget: the run must
succeed) or only when the run starts handling its failure (outside the budget: the run must fail
with a FAILED summary and no result Parquet). Every run that eventually succeeds must equal an
undisturbed run byte for byte.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from backtest_pipeline import layout
from backtest_pipeline.run.runner import BacktestFailed, run_backtest
from backtest_pipeline.storage.base import ObjectNotFoundError, RetryPolicy, TransientStorageError
from backtest_pipeline.storage.emulator import GCSEmulator
from backtest_pipeline.storage.ucs import UnifiedCloudService
from tests._reliability import (
    DAY1,
    DAY2,
    KEY,
    Snapshot,
    assert_failed_cleanly,
    comparable_summary,
    demo_config,
    load_snapshot,
    log_of,
    make_snapshot,
    parquet_results,
    result_objects,
    summary_of,
)

RUN_ID = "fault-run"
FAST_RETRY = RetryPolicy(attempts=10, initial_s=0.05, max_s=0.5)  # ≈ 1.6–3 s of patience
SHORT_RETRY = RetryPolicy(attempts=3, initial_s=0.02, max_s=0.05)  # gives up in ≈ 0.1 s
RESTART_AFTER_S = 0.5
TRADES_DAY2 = layout.trades_path(DAY2, KEY)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    return make_snapshot(tmp_path_factory.mktemp("snapshot"), trades_per_day=8_000, seed=5)


@pytest.fixture
def own_emulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unique_buckets: str, snapshot: Snapshot
) -> Iterator[GCSEmulator]:
    """A private fake-gcs-server (filesystem backend) holding the sample inputs."""
    emu = GCSEmulator(backend="filesystem", data_dir=tmp_path / "gcs").start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emu.url)
    load_snapshot(UnifiedCloudService("gs://"), snapshot)
    yield emu
    emu.stop()


@pytest.fixture
def baseline(own_emulator: GCSEmulator) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The undisturbed run: result Parquet bytes and the comparable summary."""
    ucs = UnifiedCloudService("gs://")
    res = run_backtest(demo_config(), DAY1, DAY2, ucs=ucs, run_id=RUN_ID)
    assert res.status == "COMPLETED" and res.fills.height > 0
    return parquet_results(ucs, RUN_ID), comparable_summary(summary_of(ucs, RUN_ID))


class Fault:
    """Stop the emulator at the first backend call that `match`es; bring it back per `restart`.

    restart = "timer": after RESTART_AFTER_S (inside the retry budget);
              "on-cleanup": at the run's first delete after the stop (its failure handling);
              "never": the test restarts it itself after the run.
    """

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        ucs: UnifiedCloudService,
        emu: GCSEmulator,
        method: str,
        match: Callable[[tuple[Any, ...]], bool],
        restart: str,
    ) -> None:
        self.emu, self.restart = emu, restart
        self.fired = self.restarted = False
        self.calls_after_stop = 0
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        orig = getattr(ucs.backend, method)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                if not self.fired and match(args):
                    self.fired = True
                    emu.stop()
                    if restart == "timer":
                        self._timer = threading.Timer(RESTART_AFTER_S, self._bring_back)
                        self._timer.start()
                elif self.fired and not self.restarted:
                    self.calls_after_stop += 1
            return orig(*args, **kwargs)

        monkeypatch.setattr(ucs.backend, method, wrapped)
        if restart == "on-cleanup":
            orig_delete = ucs.backend.delete

            def delete(*args: Any, **kwargs: Any) -> Any:
                with self._lock:
                    if self.fired and not self.restarted:
                        self._bring_back()
                return orig_delete(*args, **kwargs)

            monkeypatch.setattr(ucs.backend, "delete", delete)

    def _bring_back(self) -> None:
        self.emu.start()
        self.restarted = True

    def join(self) -> None:
        if self._timer is not None:
            self._timer.join(10)


def _retry_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "transient storage error" in r.getMessage()]


def _assert_equals_baseline(
    ucs: UnifiedCloudService, base: tuple[dict[str, bytes], dict[str, Any]]
) -> None:
    parquet, summary = base
    got = parquet_results(ucs, RUN_ID)
    for name, data in parquet.items():
        assert got[name] == data, f"{name} differs from the undisturbed run"
    assert comparable_summary(summary_of(ucs, RUN_ID)) == summary


# ---- faults inside the retry budget: the run succeeds ---------------------------------------------


@pytest.mark.slow
def test_emulator_restart_during_reads_is_retried(
    own_emulator: GCSEmulator,
    baseline: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="backtest_pipeline")
    ucs = UnifiedCloudService("gs://", retry=FAST_RETRY)
    fault = Fault(
        monkeypatch, ucs, own_emulator, "read_range", lambda a: a[1] == TRADES_DAY2, "timer"
    )
    t0 = time.perf_counter()
    res = run_backtest(demo_config(), DAY1, DAY2, ucs=ucs, run_id=RUN_ID)
    fault.join()
    assert fault.fired and fault.restarted
    assert res.status == "COMPLETED"
    warnings = _retry_warnings(caplog)
    assert warnings, "the outage was not retried"
    assert any(TRADES_DAY2 in w for w in warnings), warnings
    assert "transient storage error" in log_of(ucs, RUN_ID)  # retries are in the run's log
    assert time.perf_counter() - t0 < 30
    _assert_equals_baseline(ucs, baseline)


@pytest.mark.slow
def test_emulator_restart_during_uploads_is_retried(
    own_emulator: GCSEmulator,
    baseline: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="backtest_pipeline")
    ucs = UnifiedCloudService("gs://", retry=FAST_RETRY)
    fills = layout.result_path(RUN_ID, "fills.parquet")
    fault = Fault(monkeypatch, ucs, own_emulator, "write", lambda a: a[1] == fills, "timer")
    res = run_backtest(demo_config(), DAY1, DAY2, ucs=ucs, run_id=RUN_ID)
    fault.join()
    assert fault.fired and fault.restarted and res.status == "COMPLETED"
    assert any(fills in w for w in _retry_warnings(caplog))
    _assert_equals_baseline(ucs, baseline)


# ---- faults beyond the retry budget: FAILED, clean, and a re-run repairs ----------------------------


@pytest.mark.slow
def test_read_outage_beyond_retries_fails_cleanly_and_rerun_repairs(
    own_emulator: GCSEmulator, baseline: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ucs = UnifiedCloudService("gs://", retry=SHORT_RETRY)
    fault = Fault(
        monkeypatch, ucs, own_emulator, "read_range", lambda a: a[1] == TRADES_DAY2, "on-cleanup"
    )
    with pytest.raises(BacktestFailed) as ei:
        run_backtest(demo_config(), DAY1, DAY2, ucs=ucs, run_id=RUN_ID)
    assert fault.fired and fault.restarted
    msg = str(ei.value)
    assert TRADES_DAY2 in msg and "gave up after 3 attempts" in msg
    assert_failed_cleanly(ucs, RUN_ID, [TRADES_DAY2, "gave up after 3 attempts"])
    _rerun_and_compare(baseline)  # a fresh UCS: its backend is not wrapped


@pytest.mark.slow
def test_upload_outage_beyond_retries_fails_cleanly_and_rerun_repairs(
    own_emulator: GCSEmulator, baseline: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """orders.parquet is already uploaded when fills.parquet fails: the failure must remove it."""
    ucs = UnifiedCloudService("gs://", retry=SHORT_RETRY)
    fills = layout.result_path(RUN_ID, "fills.parquet")
    fault = Fault(monkeypatch, ucs, own_emulator, "write", lambda a: a[1] == fills, "on-cleanup")
    with pytest.raises(BacktestFailed) as ei:
        run_backtest(demo_config(), DAY1, DAY2, ucs=ucs, run_id=RUN_ID)
    assert fault.fired and fault.restarted
    assert fills in str(ei.value)
    assert_failed_cleanly(ucs, RUN_ID, [fills, "gave up after 3 attempts"])
    _rerun_and_compare(baseline)


@pytest.mark.slow
def test_storage_gone_for_the_rest_of_the_run_leaves_nothing_that_looks_complete(
    own_emulator: GCSEmulator, baseline: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With storage unreachable even for the failure handling, no summary can be written.

    Each object is whole (uploads are atomic) and summary.json — written last, deleted first —
    is the commit marker: without a COMPLETED summary no reader may treat the run as finished.
    The stale objects are removed by the next attempt of the same run_id.
    """
    ucs = UnifiedCloudService("gs://", retry=SHORT_RETRY)
    fills = layout.result_path(RUN_ID, "fills.parquet")
    fault = Fault(monkeypatch, ucs, own_emulator, "write", lambda a: a[1] == fills, "never")
    with pytest.raises(BacktestFailed) as ei:
        run_backtest(demo_config(), DAY1, DAY2, ucs=ucs, run_id=RUN_ID)
    assert fault.fired and not fault.restarted
    assert "FAILED summary could not be written" in str(ei.value) and fills in str(ei.value)
    own_emulator.start()
    state = result_objects(ucs, RUN_ID)
    assert not state[layout.result_path(RUN_ID, "summary.json")], "a summary survived a failed run"
    assert not state[fills]
    _rerun_and_compare(baseline)


def _rerun_and_compare(baseline: Any) -> None:
    ucs = UnifiedCloudService("gs://")
    res = run_backtest(demo_config(), DAY1, DAY2, ucs=ucs, run_id=RUN_ID)
    assert res.status == "COMPLETED"
    _assert_equals_baseline(ucs, baseline)


# ---- the retry policy itself ---------------------------------------------------------------------


def test_retries_are_bounded_and_permanent_errors_are_not_retried(
    own_emulator: GCSEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = RetryPolicy(attempts=4, initial_s=0.05, max_s=0.1)
    ucs = UnifiedCloudService("gs://", retry=policy)
    calls = {"n": 0}
    orig = ucs.backend.stat

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        return orig(*args, **kwargs)

    monkeypatch.setattr(ucs.backend, "stat", counting)
    t = layout.target("ticks")
    with pytest.raises(ObjectNotFoundError, match="does not exist"):
        ucs.stat_sync(t, "raw_tick_data/nothing-here.parquet")
    assert calls["n"] == 1, "a 404 must not be retried"

    own_emulator.stop()
    calls["n"] = 0
    t0 = time.perf_counter()
    with pytest.raises(TransientStorageError, match="gave up after 4 attempts") as ei:
        ucs.stat_sync(t, TRADES_DAY2)
    elapsed = time.perf_counter() - t0
    assert calls["n"] == 4
    assert TRADES_DAY2 in str(ei.value) and t.gcs_bucket in str(ei.value)
    assert elapsed < 2.0, f"bounded backoff took {elapsed:.1f} s"
    own_emulator.start()
    assert ucs.stat_sync(t, TRADES_DAY2).size > 0  # and the same UCS works again after a restart


# ---- idempotence -----------------------------------------------------------------------------------


def test_rematerializing_is_byte_identical(ucs: UnifiedCloudService, snapshot: Snapshot) -> None:
    """Same run twice through one UCS instance (warm caches): same Parquet bytes, same summary."""
    load_snapshot(ucs, snapshot)
    first = run_backtest(demo_config(), DAY1, DAY2, ucs=ucs)
    p1, s1 = parquet_results(ucs, first.run_id), summary_of(ucs, first.run_id)
    cfg1 = ucs.download_bytes_sync(layout.target("results"), layout.config_path(first.run_id))
    second = run_backtest(demo_config(), DAY1, DAY2, ucs=ucs)
    assert second.run_id == first.run_id  # derived from config + dates: a re-run overwrites
    assert parquet_results(ucs, first.run_id) == p1
    s2 = summary_of(ucs, first.run_id)
    assert comparable_summary(s2) == comparable_summary(s1)
    assert (
        ucs.download_bytes_sync(layout.target("results"), layout.config_path(first.run_id)) == cfg1
    )
    # Nothing else appeared: exactly the 7 objects of that run.
    listed = ucs.list_files_sync(layout.target("results"), "")
    assert sorted(listed) == sorted(layout.all_result_paths(first.run_id))


def _crash_on_upload(
    root: str, env: dict[str, str], run_id: str, crash_at: str, where: str
) -> None:
    """Child process: run the backtest and die (os._exit) while uploading `crash_at`."""
    os.environ.update(env)
    ucs = UnifiedCloudService(root)
    target_path = layout.result_path(run_id, crash_at)
    if where == "before-write":
        orig = ucs.backend.write

        def write(bucket: str, path: str, data: bytes, content_type: str) -> Any:
            if path == target_path:
                os._exit(17)
            return orig(bucket, path, data, content_type)

        ucs.backend.write = write  # type: ignore[method-assign]
    else:  # local root: die between the temporary file and its rename
        import backtest_pipeline.storage.local as local_mod

        real_replace = os.replace

        def replace(src: Any, dst: Any) -> None:
            if str(dst).endswith(target_path):
                os._exit(17)
            real_replace(src, dst)

        local_mod.os.replace = replace  # type: ignore[attr-defined]
    run_backtest(demo_config(), DAY1, DAY2, ucs=ucs, run_id=run_id)
    os._exit(0)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["before-write", "before-rename"])
def test_rerun_after_a_crash_mid_upload_repairs_the_results(
    ucs: UnifiedCloudService, snapshot: Snapshot, where: str, tmp_path: Path
) -> None:
    if where == "before-rename" and ucs.is_gcs:
        pytest.skip("the temporary-file-then-rename window exists on the local root only")
    load_snapshot(ucs, snapshot)
    run_id = "crash-run"
    ref = run_backtest(demo_config(), DAY1, DAY2, ucs=ucs, run_id="reference-run")
    env = {
        k: v
        for k, v in os.environ.items()
        if k.endswith("_GCS_BUCKET") or k == "STORAGE_EMULATOR_HOST"
    }
    root = "gs://" if ucs.is_gcs else ucs.root
    proc = mp.get_context("spawn").Process(
        target=_crash_on_upload, args=(root, env, run_id, "positions.parquet", where)
    )
    proc.start()
    proc.join(180)
    assert proc.exitcode == 17, "the child did not crash where intended"
    state = result_objects(ucs, run_id)
    assert not state[layout.result_path(run_id, "summary.json")], (
        "a crashed run must not look complete"
    )
    assert state[layout.result_path(run_id, "fills.parquet")]  # it did crash mid-upload
    assert not state[layout.result_path(run_id, "positions.parquet")]
    listed = ucs.list_files_sync(layout.target("results"), f"backtest_results/{run_id}/")
    assert all(not p.rsplit("/", 1)[1].startswith(".") for p in listed), (
        listed
    )  # no temp files listed

    res = run_backtest(demo_config(), DAY1, DAY2, ucs=ucs, run_id=run_id)
    assert res.status == "COMPLETED"
    assert all(result_objects(ucs, run_id).values())
    assert parquet_results(ucs, run_id) == parquet_results(ucs, "reference-run")
    a = comparable_summary(summary_of(ucs, run_id))
    b = comparable_summary(summary_of(ucs, "reference-run"))
    for s in (a, b):
        s.pop("run_id"), s.pop("results")
    assert a == b
    assert ref.status == "COMPLETED"


# ---- secrets ---------------------------------------------------------------------------------------

FAKE_TOKEN = "ya29.FAKE-oauth-token-d41d8cd98f00b204e9800998ecf8427e"
FAKE_KEY_ID = "0123456789abcdef0123456789abcdef01234567"
FAKE_PEM_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7FAKEFAKEFAKE"


@pytest.fixture
def fake_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A fake service-account file and token in the environment; returns the secret strings."""
    sa = tmp_path / "fake-sa.json"
    sa.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "fake-project-123",
                "private_key_id": FAKE_KEY_ID,
                "private_key": f"-----BEGIN PRIVATE KEY-----\n{FAKE_PEM_BODY}\n-----END PRIVATE KEY-----\n",
                "client_email": "backtest@fake-project-123.iam.gserviceaccount.com",
                "client_id": "123456789012345678901",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa))
    monkeypatch.setenv("GCS_OAUTH_TOKEN", FAKE_TOKEN)
    monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", FAKE_TOKEN)
    return [FAKE_TOKEN, FAKE_KEY_ID, FAKE_PEM_BODY, "BEGIN PRIVATE KEY", "ya29."]


def _assert_clean(text: str, secrets: list[str], what: str) -> None:
    for s in secrets:
        assert s not in text, f"{what} leaks {s[:12]}…"


def test_no_secret_in_logs_summaries_or_errors(
    ucs: UnifiedCloudService,
    snapshot: Snapshot,
    fake_credentials: list[str],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    load_snapshot(ucs, snapshot)
    ok = run_backtest(demo_config(), DAY1, DAY2, ucs=ucs, run_id="secret-ok")
    ucs.delete_sync(layout.target("ticks"), TRADES_DAY2)
    with pytest.raises(BacktestFailed) as ei:
        run_backtest(demo_config(), DAY1, DAY2, ucs=ucs, run_id="secret-failed")
    texts = {
        "error": str(ei.value),
        "failed summary": json.dumps(summary_of(ucs, "secret-failed")),
        "failed log": log_of(ucs, "secret-failed"),
        "ok summary": json.dumps(summary_of(ucs, "secret-ok")),
        "ok log": log_of(ucs, "secret-ok"),
        "config": ucs.download_bytes_sync(
            layout.target("results"), layout.config_path("secret-ok")
        ).decode(),
        "python log records": "\n".join(r.getMessage() for r in caplog.records),
    }
    out, err = capfd.readouterr()
    texts["stdout+stderr"] = out + err
    assert ok.status == "COMPLETED" and "does not exist" in texts["error"]
    for what, text in texts.items():
        _assert_clean(text, fake_credentials, what)


def test_real_gcs_credential_errors_do_not_leak_secrets(
    fake_credentials: list[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No emulator: the client loads the fake service account and fails; the error stays clean."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")  # never wait on a metadata server
    ucs = UnifiedCloudService("gs://", retry=RetryPolicy(attempts=2, initial_s=0.01, max_s=0.02))
    t = layout.target("ticks")
    with pytest.raises(Exception) as ei:
        ucs.stat_sync(t, TRADES_DAY2)
    text = f"{type(ei.value).__name__}: {ei.value}\n{ei.value.__cause__}\n{ei.value.__context__}"
    text += "\n".join(r.getMessage() for r in caplog.records)
    _assert_clean(text, fake_credentials, "the credential error")


class _EchoingGCS:
    """A fake GCS endpoint whose error responses echo credentials, as a misbehaving proxy might."""

    def __init__(self, status: int, leak: str) -> None:
        import http.server
        import socketserver

        body = json.dumps({"error": {"code": status, "message": leak}}).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("status", [503, 403, 400])
def test_credentials_echoed_by_the_server_are_redacted(
    fake_credentials: list[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    status: int,
) -> None:
    caplog.set_level(logging.DEBUG)
    pem = f"-----BEGIN PRIVATE KEY-----\n{FAKE_PEM_BODY}\n-----END PRIVATE KEY-----"
    leak = (
        f"upstream rejected Authorization: Bearer {FAKE_TOKEN}; url ?access_token={FAKE_TOKEN}; "
        f"raw {FAKE_TOKEN}; key {pem}; private_key_id {FAKE_KEY_ID}"
    )
    server = _EchoingGCS(status, leak)
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
        ucs = UnifiedCloudService(
            "gs://", retry=RetryPolicy(attempts=2, initial_s=0.01, max_s=0.02)
        )
        t = layout.target("ticks")
        with pytest.raises(Exception) as ei:
            ucs.stat_sync(t, TRADES_DAY2)
    finally:
        server.close()
    text = str(ei.value) + "\n" + "\n".join(f"{r.name}: {r.getMessage()}" for r in caplog.records)
    assert TRADES_DAY2 in str(ei.value)  # still names the object
    assert "upstream rejected" in str(ei.value)  # and keeps the server's words, minus secrets
    _assert_clean(text, fake_credentials, f"HTTP {status} error")
