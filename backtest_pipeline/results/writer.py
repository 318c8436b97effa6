"""One owner for a run's result objects: where they live, the order they are written, removal.

Every entry point (the runner, a failure before the run, the Dagster stages, the IO manager)
goes through this class, so that a run's objects are found and written in one place and the
completeness rule holds everywhere: the Parquet objects, ``report.html`` and the log first,
``summary.json`` last, and a failure leaves no Parquet object or report that could pass for a
complete result.
"""

from __future__ import annotations

import codecs
import io
import traceback
from collections.abc import Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from backtest_pipeline import layout
from backtest_pipeline.storage.ucs import UnifiedCloudService

SUMMARY = "summary.json"
REPORT = layout.REPORT
CONFIG = "backtest_config.json"
LOG = "execution.log"


def utc_now() -> str:
    """Summary timestamps: UTC to the second, as the outputs document them."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def failed_summary(
    run_id: str,
    config: dict[str, Any],
    days: list[date],
    exc: BaseException,
    created_at: str | None = None,
    inputs: list[dict[str, Any]] | None = None,
    execution_stats: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The FAILED summary: what was asked, what was read, and the error, for every failure path."""
    return {
        "run_id": run_id,
        "status": "FAILED",
        "created_at": created_at or utc_now(),
        "config": config,
        "error": f"{type(exc).__name__}: {exc}",
        "days": [d.isoformat() for d in days],
        "inputs": inputs or [],
        "execution_stats": execution_stats or {},
    }


class ResultWriter:
    """The result objects of one run in the results bucket."""

    OBJECTS: tuple[str, ...] = (*layout.RESULT_OBJECTS, CONFIG, LOG)

    @staticmethod
    def path_of(run_id: str, name: str) -> str:
        """The object path of a run's ``name`` (a result object, the config or the log)."""
        if name == CONFIG:
            return layout.config_path(run_id)
        if name == LOG:
            return layout.log_path(run_id)
        return layout.result_path(run_id, name)

    def __init__(self, ucs: UnifiedCloudService, run_id: str) -> None:
        self.ucs = ucs
        self.run_id = layout.validate_run_id(run_id)
        self.target = layout.target("results")

    def path(self, name: str) -> str:
        return self.path_of(self.run_id, name)

    def uri(self, name: str) -> str:
        return self.ucs.uri(self.target, self.path(name))

    def locations(self) -> dict[str, str]:
        """Every object of the run by name, as the summary and the CLI report them."""
        return {name: self.uri(name) for name in self.OBJECTS}

    def remove(self) -> None:
        """Delete the run's summary, Parquet objects and report, summary first.

        Without its summary no reader treats the other objects as a finished run, so a crash
        halfway through the removal still leaves nothing that looks complete.
        """
        for name in (SUMMARY, *layout.RESULT_PARQUETS, REPORT):
            self.ucs.delete_sync(self.target, self.path(name))

    def write_config(self, config: dict[str, Any]) -> None:
        self.ucs.upload_to_gcs_sync(self.target, self.path(CONFIG), config)

    def write_log(self, text: str) -> None:
        self.ucs.upload_to_gcs_sync(self.target, self.path(LOG), text, format="text")

    def write_log_from(self, workdir: Path) -> None:
        """The engine's and the product's logs of a run, joined into its one log object.

        A year's engine log is ~0.5 GB: joined on disk and streamed from that file to the
        object, it costs a copy buffer in memory, not its size (read back as one payload it
        was the sharded year's largest allocation; joining strings in memory made four copies).
        The bytes are the same as
        decoding with ``errors="replace"`` and re-encoding, unless a log is not UTF-8 — then
        that is what is done.
        """
        files = [(n, workdir / n) for n in ("execution.log", "product.log")]
        files = [(n, f) for n, f in files if f.exists()]
        joined = workdir / ".log.joined"
        valid = True
        with joined.open("wb") as out:
            for i, (name, f) in enumerate(files):
                out.write(f"{chr(10) if i else ''}===== {name} =====\n".encode())
                check = codecs.getincrementaldecoder("utf-8")()
                with f.open("rb") as src:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                        if valid:
                            try:
                                check.decode(chunk)
                            except UnicodeDecodeError:
                                valid = False
                if valid:
                    try:
                        check.decode(b"", final=True)
                    except UnicodeDecodeError:
                        valid = False
        if not valid:
            joined.unlink()
            parts = [f"===== {n} =====\n{f.read_text(errors='replace')}" for n, f in files]
            self.write_log("\n".join(parts))
            return
        try:
            self.ucs.upload_file_sync(self.target, self.path(LOG), joined, format="text")
        finally:
            joined.unlink()

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        self.ucs.upload_to_gcs_sync(self.target, self.path(SUMMARY), dict(summary))

    def write_completed(
        self,
        tables: Mapping[str, pa.Table],
        summary: Mapping[str, Any],
        workdir: Path,
        report_html: str | None = None,
    ) -> None:
        """A completed run: the Parquet objects, the report, the log, then the summary that
        vouches for them."""
        for name, table in tables.items():
            self.ucs.upload_to_gcs_sync(self.target, self.path(name), table, format="parquet")
        if report_html is not None:
            self.ucs.upload_to_gcs_sync(self.target, self.path(REPORT), report_html, format="html")
        self.write_log_from(workdir)
        self.write_summary(summary)

    def write_failed(
        self,
        summary: Mapping[str, Any],
        log_text: str | None = None,
        workdir: Path | None = None,
    ) -> None:
        """A failed run: no Parquet object left, the log, and the FAILED summary."""
        self.remove()
        if workdir is not None:
            self.write_log_from(workdir)
        elif log_text is not None:
            self.write_log(log_text)
        self.write_summary(summary)

    def failed_before_start(
        self, config: dict[str, Any], days: list[date], exc: BaseException
    ) -> str:
        """Record a failure that happened before the backtest began; returns the summary's URI."""
        log_text = (
            f"run {self.run_id} failed before the backtest started\n"
            f"{type(exc).__name__}: {exc}\n{''.join(traceback.format_exception(exc))}"
        )
        self.write_failed(failed_summary(self.run_id, config, days, exc), log_text)
        return self.uri(SUMMARY)

    def read_summary(self) -> dict[str, Any]:
        return self.ucs.download_from_gcs_sync(self.target, self.path(SUMMARY))

    def read_table(self, name: str) -> pa.Table:
        """A written Parquet result object."""
        data = self.ucs.download_bytes_sync(self.target, self.path(name))
        return pq.ParquetFile(io.BytesIO(data)).read()

    def row_count(self, name: str) -> int:
        """Rows of a written Parquet result object, from its footer only."""
        data = self.ucs.download_bytes_sync(self.target, self.path(name))
        return pq.ParquetFile(io.BytesIO(data)).metadata.num_rows
