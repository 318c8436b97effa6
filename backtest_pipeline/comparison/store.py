"""Where a comparison goes: its two objects in the results bucket, the table before the page.

A module of its own so that the table (``table``) and its page (``html``) do not depend on each
other both ways: the page reads the table's columns, and this module needs both.
"""

from __future__ import annotations

from backtest_pipeline import layout
from backtest_pipeline.comparison.html import comparison_html
from backtest_pipeline.comparison.table import Comparison
from backtest_pipeline.storage.ucs import UnifiedCloudService


def write_comparison(ucs: UnifiedCloudService, comparison: Comparison) -> dict[str, str]:
    """``runs.parquet`` then ``comparison.html`` under ``comparisons/{id}/``; name → URI."""
    target = layout.target("results")
    cid = comparison.comparison_id
    paths = {n: layout.comparison_path(cid, n) for n in layout.COMPARISON_OBJECTS}
    ucs.upload_to_gcs_sync(target, paths["runs.parquet"], comparison.runs, format="parquet")
    ucs.upload_to_gcs_sync(
        target, paths["comparison.html"], comparison_html(comparison), format="html"
    )
    return {n: ucs.uri(target, p) for n, p in paths.items()}
