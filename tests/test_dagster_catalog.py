"""The vectorised Nautilus catalog writer/reader (plain functions, no Dagster)."""

import glob
from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from nautilus_trader.model.data import TradeTick
from nautilus_trader.persistence.catalog import ParquetDataCatalog
from nautilus_trader.persistence.catalog.parquet import _timestamps_to_filename

from backtest_pipeline.config import FeeOverride
from backtest_pipeline.data.sample import generate_trades, instruments_for_day
from backtest_pipeline.engine import catalog as c
from backtest_pipeline.engine.conversion import trades_to_ticks
from backtest_pipeline.engine.instruments import build_instrument
from backtest_pipeline.storage.ucs import UnifiedCloudService

KEY = "BINANCE-FUTURES:PERPETUAL:BTC-USDT"
DAY = date(2024, 1, 1)


@pytest.fixture(scope="module")
def day_data() -> tuple[pl.DataFrame, pl.DataFrame]:
    instruments = instruments_for_day()
    table, _mid = generate_trades(KEY, DAY, 5_000)
    trades = pl.from_arrow(table)
    assert isinstance(trades, pl.DataFrame)
    return instruments, trades


def test_fixed_point_roundtrip() -> None:
    values = np.array([0.0, 0.1, 42_000.1, 123_456.789, 1e-9 * 3, 99_999_999.5])
    for prec in (0, 1, 3, 9):
        back = c.decode_fixed(c.encode_fixed(values, prec), prec)
        assert np.array_equal(back, np.round(values, prec))


def test_file_name_matches_nautilus() -> None:
    for a, b in [(0, 1), (1_704_067_207_960_000_000, 1_704_153_599_999_999_999)]:
        assert c.trade_file_name(a, b) == _timestamps_to_filename(a, b)


def test_vectorised_file_is_identical_to_write_data(tmp_path: Path, day_data) -> None:  # type: ignore[no-untyped-def]
    instruments, trades = day_data
    row = instruments.filter(pl.col("instrument_key") == KEY).row(0, named=True)
    inst = build_instrument(row, FeeOverride())
    ticks = trades_to_ticks(trades, inst)
    ParquetDataCatalog(str(tmp_path / "ref")).write_data(ticks)
    c.write_day_catalog(tmp_path / "mine", DAY, {KEY: trades.to_arrow()}, instruments)
    ref = glob.glob(str(tmp_path / "ref/data/trade_tick/*/*.parquet"))
    mine = glob.glob(str(tmp_path / "mine/data/trade_tick/*/*.parquet"))
    assert [Path(p).name for p in ref] == [Path(p).name for p in mine]
    assert pq.read_table(ref[0]).equals(pq.read_table(mine[0]), check_metadata=True)

    # Nautilus reads our catalog back: same ticks, field by field
    cat = ParquetDataCatalog(str(tmp_path / "mine"))
    got = cat.trade_ticks()
    assert len(got) == len(ticks)
    for x, y in zip(got, ticks, strict=True):
        assert isinstance(x, TradeTick)
        assert (x.instrument_id, x.price, x.size, x.aggressor_side, x.trade_id, x.ts_event) == (
            y.instrument_id,
            y.price,
            y.size,
            y.aggressor_side,
            y.trade_id,
            y.ts_event,
        )
    assert [str(i.id) for i in cat.instruments()] == [str(inst.id)]
    assert len(cat.query(TradeTick, instrument_ids=[str(inst.id)])) == len(ticks)

    # and our reader gives back the trade columns exactly
    back = pl.from_arrow(c.read_day_trades(tmp_path / "mine")[KEY])
    cols = ["ts_event", "trade_id", "price", "size", "side"]
    assert back.select(cols).equals(
        trades.select(cols).with_columns(pl.col("ts_event").cast(pl.Int64))
    )


def test_empty_slice_and_missing_manifest(tmp_path: Path, day_data) -> None:  # type: ignore[no-untyped-def]
    instruments, trades = day_data
    m = c.write_day_catalog(tmp_path / "cat", DAY, {KEY: trades.head(0).to_arrow()}, instruments)
    assert m["instruments"][KEY]["rows"] == 0 and m["instruments"][KEY]["file"] is None
    assert c.read_day_trades(tmp_path / "cat")[KEY].num_rows == 0
    with pytest.raises(c.CatalogError, match="incomplete"):
        c.read_manifest(tmp_path / "nothing")


def test_upload_and_download_through_ucs(
    ucs: UnifiedCloudService, tmp_path: Path, day_data
) -> None:  # type: ignore[no-untyped-def]
    instruments, trades = day_data
    c.write_day_catalog(tmp_path / "cat", DAY, {KEY: trades.to_arrow()}, instruments)
    prefix = c.catalog_prefix(DAY, "demo")
    names = c.upload_catalog(ucs, tmp_path / "cat", prefix)
    assert names[-1] == prefix + c.MANIFEST
    local = c.download_catalog(ucs, prefix, tmp_path / "down")
    assert c.read_day_trades(local)[KEY].equals(c.read_day_trades(tmp_path / "cat")[KEY])
    with pytest.raises(c.CatalogError, match="no _manifest.json"):
        c.download_catalog(ucs, c.catalog_prefix(DAY, "other"), tmp_path / "x")


