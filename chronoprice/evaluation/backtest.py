"""Would trading on the forecasts have paid? Pure: a walk-forward's closes and forecasts in,
the strategies' returns, risk and trading figures out, beside buy-and-hold and staying flat.

At each origin's close the strategy sets its position for the next candle from the forecast's
move at one step: long (or short) when the predicted move is larger than a round trip's costs,
flat otherwise. Only what is known at that close is used. Costs are charged on every change of
position, a fee per side plus half the bid-ask spread, as a fraction of the capital traded; a
position still open after the last candle pays its exit.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_FEE = 0.001  # a side: Binance's base spot fee
DEFAULT_SPREAD = 0.0  # the full bid-ask spread, as a fraction of the price; each side pays half
BOOTSTRAP_SAMPLES = 1000
MINUTES_A_YEAR = 365 * 24 * 60  # crypto markets never close


def signal_positions(moves: np.ndarray, threshold: float, allow_short: bool) -> np.ndarray:
    """+1 where the predicted move exceeds `threshold`, -1 below -threshold when shorting is
    allowed, else 0."""
    long = (moves > threshold).astype("float64")
    return long - (moves < -threshold) if allow_short else long


def position_changes(positions: np.ndarray) -> np.ndarray:
    """Units traded at each close: [N] positions held over the next candle -> [N + 1], the last
    being the exit of whatever is open after the last candle."""
    return np.abs(np.diff(positions, prepend=0.0, append=0.0))


def net_returns(positions: np.ndarray, candle_returns: np.ndarray, side_cost: float) -> tuple[np.ndarray, np.ndarray]:
    """Each candle's return on capital before and after costs; the final exit is charged to the
    last candle."""
    gross = positions * candle_returns
    changes = position_changes(positions)
    costs = side_cost * changes[:-1]
    costs[-1] += side_cost * changes[-1]
    return gross, (1 + gross) * (1 - costs) - 1


def capital(returns: np.ndarray) -> np.ndarray:
    """Capital from 1 through each candle's return: [N] -> [N + 1]."""
    return np.concatenate([[1.0], np.cumprod(1 + returns)])


def max_drawdown(returns: np.ndarray) -> float:
    """The largest fall of capital from a previous peak (negative), starting from 1."""
    equity = capital(returns)
    return float((equity / np.maximum.accumulate(equity) - 1).min())


def sharpe_ratio(returns: np.ndarray, periods_a_year: float) -> float | None:
    """Annualised mean over standard deviation of the per-candle returns (no risk-free rate);
    None when the returns never vary."""
    deviation = returns.std(ddof=1) if len(returns) > 1 else 0.0
    return float(returns.mean() / deviation * math.sqrt(periods_a_year)) if deviation > 0 else None


def block_bootstrap_intervals(returns: np.ndarray, periods_a_year: float, samples: int = BOOTSTRAP_SAMPLES,
                              seed: int = 0) -> dict:
    """95 % moving-block bootstrap intervals of the net return and the Sharpe ratio: blocks of
    about N^(1/3) candles keep the returns' short-range dependence."""
    count = len(returns)
    block = max(1, round(count ** (1 / 3)))
    starts = np.random.default_rng(seed).integers(0, count - block + 1, size=(samples, math.ceil(count / block)))
    resampled = returns[(starts[:, :, None] + np.arange(block)).reshape(samples, -1)[:, :count]]
    totals = np.prod(1 + resampled, axis=1) - 1
    deviations = resampled.std(axis=1, ddof=1)
    sharpes = np.divide(resampled.mean(axis=1), deviations, out=np.zeros(samples), where=deviations > 0) * math.sqrt(periods_a_year)
    return {"net_return_95": [float(value) for value in np.percentile(totals, [2.5, 97.5])],
            "sharpe_95": [float(value) for value in np.percentile(sharpes, [2.5, 97.5])]}


