"""The seed system's approach, kept only as the benchmark's point of comparison.

Whole day files downloaded, converted with pandas and `TradeTickDataWrangler`, written object by
object into a `ParquetDataCatalog`, then a `BacktestNode` over whole days with a strategy that
executes the same signals as market orders. This is what the product replaces; timing it on the
same workload gives `naive_over_ours`.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
from nautilus_trader.backtest.node import BacktestNode
from nautilus_trader.config import (
    BacktestDataConfig,
    BacktestEngineConfig,
    BacktestRunConfig,
    BacktestVenueConfig,
    ImportableStrategyConfig,
    LoggingConfig,
    StrategyConfig,
)
from nautilus_trader.model.data import TradeTick
from nautilus_trader.model.enums import OrderSide
from nautilus_trader.model.identifiers import InstrumentId
from nautilus_trader.persistence.catalog import ParquetDataCatalog
from nautilus_trader.persistence.wranglers import TradeTickDataWrangler
from nautilus_trader.trading.strategy import Strategy


class NaiveSignalConfig(StrategyConfig, frozen=True):
    instrument_id: str
    signals: list[tuple[int, float]]  # (ts_event ns, target position)


class NaiveSignalStrategy(Strategy):
    """Market order to the target at each signal time: the seed's execution, no layers."""

    def __init__(self, config: NaiveSignalConfig) -> None:
        super().__init__(config)
        self.iid = InstrumentId.from_str(config.instrument_id)
        self.targets = dict(config.signals)

    def on_start(self) -> None:
        self.subscribe_trade_ticks(self.iid)
        for i, ts in enumerate(sorted(self.targets)):
            if ts > self.clock.timestamp_ns():
                self.clock.set_time_alert_ns(f"sig-{i}", ts, self._on_signal)

    def _on_signal(self, event: Any) -> None:
        target = self.targets[event.ts_event]
        inst = self.cache.instrument(self.iid)
        net = self.portfolio.net_position(self.iid)
        qty = round(abs(target - float(net)) / float(inst.size_increment)) * float(
            inst.size_increment
        )
        if qty <= 0:
            return
        side = OrderSide.BUY if target > float(net) else OrderSide.SELL
        self.submit_order(
            self.order_factory.market(self.iid, side, inst.make_qty(Decimal(str(qty))))
        )

    def on_trade_tick(self, tick: TradeTick) -> None:
        pass


def run_naive(root: str, start: str, end: str, config_path: Path) -> dict[str, Any]:
    from backtest_pipeline import layout
    from backtest_pipeline.config import BacktestConfig, FeeOverride
    from backtest_pipeline.engine.instruments import (
        build_instrument,
        instrument_id_for,
        to_nautilus_venue,
    )
    from backtest_pipeline.storage.ucs import UnifiedCloudService

    cfg = BacktestConfig.from_yaml(config_path)
    key = cfg.instruments[0]
    ucs = UnifiedCloudService(root)
    catalog_dir = Path(tempfile.mkdtemp(prefix="naive-catalog-"))
    t0 = time.perf_counter()
    try:
        catalog = ParquetDataCatalog(str(catalog_dir))
        signals: list[tuple[int, float]] = []
        instrument = None
        for day in layout.days_between(start, end):
            raw_instr = ucs.download_from_gcs_sync(
                layout.target("instruments"), layout.instruments_path(day), format="bytes"
            )
            idf = pd.read_parquet(io.BytesIO(raw_instr))
            row = idf[idf["instrument_key"] == key].iloc[0].to_dict()
            if instrument is None:
                instrument = build_instrument(row, FeeOverride())
                catalog.write_data([instrument])
            raw = ucs.download_from_gcs_sync(
                layout.target("ticks"), layout.trades_path(day, key), format="bytes"
            )
            df = pd.read_parquet(io.BytesIO(raw))
            df = df.rename(columns={"size": "quantity", "side": "aggressor_side"})
            df["aggressor_side"] = df["aggressor_side"].map({"buy": "BUY", "sell": "SELL"})
            df["timestamp"] = pd.to_datetime(df["ts_event"], unit="ns", utc=True)
            df = df.set_index("timestamp")[["price", "quantity", "aggressor_side", "trade_id"]]
            ticks = TradeTickDataWrangler(instrument).process(df)
            catalog.write_data(ticks)
            raw_sig = ucs.download_from_gcs_sync(
                layout.target("signals"), layout.signals_path(day, cfg.strategy_id), format="bytes"
            )
            sdf = pd.read_parquet(io.BytesIO(raw_sig))
            sdf = sdf[sdf["instrument_key"] == key]
            signals += [
                (int(t), float(p))
                for t, p in zip(sdf["ts_event"], sdf["target_position"], strict=True)
            ]
        iid = str(instrument_id_for(key))
        venue = to_nautilus_venue(key.split(":")[0])
        run = BacktestRunConfig(
            dispose_on_completion=False,
            engine=BacktestEngineConfig(
                strategies=[
                    ImportableStrategyConfig(
                        strategy_path="benchmarks.naive:NaiveSignalStrategy",
                        config_path="benchmarks.naive:NaiveSignalConfig",
                        config={"instrument_id": iid, "signals": signals},
                    )
                ],
                logging=LoggingConfig(bypass_logging=True),
            ),
            venues=[
                BacktestVenueConfig(
                    name=venue,
                    oms_type="NETTING",
                    account_type="MARGIN",
                    base_currency="USDT",
                    starting_balances=[f"{cfg.venue(key.split(':')[0]).starting_balance} USDT"],
                )
            ],
            data=[
                BacktestDataConfig(
                    catalog_path=str(catalog_dir), data_cls=TradeTick, instrument_id=iid
                )
            ],
        )
        node = BacktestNode(configs=[run])
        results = node.run()
        seconds = time.perf_counter() - t0
        engine = node.get_engine(run.id)
        fills = len(engine.trader.generate_fills_report()) if engine is not None else -1
        return {"seconds": seconds, "fills": fills, "results": len(results)}
    finally:
        shutil.rmtree(catalog_dir, ignore_errors=True)
