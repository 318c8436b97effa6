"""Signal-driven execution backtests on NautilusTrader."""
