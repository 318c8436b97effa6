"""The benchmark of docs/targets.md (`backtest bench`)."""