def strategy_summary(gross: np.ndarray, net: np.ndarray, positions: np.ndarray, periods_a_year: float) -> dict:
    held = positions != 0
    changes = position_changes(positions)
    opened = np.diff(positions, prepend=0.0)[held] != 0
    return {
        "gross_return": float(np.prod(1 + gross) - 1),
        "net_return": float(np.prod(1 + net) - 1),
        "sharpe": sharpe_ratio(net, periods_a_year),
        "max_drawdown": max_drawdown(net),
        "hit_rate": float((gross[held] > 0).mean()) if held.any() else None,
        "time_in_market": float(held.mean()),
        "turnover": float(changes.sum()),
        "trades": int(opened.sum()),
        **block_bootstrap_intervals(net, periods_a_year),
    }


def check_settings(step: int, horizon: int, fee: float, spread: float) -> None:
    """ValueError naming what is wrong, before any forecasting is spent on a backtest."""
    if not 1 <= step <= horizon:
        raise ValueError(f"backtest step must be between 1 and {horizon}, got {step}")
    if fee < 0 or spread < 0:
        raise ValueError("fee and spread must not be negative")


def backtest(origin_closes: np.ndarray, next_closes: np.ndarray, predicted: np.ndarray, step: int,
             fee: float = DEFAULT_FEE, spread: float = DEFAULT_SPREAD, timeframe_minutes: int = 1) -> dict:
    """Long/flat and long/short on the forecast's move at `step`, buy-and-hold and flat.

    origin_closes [N] and next_closes [N]: each origin's close and the next candle's, for N
    consecutive origins; predicted [N, horizon]: each origin's forecast path. `curves` holds
    each strategy's net return a candle, for plotting.
    """
    origin_closes, next_closes = np.asarray(origin_closes, "float64"), np.asarray(next_closes, "float64")
    if len(origin_closes) < 2:
        raise ValueError("a backtest needs at least two consecutive origins")
    check_settings(step, predicted.shape[1], fee, spread)
    side_cost = fee + spread / 2
    threshold = 2 * side_cost
    moves = predicted[:, step - 1] / origin_closes - 1
    candle_returns = next_closes / origin_closes - 1
    periods = MINUTES_A_YEAR / timeframe_minutes
    strategies = {
        "long_flat": signal_positions(moves, threshold, allow_short=False),
        "long_short": signal_positions(moves, threshold, allow_short=True),
        "buy_and_hold": np.ones(len(moves)),
        "flat": np.zeros(len(moves)),
    }
    returns = {name: net_returns(positions, candle_returns, side_cost) for name, positions in strategies.items()}
    return {
        "step": step, "fee": fee, "spread": spread, "threshold": threshold, "candles": len(moves),
        "strategies": {name: strategy_summary(*returns[name], positions, periods) for name, positions in strategies.items()},
        "curves": {name: net for name, (_, net) in returns.items()},
    }


def format_backtest(result: dict) -> str:
    """The strategies as a table, in percent, with their 95 % intervals."""
    lines = [f"backtest after costs over {result['candles']} candles: long when the forecast's move at step {result['step']} "
             f"exceeds {result['threshold'] * 100:.3f} % (a round trip at {result['fee'] * 100:g} % fee a side and "
             f"{result['spread'] * 100:g} % spread), short below minus that; positions set at each close for the next candle",
             "strategy       gross %    net %  (95 % CI)            Sharpe  (95 % CI)         max DD %  hit rate  in market  trades  turnover"]
    for name, row in result["strategies"].items():
        low, high = (value * 100 for value in row["net_return_95"])
        sharpe = "     n/a" if row["sharpe"] is None else f"{row['sharpe']:8.2f}"
        hit = "     n/a" if row["hit_rate"] is None else f"{row['hit_rate']:8.3f}"
        lines.append(f"{name:<13} {row['gross_return'] * 100:8.3f} {row['net_return'] * 100:8.3f}  ({low:8.3f} to {high:8.3f})  "
                     f"{sharpe}  ({row['sharpe_95'][0]:6.2f} to {row['sharpe_95'][1]:6.2f})  {row['max_drawdown'] * 100:8.3f}  "
                     f"{hit}  {row['time_in_market']:9.3f}  {row['trades']:6d}  {row['turnover']:8.0f}")
    return "\n".join(lines)