def test_trade_files_staged_ahead_give_the_catalog_of_the_stored_slices(tmp_path: Path) -> None:
    """The Dagster path writes a day's trade files from the slices it has just stored
    (``stages.stage_trades``) and the worker completes the catalog; that catalog is the one the
    worker builds from the stored object alone, file by file and byte for byte."""
    import io

    from backtest_pipeline.config import load_config
    from backtest_pipeline.data.sample import generate_sample_data
    from backtest_pipeline.run import stages

    ucs = UnifiedCloudService(str(tmp_path / "data"))
    generate_sample_data(ucs, DAY.isoformat(), 1, trades_per_day=20_000)
    config = load_config("demo")
    inst = stages.load_instruments(ucs, DAY)
    signals = stages.load_signals(ucs, config, DAY)
    slices = stages.fetch_tick_slices(
        ucs, config, DAY, inst, signals, stages.compute_intervals(signals, config, DAY)
    )
    assert slices.num_rows > 1_000
    buf = io.BytesIO()
    pq.write_table(slices, buf, compression="zstd", use_dictionary=False)
    stored = pq.ParquetFile(io.BytesIO(buf.getvalue())).read()  # as the worker reads it back

    staged = stages.stage_trades(DAY, slices, inst)
    assert list(Path(staged.directory).rglob("*.parquet"))  # the trade files, written ahead
    ahead = stages.build_catalog(ucs, DAY, "ahead", None, inst, staged=staged)
    assert not Path(staged.directory).exists()  # completed in place, then removed
    plain = stages.build_catalog(ucs, DAY, "plain", stored, inst)

    def files(scope: str) -> dict[str, bytes]:
        base = tmp_path / "data"
        found = {
            str(p.relative_to(base)).split(f"/{scope}/", 1)[1]: p.read_bytes()
            for p in base.rglob("*")
            if p.is_file() and f"/{scope}/" in str(p) and "nautilus_catalog" in str(p)
        }
        assert found, scope
        return found

    a, b = files("ahead"), files("plain")
    assert sorted(a) == sorted(b)
    for name in a:
        if name != c.MANIFEST:
            assert a[name] == b[name], name
    drop = ("scope", "uri")
    assert {k: v for k, v in ahead.items() if k not in drop} == {
        k: v for k, v in plain.items() if k not in drop
    }
    with pytest.raises(ValueError, match="slices or its staged"):
        stages.build_catalog(ucs, DAY, "x", stored, inst, staged=staged)


def test_catalog_side_codes_beyond_nautilus_are_refused(tmp_path: Path, day_data) -> None:  # type: ignore[no-untyped-def]
    """A trade file whose aggressor codes are not 0..2 is bad data, not 'none' sides."""
    instruments, trades = day_data
    c.write_day_catalog(tmp_path / "cat", DAY, {KEY: trades.to_arrow()}, instruments)
    (path,) = (tmp_path / "cat").rglob("trade_tick/*/*.parquet")
    table = pq.read_table(path)
    codes = table.column("aggressor_side").to_numpy().copy()
    codes[3] = 7
    import pyarrow as pa

    i = table.schema.get_field_index("aggressor_side")
    bad = table.set_column(i, table.schema.field(i), pa.array(codes, pa.uint8()))
    pq.write_table(bad.replace_schema_metadata(table.schema.metadata), path)
    with pytest.raises(c.CatalogError, match="aggressor_side codes beyond 0..2"):
        c.read_day_trades(tmp_path / "cat")
    # the good file reads back with its sides as written
    c.write_day_catalog(tmp_path / "ok", DAY, {KEY: trades.to_arrow()}, instruments)
    back = c.read_day_trades(tmp_path / "ok")[KEY]
    assert back.column("side").to_pylist() == trades["side"].str.to_lowercase().to_list()


def test_the_code_location_catalog_files_and_manifests_need_no_pandas(
    tmp_path: Path, day_data
) -> None:  # type: ignore[no-untyped-def]
    """The Dagster process loads the code location and writes the catalogs' trade files without
    pandas (which pyarrow imports, ~0.2-0.4 s, on its first ``pa.array`` of NumPy or Python
    values): both happen before the run's engine can start."""
    import subprocess
    import sys

    instruments, trades = day_data
    instruments.write_parquet(tmp_path / "instruments.parquet")
    trades.with_columns(instrument_key=pl.lit(KEY)).write_parquet(tmp_path / "slices.parquet")
    code = f"""
import sys, warnings
warnings.simplefilter("ignore")
from datetime import date
import pyarrow.parquet as pq
import definitions  # noqa: F401  (the code location, as dagster loads it)
from backtest_pipeline.run import stages
staged = stages.stage_trades(
    date({DAY.year}, {DAY.month}, {DAY.day}),
    pq.ParquetFile({str(tmp_path / "slices.parquet")!r}).read(),
    pq.ParquetFile({str(tmp_path / "instruments.parquet")!r}).read(),
)
assert staged.entries[{KEY!r}]["rows"] == {trades.height}, staged.entries
table = stages.manifest_table({{"instruments": staged.entries, "uri": "gs://b/p"}})
assert table.column("rows").to_pylist() == [{trades.height}]
assert table.schema == stages.MANIFEST_SCHEMA, table.schema
assert "pandas" not in sys.modules, "pandas was imported"
"""
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=repo
    )
    assert out.returncode == 0, out.stderr[-3000:]
