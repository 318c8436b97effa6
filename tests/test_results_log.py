"""The run's log object: the engine's and the product's logs joined, streamed through a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from backtest_pipeline import layout
from backtest_pipeline.results.writer import ResultWriter
from backtest_pipeline.storage.ucs import UnifiedCloudService


def _old_join(workdir: Path) -> bytes:
    """What the writer stored before (strings joined in memory), as the reference."""
    parts = []
    for name in ("execution.log", "product.log"):
        f = workdir / name
        if f.exists():
            parts.append(f"===== {name} =====\n{f.read_text(errors='replace')}")
    return "\n".join(parts).encode()


@pytest.mark.parametrize(
    "files",
    [
        {"execution.log": "engine ✓ line\n" * 50_000 + "é", "product.log": "product\nlast"},
        {"product.log": "only the product's\n"},
        {},
        # Not UTF-8 (a lone continuation byte, a truncated sequence): replaced as before.
        {"execution.log": b"ok\n\x80bad\n\xe2\x82", "product.log": "p"},
    ],
)
def test_log_object_is_the_two_logs_joined_exactly(tmp_path: Path, files: dict) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    for name, content in files.items():
        data = content if isinstance(content, bytes) else content.encode()
        (workdir / name).write_bytes(data)
    ucs = UnifiedCloudService(str(tmp_path / "root"))
    writer = ResultWriter(ucs, "log-test")
    writer.write_log_from(workdir)
    stored = ucs.download_from_gcs_sync(
        layout.target("results"), layout.log_path("log-test"), format="bytes"
    )
    assert stored == _old_join(workdir)
    assert sorted(p.name for p in workdir.iterdir()) == sorted(files)  # nothing left behind
