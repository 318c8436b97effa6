"""Dagster assets, one module per group: inputs, catalog, backtest (+ their checks)."""
