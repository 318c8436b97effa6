"""The benchmark of spec/targets.md (`backtest bench`)."""
