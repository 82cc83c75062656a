"""The backtest after costs (evaluation/backtest.py) against cases worked out by hand."""

import math

import numpy as np
import pytest

from chronoprice.evaluation.backtest import backtest, format_backtest

# Closes 100 -> 110 -> 99 -> 99 -> 108.9 -> 108.9: candle returns +10 %, -10 %, 0, +10 %, 0.
CLOSES = np.array([100, 110, 99, 99, 108.9, 108.9])
MOVES = np.array([0.05, 0.05, 0.0, -0.05, 0.01])  # the forecast's move from each origin's close


def hand_case(fee=0.01, spread=0.0):
    predicted = (CLOSES[:-1] * (1 + MOVES))[:, None]
    return backtest(CLOSES[:-1], CLOSES[1:], predicted, step=1, fee=fee, spread=spread)


def test_long_flat_pays_a_fee_each_way_and_its_drawdown_is_from_the_peak():
    result = hand_case()
    assert result["threshold"] == pytest.approx(0.02)  # a round trip at 1 % a side
    long_flat = result["strategies"]["long_flat"]
    # Long over the first two candles (entry at 100, exit at 99), flat after.
    assert long_flat["gross_return"] == pytest.approx(1.1 * 0.9 - 1)
    assert long_flat["net_return"] == pytest.approx(1.1 * 0.99 * 0.9 * 0.99 - 1)
    assert long_flat["max_drawdown"] == pytest.approx((1.1 * 0.99 * 0.9 * 0.99) / (1.1 * 0.99) - 1)
    assert long_flat["trades"] == 1 and long_flat["turnover"] == 2
    assert long_flat["hit_rate"] == 0.5 and long_flat["time_in_market"] == pytest.approx(0.4)


def test_long_short_flips_pay_for_both_units_and_an_open_position_pays_its_exit():
    long_short = hand_case()["strategies"]["long_short"]
    # Long, long, flat, short (the close rises 10 % against it), flat.
    assert long_short["gross_return"] == pytest.approx(1.1 * 0.9 * 1 * 0.9 * 1 - 1)
    assert long_short["net_return"] == pytest.approx(1.1 * 0.99 * 0.9 * 0.99 * 0.9 * 0.99 * 0.99 - 1)
    assert long_short["trades"] == 2 and long_short["turnover"] == 4
    ended_short = backtest(CLOSES[:3], CLOSES[1:4], (CLOSES[:3] * 0.9)[:, None], step=1, fee=0.01)["strategies"]["long_short"]
    assert ended_short["net_return"] == pytest.approx(0.9 * 0.99 * 1.1 * 1.0 * 0.99 - 1)  # still short at the end: exit charged


def test_the_spread_costs_half_a_side():
    by_fee, by_spread = hand_case(fee=0.01), hand_case(fee=0.0, spread=0.02)
    assert by_spread["threshold"] == pytest.approx(by_fee["threshold"])
    for name, row in by_fee["strategies"].items():
        assert by_spread["strategies"][name]["net_return"] == pytest.approx(row["net_return"])


def test_buy_and_hold_earns_the_closes_own_return_and_flat_nothing():
    closes = 100 * np.exp(np.cumsum(np.random.default_rng(3).normal(0, 0.002, 501)))
    predicted = closes[:-1, None] * np.ones((1, 10))
    result = backtest(closes[:-1], closes[1:], predicted, step=10, fee=0.001)
    hold, flat = result["strategies"]["buy_and_hold"], result["strategies"]["flat"]
    assert hold["gross_return"] == pytest.approx(closes[-1] / closes[0] - 1, rel=1e-9)
    assert hold["net_return"] == pytest.approx((closes[-1] / closes[0]) * 0.999 ** 2 - 1, rel=1e-9)
    assert flat["net_return"] == flat["gross_return"] == flat["max_drawdown"] == 0 and flat["sharpe"] is None
    low, high = hold["net_return_95"]
    assert low < hold["net_return"] < high
    # A forecast of no move never clears the costs.
    assert result["strategies"]["long_short"]["trades"] == 0


def test_a_candle_return_depends_only_on_forecasts_made_before_it():
    closes = 100 * np.exp(np.cumsum(np.random.default_rng(4).normal(0, 0.003, 301)))
    predicted = closes[:-1, None] * np.exp(np.random.default_rng(5).normal(0, 0.004, (300, 3)))
    before = backtest(closes[:-1], closes[1:], predicted, step=3, fee=0.0005)["curves"]
    changed = predicted.copy()
    changed[200:] = closes[200:-1, None] * 1.5  # every later forecast changed
    after = backtest(closes[:-1], closes[1:], changed, step=3, fee=0.0005)["curves"]
    for name in before:
        np.testing.assert_array_equal(before[name][:200], after[name][:200])
    assert not np.array_equal(before["long_flat"][200:], after["long_flat"][200:])


def test_sharpe_is_annualised_for_the_timeframe():
    closes = 100 * np.exp(np.cumsum(np.random.default_rng(6).normal(0.0001, 0.002, 401)))
    predicted = closes[:-1, None] * 1.01
    minute = backtest(closes[:-1], closes[1:], predicted, step=1, fee=0.001, timeframe_minutes=1)
    hour = backtest(closes[:-1], closes[1:], predicted, step=1, fee=0.001, timeframe_minutes=60)
    assert minute["strategies"]["long_flat"]["sharpe"] == pytest.approx(hour["strategies"]["long_flat"]["sharpe"] * math.sqrt(60))


@pytest.mark.parametrize("change, message", [({"step": 4}, "between 1 and 3"), ({"fee": -0.001}, "negative")])
def test_bad_backtest_settings_are_refused(change, message):
    closes = np.linspace(100, 101, 11)
    arguments = {"step": 1, "fee": 0.001, **change}
    with pytest.raises(ValueError, match=message):
        backtest(closes[:-1], closes[1:], np.ones((10, 3)) * 100, **arguments)


def test_the_table_names_every_strategy_and_the_costs():
    text = format_backtest(hand_case())
    assert "2.000 %" in text and "1 % fee a side" in text
    assert [line.split()[0] for line in text.splitlines()[2:]] == ["long_flat", "long_short", "buy_and_hold", "flat"]
