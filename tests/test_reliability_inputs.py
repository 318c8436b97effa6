"""Bad inputs (issue 6): every crafted defect fails the run loudly, on both storage backends.

Each case damages exactly one object of an otherwise good 2-day sample (on the *second* day, so
day 1 has already been read and simulated when the defect is met) and then checks the whole
contract:

* `run_backtest` raises `BacktestFailed` whose message names the object and the problem;
* `summary.json` says `status: FAILED` with that error, no orders/fills/positions/equity_curve
  Parquet exists under the run_id, and the log object was written;
* `backtest run` exits non-zero with the same message on stderr.

Values that only matter inside a signal window (NaN price, duplicate id...) are planted in the
first trade the day's first signal needs: the signal-driven reader validates what it reads.
Cases where skipping is the documented behaviour (a day without signals or funding) are tested
for the skip *and* its log line.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from backtest_pipeline import layout
from backtest_pipeline.cli import app
from backtest_pipeline.config import BacktestConfig
from backtest_pipeline.run.runner import BacktestFailed, run_backtest
from backtest_pipeline.storage.ucs import UnifiedCloudService
from tests._reliability import (
    DAY1,
    DAY2,
    DEMO_YAML,
    KEY,
    STRATEGY,
    Snapshot,
    assert_failed_cleanly,
    demo_config,
    first_signal_window_row,
    flat,
    load_snapshot,
    log_of,
    make_snapshot,
    put_bytes,
    put_table,
    read_table,
    result_objects,
    summary_of,
    uri,
)

TRADES = layout.trades_path(DAY2, KEY)
INSTRUMENTS = layout.instruments_path(DAY2)
SIGNALS = layout.signals_path(DAY2, STRATEGY)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    """The good sample, with the complete results of one undamaged run (``good-run``) in it.

    The undamaged data runs once here rather than in every case; its results travel with the
    snapshot so that each case still checks that a failure leaves another run's results alone.
    """
    d = tmp_path_factory.mktemp("snapshot")
    snap = make_snapshot(d)
    ucs = UnifiedCloudService(str(d))
    good = run_backtest(demo_config(), DAY1, DAY2, ucs=ucs, run_id="good-run")
    assert good.status == "COMPLETED" and good.fills.height > 0  # the undamaged data runs
    results = layout.target("results")
    for path in ucs.list_files_sync(results, ""):
        snap[("results", path)] = ucs.download_bytes_sync(results, path)
    return snap


@pytest.fixture
def loaded(
    ucs: UnifiedCloudService, snapshot: Snapshot, monkeypatch: pytest.MonkeyPatch
) -> UnifiedCloudService:
    """The good sample on the parametrized backend (local root or GCS emulator)."""
    monkeypatch.setenv("COLUMNS", "4000")  # keep rich from wrapping messages on stderr
    load_snapshot(ucs, snapshot)
    return ucs


# ---- the defects ------------------------------------------------------------------------------
# Each returns (object URI that the error must name, problem fragments the error must contain).

Damage = Callable[[UnifiedCloudService], tuple[str, list[str]]]


def _delete(role: layout.Role, path: str) -> Damage:
    def go(ucs: UnifiedCloudService) -> tuple[str, list[str]]:
        ucs.delete_sync(layout.target(role), path)
        return uri(ucs, role, path), ["does not exist"]

    return go


def _empty(role: layout.Role, path: str, problem: str) -> Damage:
    def go(ucs: UnifiedCloudService) -> tuple[str, list[str]]:
        put_bytes(ucs, role, path, b"")
        return uri(ucs, role, path), [problem]

    return go


def _zero_rows(role: layout.Role, path: str, problem: str) -> Damage:
    def go(ucs: UnifiedCloudService) -> tuple[str, list[str]]:
        put_table(ucs, role, path, read_table(ucs, role, path).slice(0, 0))
        return uri(ucs, role, path), [problem]

    return go


def _truncate(role: layout.Role, path: str, problem: str) -> Damage:
    def go(ucs: UnifiedCloudService) -> tuple[str, list[str]]:
        data = ucs.download_bytes_sync(layout.target(role), path)
        put_bytes(ucs, role, path, data[: len(data) // 2])
        return uri(ucs, role, path), [problem]

    return go


def _corrupt_data_pages(ucs: UnifiedCloudService) -> tuple[str, list[str]]:
    """Garbage over every column chunk (footer intact): whatever row group is read is corrupt."""
    data = bytearray(ucs.download_bytes_sync(layout.target("ticks"), TRADES))
    footer_len = int.from_bytes(data[-8:-4], "little")
    end = len(data) - footer_len - 8
    for i in range(64, end, 97):
        data[i] ^= 0x5A
    put_bytes(ucs, "ticks", TRADES, bytes(data))
    return uri(ucs, "ticks", TRADES), ["corrupt Parquet data"]


def _corrupt_footer(ucs: UnifiedCloudService) -> tuple[str, list[str]]:
    data = bytearray(ucs.download_bytes_sync(layout.target("ticks"), TRADES))
    footer_len = int.from_bytes(data[-8:-4], "little")
    start = len(data) - footer_len - 8
    data[start : len(data) - 8] = bytes((b * 7 + 13) & 0xFF for b in data[start : len(data) - 8])
    put_bytes(ucs, "ticks", TRADES, bytes(data))
    return uri(ucs, "ticks", TRADES), ["Parquet footer"]


def _not_parquet(role: layout.Role, path: str, problem: str) -> Damage:
    def go(ucs: UnifiedCloudService) -> tuple[str, list[str]]:
        put_bytes(ucs, role, path, b"ts_event,price,size\n1,2,3\n" * 100)
        return uri(ucs, role, path), [problem]

    return go


def _edit_trades(edit: Callable[[pa.Table, int], pa.Table], *problem: str) -> Damage:
    """Rewrite the day-2 trades with `edit(table, row)`, row = a trade the first signal needs."""

    def go(ucs: UnifiedCloudService) -> tuple[str, list[str]]:
        table = read_table(ucs, "ticks", TRADES)
        row = first_signal_window_row(ucs, DAY2)
        put_table(ucs, "ticks", TRADES, edit(table, row))
        return uri(ucs, "ticks", TRADES), list(problem)

    return go


def _set_value(column: str, value: object) -> Callable[[pa.Table, int], pa.Table]:
    def edit(table: pa.Table, row: int) -> pa.Table:
        values = table.column(column).to_pylist()
        values[row] = value
        i = table.schema.get_field_index(column)
        return table.set_column(i, column, pa.array(values, type=table.schema.field(column).type))

    return edit


def _duplicate_trade_id(table: pa.Table, row: int) -> pa.Table:
    ids = table.column("trade_id").to_pylist()
    ids[row + 1] = ids[row]
    return table.set_column(
        table.schema.get_field_index("trade_id"), "trade_id", pa.array(ids, pa.string())
    )


def _unsorted(table: pa.Table, row: int) -> pa.Table:
    idx = list(range(table.num_rows))
    idx[row], idx[row + 2] = idx[row + 2], idx[row]
    # Make the swap a real backward step even if both rows share a timestamp.
    ts = table.column("ts_event").to_pylist()
    swapped = table.take(idx)
    if ts[row] == ts[row + 2]:
        ts2 = swapped.column("ts_event").to_pylist()
        ts2[row] += 1_000_000
        swapped = swapped.set_column(0, "ts_event", pa.array(ts2, pa.int64()))
    return swapped


def _drop_column(name: str) -> Callable[[pa.Table, int], pa.Table]:
    return lambda table, _row: table.drop_columns([name])


def _rename_column(old: str, new: str) -> Callable[[pa.Table, int], pa.Table]:
    return lambda table, _row: table.rename_columns(
        [new if c == old else c for c in table.column_names]
    )


def _cast_column(name: str, type_: pa.DataType) -> Callable[[pa.Table, int], pa.Table]:
    def edit(table: pa.Table, _row: int) -> pa.Table:
        i = table.schema.get_field_index(name)
        return table.set_column(i, name, pc.cast(table.column(name), type_))

    return edit


def _edit_signals(edit: Callable[[pa.Table], pa.Table], *problem: str) -> Damage:
    def go(ucs: UnifiedCloudService) -> tuple[str, list[str]]:
        put_table(ucs, "signals", SIGNALS, edit(read_table(ucs, "signals", SIGNALS)))
        return uri(ucs, "signals", SIGNALS), list(problem)

    return go


def _signal_key(key: str) -> Callable[[pa.Table], pa.Table]:
    def edit(table: pa.Table) -> pa.Table:
        keys = table.column("instrument_key").to_pylist()
        keys[0] = key
        i = table.schema.get_field_index("instrument_key")
        return table.set_column(i, "instrument_key", pa.array(keys, pa.string()))

    return edit


def _signals_reversed(table: pa.Table) -> pa.Table:
    return table.take(list(range(table.num_rows - 1, -1, -1)))


def _edit_instruments(edit: Callable[[pa.Table], pa.Table], *problem: str) -> Damage:
    def go(ucs: UnifiedCloudService) -> tuple[str, list[str]]:
        put_table(
            ucs, "instruments", INSTRUMENTS, edit(read_table(ucs, "instruments", INSTRUMENTS))
        )
        return uri(ucs, "instruments", INSTRUMENTS), list(problem)

    return go


def _without_btc(table: pa.Table) -> pa.Table:
    return table.filter(pc.not_equal(table.column("instrument_key"), KEY))


def _bad_instrument_key(table: pa.Table) -> pa.Table:
    keys = table.column("instrument_key").to_pylist()
    keys[-1] = "../../etc:PERPETUAL:X-Y"
    return table.set_column(0, "instrument_key", pa.array(keys, pa.string()))


def _instruments_renamed(table: pa.Table) -> pa.Table:
    return table.rename_columns(["tick" if c == "tick_size" else c for c in table.column_names])


@dataclass(frozen=True)
class Case:
    damage: Damage


CASES: dict[str, Case] = {
    # missing objects
    "missing-trades-day": Case(_delete("ticks", TRADES)),
    "missing-instruments-day": Case(_delete("instruments", INSTRUMENTS)),
    # empty / not Parquet
    "empty-trades-file": Case(_empty("ticks", TRADES, "too small to be a Parquet file")),
    "empty-instruments-file": Case(_empty("instruments", INSTRUMENTS, "empty (0 bytes)")),
    "empty-signals-file": Case(_empty("signals", SIGNALS, "empty (0 bytes)")),
    "zero-row-trades": Case(_zero_rows("ticks", TRADES, "no trades")),
    "zero-row-instruments": Case(_zero_rows("instruments", INSTRUMENTS, "0 rows")),
    "zero-row-signals": Case(_zero_rows("signals", SIGNALS, "0 rows")),
    "truncated-trades": Case(_truncate("ticks", TRADES, "truncated")),
    "truncated-instruments": Case(
        _truncate("instruments", INSTRUMENTS, "not a readable Parquet file")
    ),
    "truncated-signals": Case(_truncate("signals", SIGNALS, "not a readable Parquet file")),
    "corrupt-trades-pages": Case(_corrupt_data_pages),
    "corrupt-trades-footer": Case(_corrupt_footer),
    "csv-named-parquet": Case(_not_parquet("ticks", TRADES, "not Parquet")),
    # content of the trades the run needs
    "unsorted-ts_event": Case(_edit_trades(_unsorted, "sorted by ts_event")),
    "missing-column-size": Case(_edit_trades(_drop_column("size"), "'size'", "not in the object")),
    "renamed-column-price": Case(_edit_trades(_rename_column("price", "px"), "'price'", "'px'")),
    "wrong-type-price-string": Case(
        _edit_trades(
            _cast_column("price", pa.string()), "'price'", "expected float64", "found String"
        )
    ),
    "wrong-type-ts_event-string": Case(
        _edit_trades(_cast_column("ts_event", pa.string()), "'ts_event'", "found string")
    ),
    "wrong-type-side-int": Case(
        _edit_trades(
            lambda t, _r: t.set_column(5, "side", pa.array([1] * t.num_rows, pa.int8())),
            "'side'",
            "expected string",
        )
    ),
    "nan-price": Case(
        _edit_trades(_set_value("price", float("nan")), "'price'", "finite values > 0")
    ),
    "zero-price": Case(_edit_trades(_set_value("price", 0.0), "'price'", "finite values > 0")),
    "negative-price": Case(_edit_trades(_set_value("price", -1.0), "'price'", "finite values > 0")),
    "nan-size": Case(_edit_trades(_set_value("size", float("nan")), "'size'", "finite values > 0")),
    "zero-size": Case(_edit_trades(_set_value("size", 0.0), "'size'", "finite values > 0")),
    "negative-size": Case(_edit_trades(_set_value("size", -0.5), "'size'", "finite values > 0")),
    "null-price": Case(_edit_trades(_set_value("price", None), "'price'", "null")),
    "duplicate-trade-ids": Case(
        _edit_trades(_duplicate_trade_id, "'trade_id'", "unique trade ids")
    ),
    # instruments and signals
    "instrument-absent-from-day": Case(_edit_instruments(_without_btc, KEY, "instruments.parquet")),
    "instruments-renamed-column": Case(
        _edit_instruments(_instruments_renamed, "'tick_size'", "renamed")
    ),
    "instruments-escaping-key": Case(
        _edit_instruments(_bad_instrument_key, "invalid instrument key", "'..'")
    ),
    "signal-for-instrument-not-in-run": Case(
        _edit_signals(
            _signal_key("BINANCE-FUTURES:PERPETUAL:ETH-USDT"),
            "ETH-USDT",
            "not in the run's instruments",
        ),
    ),
    "signal-for-unlisted-instrument": Case(
        _edit_signals(_signal_key("OKX:PERPETUAL:SOL-USDT"), "OKX:PERPETUAL:SOL-USDT", "not in"),
    ),
    "signals-out-of-order": Case(_edit_signals(_signals_reversed, "sorted by ts_event")),
    "signal-key-escaping-prefix": Case(
        _edit_signals(_signal_key("../BINANCE:SPOT:BTC-USDT"), "invalid instrument key", "'..'")
    ),
    "signal-key-absolute": Case(
        _edit_signals(
            _signal_key("/etc/passwd"), "invalid instrument key", "outside [A-Za-z0-9._:-]"
        )
    ),
    "signal-key-control-char": Case(
        _edit_signals(
            _signal_key("BINANCE:SPOT:BTC-USDT\n"), "invalid instrument key", "BTC-USDT\\n'"
        )
    ),
    "signals-wrong-type": Case(
        _edit_signals(
            lambda t: t.set_column(3, "target_position", pc.cast(t.column(3), pa.string())),
            "'target_position'",
            "expected float64",
        )
    ),
}


def _cli(ucs: UnifiedCloudService, run_id: str) -> tuple[int, str]:
    root = "gs://" if ucs.is_gcs else ucs.root
    res = CliRunner().invoke(
        app,
        [
            "run",
            "--config",
            str(DEMO_YAML),
            "--start",
            DAY1.isoformat(),
            "--end",
            DAY2.isoformat(),
            "--root",
            root,
            "--run-id",
            run_id,
        ],
    )
    return res.exit_code, res.stderr


def _case_params() -> list[object]:
    out: list[object] = []
    for name in CASES:
        out.append(pytest.param(name, id=name))
    return out


@pytest.mark.parametrize("case", _case_params())
def test_bad_input_fails_the_run_with_a_clear_error(loaded: UnifiedCloudService, case: str) -> None:
    ucs = loaded
    cfg = demo_config()
    assert summary_of(ucs, "good-run")["status"] == "COMPLETED"  # complete before the damage
    assert all(result_objects(ucs, "good-run").values())

    obj, problem = CASES[case].damage(ucs)
    run_id = f"bad-{case}"
    with pytest.raises(BacktestFailed) as ei:
        run_backtest(cfg, DAY1, DAY2, ucs=ucs, run_id=run_id)
    msg = str(ei.value)
    for needle in problem:
        assert needle in msg, f"error message does not contain {needle!r}:\n{msg}"
    assert ei.value.run_id == run_id
    assert_failed_cleanly(ucs, run_id, problem)

    # The CLI: non-zero exit, the same message on stderr; a second run_id so it starts from nothing.
    code, stderr = _cli(ucs, f"cli-{case}")
    assert code != 0
    assert f"cli-{case} FAILED" in stderr
    for needle in problem:
        assert flat(needle) in flat(stderr), f"stderr lacks {needle!r}:\n{stderr}"
    assert_failed_cleanly(ucs, f"cli-{case}", problem)
    # The earlier good run under its own run_id is untouched by the failures.
    assert summary_of(ucs, "good-run")["status"] == "COMPLETED"
    assert all(result_objects(ucs, "good-run").values())

    # Last: the message names the object (URI), in the exception, the summary and on stderr.
    assert obj in msg, f"error message does not name {obj}:\n{msg}"
    assert obj in summary_of(ucs, run_id)["error"]
    assert flat(obj) in flat(stderr)


def test_rerun_after_a_failure_replaces_complete_results_with_failed(
    loaded: UnifiedCloudService,
) -> None:
    """A run_id that once COMPLETED and then fails on re-run must not keep its old Parquet files."""
    ucs = loaded
    cfg = demo_config()
    run_backtest(cfg, DAY1, DAY2, ucs=ucs, run_id="same-id")
    assert all(result_objects(ucs, "same-id").values())
    obj, problem = _delete("ticks", TRADES)(ucs)
    with pytest.raises(BacktestFailed):
        run_backtest(cfg, DAY1, DAY2, ucs=ucs, run_id="same-id")
    assert_failed_cleanly(ucs, "same-id", [obj, *problem])


# ---- documented skips ----------------------------------------------------------------------------


def test_day_without_signals_is_a_logged_skip(loaded: UnifiedCloudService) -> None:
    """No signals object for a day = the strategy did not trade that day: skipped, and logged."""
    ucs = loaded
    cfg = demo_config()
    both = run_backtest(cfg, DAY1, DAY2, ucs=ucs, run_id="both-days")
    day1_only = run_backtest(cfg, DAY1, DAY1, ucs=ucs, run_id="day1-only")
    ucs.delete_sync(layout.target("signals"), SIGNALS)
    res = run_backtest(cfg, DAY1, DAY2, ucs=ucs, run_id="no-signals-day2")
    assert res.status == "COMPLETED"
    st = res.summary["execution_stats"]
    assert (
        st["signals"]
        == day1_only.summary["execution_stats"]["signals"]
        < both.summary["execution_stats"]["signals"]
    )
    assert st["days"] == 2
    assert res.fills.equals(day1_only.fills)
    log = log_of(ucs, "no-signals-day2")
    assert f"no signals for strategy {STRATEGY} on {DAY2}" in log
    assert uri(ucs, "signals", SIGNALS) in log
    # The summary records what was read: the day-2 signals object is not among the inputs.
    assert SIGNALS not in {i["path"] for i in res.summary["inputs"]}


def test_missing_funding_is_a_logged_skip(loaded: UnifiedCloudService) -> None:
    ucs = loaded
    fpath = layout.funding_path(DAY2, KEY)
    ucs.delete_sync(layout.target("ticks"), fpath)
    res = run_backtest(demo_config(), DAY1, DAY2, ucs=ucs, run_id="no-funding-day2")
    assert res.status == "COMPLETED"
    log = log_of(ucs, "no-funding-day2")
    assert f"no funding rates for {KEY} on {DAY2}" in log and uri(ucs, "ticks", fpath) in log


@pytest.mark.parametrize("unit", ["ns", "us"])
def test_timestamp_typed_ts_event_reads_like_int64(loaded: UnifiedCloudService, unit: str) -> None:
    """`timestamp[*, UTC]` ts_event is accepted (spec) and selects exactly the same trades as int64.

    Regression: the window filter cast timestamp[us] straight to int64 (µs) and compared it with ns
    bounds, so every row was dropped and the day ran without trades, silently.
    """
    ucs = loaded
    cfg = demo_config()
    factor = {"ns": 1, "us": 1_000}[unit]
    for day in (DAY1, DAY2):
        path = layout.trades_path(day, KEY)
        table = read_table(ucs, "ticks", path)
        floored = pc.multiply(
            pc.divide(table.column("ts_event"), factor), factor
        )  # integer division
        put_table(ucs, "ticks", path, table.set_column(0, "ts_event", floored))
    as_int = run_backtest(cfg, DAY1, DAY2, ucs=ucs, run_id="ts-int64")
    for day in (DAY1, DAY2):
        path = layout.trades_path(day, KEY)
        table = read_table(ucs, "ticks", path)
        ts = pc.cast(pc.divide(table.column("ts_event"), factor), pa.timestamp(unit, "UTC"))
        put_table(ucs, "ticks", path, table.set_column(0, pa.field("ts_event", ts.type), ts))
        assert read_table(ucs, "ticks", path).schema.field("ts_event").type == pa.timestamp(
            unit, "UTC"
        )
    as_ts = run_backtest(cfg, DAY1, DAY2, ucs=ucs, run_id="ts-typed")
    assert as_int.fills.height > 0
    assert (
        as_ts.summary["execution_stats"]["ticks_processed"]
        == as_int.summary["execution_stats"]["ticks_processed"]
    )
    assert as_ts.fills.equals(as_int.fills)
    assert as_ts.summary["pnl"] == as_int.summary["pnl"]


# ---- identifiers that try to leave their prefix ------------------------------------------------

ESCAPES = [
    "../evil",
    "a/../../b",
    "x/y",
    "/abs/path",
    "/",
    "..",
    "ok\nforged",
    "tab\there",
    "nul\x00",
    "del\x7f",
    "a" * 201,
    "spaced out",
    "back\\slash",
    "%2e%2e",
]


def _all_objects(ucs: UnifiedCloudService) -> set[tuple[str, str]]:
    return {
        (r, p)
        for r in ("instruments", "ticks", "signals", "results")
        for p in ucs.list_files_sync(layout.target(r), "")
    }  # type: ignore[arg-type]


def _files_under(path: Path) -> set[str]:
    return {str(p) for p in path.rglob("*")}


@pytest.mark.parametrize("bad", ESCAPES, ids=[repr(b)[:20] for b in ESCAPES])
def test_escaping_run_id_is_refused_before_any_write(
    loaded: UnifiedCloudService, bad: str, tmp_path: Path
) -> None:
    ucs = loaded
    before = _all_objects(ucs)
    files_before = _files_under(tmp_path.parent)
    with pytest.raises(layout.LayoutError) as ei:
        run_backtest(demo_config(), DAY1, DAY2, ucs=ucs, run_id=bad)
    assert "run_id" in str(ei.value)
    code, stderr = _cli(ucs, bad)
    assert code != 0 and "run_id" in stderr
    assert _all_objects(ucs) == before, "a refused run_id must not write anything"
    new = {f for f in _files_under(tmp_path.parent) - files_before if "/root/" not in f}
    assert not new, f"files appeared outside the storage root: {sorted(new)[:5]}"


@pytest.mark.parametrize("bad", ESCAPES[:10], ids=[repr(b)[:20] for b in ESCAPES[:10]])
def test_escaping_strategy_id_and_instrument_key_are_refused(
    loaded: UnifiedCloudService, bad: str
) -> None:
    ucs = loaded
    with pytest.raises(ValueError, match="strategy id"):
        demo_config().model_validate({**demo_config().model_dump(), "strategy_id": bad})
    with pytest.raises(ValueError, match="instrument key"):
        demo_config().model_validate({**demo_config().model_dump(), "instruments": [bad]})
    for fn in (
        lambda: layout.signals_path(DAY1, bad),
        lambda: layout.trades_path(DAY1, bad),
        lambda: layout.funding_path(DAY1, bad),
        lambda: layout.results_prefix(bad),
    ):
        with pytest.raises(layout.LayoutError):
            fn()
    # Defence in depth: a config that skipped validation still cannot reach a path.
    before = _all_objects(ucs)
    sneaky = BacktestConfig.model_construct(**{**dict(demo_config()), "strategy_id": bad})
    with pytest.raises(BacktestFailed) as ei:
        run_backtest(sneaky, DAY1, DAY2, ucs=ucs, run_id="sneaky-strategy")
    assert "strategy id" in str(ei.value)
    assert_failed_cleanly(ucs, "sneaky-strategy", ["strategy id"])
    written = {p for r, p in _all_objects(ucs) - before}
    assert all(p.split("/")[1] == "sneaky-strategy" for p in written), written


def test_cli_refuses_an_escaping_strategy_id_in_the_config(
    loaded: UnifiedCloudService, tmp_path: Path
) -> None:
    text = DEMO_YAML.read_text().replace(
        "strategy_id: demo-strategy", "strategy_id: ../../signals-x"
    )
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(text)
    root = "gs://" if loaded.is_gcs else loaded.root
    before = _all_objects(loaded)
    res = CliRunner().invoke(
        app,
        [
            "run",
            "--config",
            str(cfg),
            "--start",
            "2024-01-01",
            "--end",
            "2024-01-02",
            "--root",
            root,
        ],
    )
    assert res.exit_code != 0
    assert "strategy id" in res.stderr and "'..'" in res.stderr
    assert _all_objects(loaded) == before


def test_subprocess_cli_exit_code_and_stderr(loaded: UnifiedCloudService) -> None:
    """The real console script, once, for the exit status and the message a shell user sees."""
    import subprocess

    ucs = loaded
    obj, _problem = _delete("ticks", TRADES)(ucs)
    root = "gs://" if ucs.is_gcs else ucs.root
    proc = subprocess.run(
        [
            "uv",
            "run",
            "--no-sync",
            "backtest",
            "run",
            "--config",
            str(DEMO_YAML),
            "--start",
            "2024-01-01",
            "--end",
            "2024-01-02",
            "--root",
            root,
            "--run-id",
            "subprocess-run",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "COLUMNS": "4000"},
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert obj in proc.stderr and "does not exist" in proc.stderr and "FAILED" in proc.stderr
    assert_failed_cleanly(ucs, "subprocess-run", [obj])
