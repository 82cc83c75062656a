import concurrent.futures
import dataclasses
import json
import time

import ccxt
import numpy as np
import pandas as pd
import pytest

from chronoprice.market.auto import AutoSource
from chronoprice.market.candles import aggregate_candles, clean_candles, find_gaps
from chronoprice.market.ccxt_rest import LiveSource, rewrite_urls
from chronoprice.market.demo import DemoSource, demo_candles
from chronoprice.market.files import CsvFormatError, read_candle_csv
from chronoprice.market.replay import ReplaySource
from chronoprice.market.source import (
    MalformedReply,
    RateLimited,
    SourceError,
    SourceUnavailable,
    UnknownExchange,
    UnknownSymbol,
)
from chronoprice.testing.exchange import BinanceSimulator, Fault, kline_row
from chronoprice.testing.harness import FakeClock, free_port
from tests.helpers import MINUTE_MS, SERIES_START_MS, make_candles, wait_until

SYMBOL = "BTC/USDT"


def nothing_stored(exchange):
    return None


HISTORY = 500  # candles of a cold start in these tests


def fast_live(url, **options):
    return LiveSource("binance", url, (), history=HISTORY, backoff_seconds=0.01, sleep=lambda seconds: None, **options)


# ------------------------------------------------------------------------ contract, every source


@dataclasses.dataclass
class Harness:
    source: object
    advance: object  # advance(minutes)


def write_data_vision_csv(path, candles):
    rows = [",".join(str(value) for value in kline_row(candle)) for candle in candles.to_dict("records")]
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture(params=["live", "replay", "demo", "auto"])
def harness(request, exchange, tmp_path, series):
    if request.param in ("live", "auto"):
        live = fast_live(exchange.url)
        source = live if request.param == "live" else AutoSource(live, DemoSource(history=HISTORY))
        return Harness(source, exchange.advance)
    if request.param == "replay":
        path = tmp_path / "BTCUSDT-1m.csv"
        write_data_vision_csv(path, series[SYMBOL].head(1000))
        clock = FakeClock()
        source = ReplaySource(path, speed=2.0, history=500, clock=clock)

        def advance(minutes):
            clock.seconds += minutes / 2.0

        return Harness(source, advance)
    now = {"ms": SERIES_START_MS + 800 * MINUTE_MS + 12_000}

    def advance(minutes):
        now["ms"] += minutes * MINUTE_MS

    return Harness(DemoSource(history=HISTORY, now_ms=lambda: now["ms"]), advance)


def test_source_contract_closed_valid_candles_then_contiguous_catch_up(harness):
    first = harness.source.fetch_closed(SYMBOL, "1m", nothing_stored)
    candles = first.candles
    assert len(candles) == 500
    assert list(candles.columns) == ["ts", "open", "high", "low", "close", "volume"]
    assert clean_candles(candles.to_numpy().tolist(), MINUTE_MS).rejected == []
    assert candles["ts"].is_monotonic_increasing and candles["ts"].is_unique
    assert find_gaps(candles["ts"].to_numpy(), MINUTE_MS).empty

    newest = int(candles["ts"].iloc[-1])
    harness.advance(5)
    later = harness.source.fetch_closed(SYMBOL, "1m", lambda exchange: newest + MINUTE_MS)
    assert later.exchange == first.exchange
    assert later.candles["ts"].tolist() == [newest + step * MINUTE_MS for step in range(1, 6)]


def test_every_source_serves_longer_timeframes_as_whole_buckets_of_its_minutes(harness):
    quarter = 15 * MINUTE_MS
    fifteen = harness.source.fetch_closed(SYMBOL, "15m", nothing_stored).candles
    minutes = harness.source.fetch_closed(SYMBOL, "1m", nothing_stored).candles
    assert len(fifteen) >= 20
    assert (fifteen["ts"] % quarter == 0).all() and find_gaps(fifteen["ts"].to_numpy(), quarter).empty
    expected = aggregate_candles(minutes, quarter)
    common = fifteen[fifteen["ts"].isin(expected["ts"])].reset_index(drop=True)
    assert len(common) >= 20
    pd.testing.assert_frame_equal(common, expected[expected["ts"].isin(common["ts"])].reset_index(drop=True), rtol=1e-9)


def test_live_fetches_each_timeframe_natively_from_the_exchange(exchange):
    hourly = fast_live(exchange.url).fetch_closed(SYMBOL, "1h", nothing_stored).candles
    assert exchange.requests["/api/v3/klines"] == 1
    pd.testing.assert_frame_equal(hourly, exchange.closed_candles(SYMBOL, "1h").tail(len(hourly)).reset_index(drop=True))
    assert hourly["ts"].iloc[-1] + 60 * MINUTE_MS <= exchange.now_ms < hourly["ts"].iloc[-1] + 120 * MINUTE_MS


def test_live_and_demo_report_the_forming_candle_apart_from_the_closed_ones(exchange):
    fetched = fast_live(exchange.url).fetch_closed(SYMBOL, "15m", nothing_stored)
    quarter = 15 * MINUTE_MS
    forming = fetched.forming.iloc[0]
    assert forming["ts"] == exchange.now_ms // quarter * quarter == fetched.candles["ts"].iloc[-1] + quarter
    whole = exchange.closed_candles(SYMBOL, "15m")  # the simulator's whole candle of that bucket is not closed yet
    assert forming["ts"] not in set(whole["ts"]) and forming["open"] > 0 and forming["low"] <= forming["close"] <= forming["high"]

    now = SERIES_START_MS + 800 * MINUTE_MS + 30_000  # 5 minutes and a half into a 15-minute candle
    demo = DemoSource(history=HISTORY, now_ms=lambda: now).fetch_closed(SYMBOL, "15m", nothing_stored)
    minutes = demo_candles(SYMBOL, now // quarter * quarter, now // MINUTE_MS * MINUTE_MS)
    so_far = demo.forming.iloc[0]
    assert so_far["ts"] == now // quarter * quarter == demo.candles["ts"].iloc[-1] + quarter
    assert so_far["open"] == minutes["open"].iloc[0] and len(minutes) == 5
    assert so_far["high"] >= minutes["high"].max() and so_far["low"] <= minutes["low"].min()
    assert minutes["volume"].sum() < so_far["volume"]


# ------------------------------------------------------------------------------- live (ccxt)


def test_live_stores_exactly_the_exchanges_closed_candles_after_catch_up(exchange):
    source = fast_live(exchange.url)
    first = source.fetch_closed(SYMBOL, "1m", nothing_stored)
    exchange.advance(2500)  # more than two pages of 1000: catch-up must paginate
    newest = int(first.candles["ts"].iloc[-1])
    later = source.fetch_closed(SYMBOL, "1m", lambda _: newest + MINUTE_MS)
    stored = pd.concat([first.candles, later.candles], ignore_index=True)
    closed = exchange.closed_candles(SYMBOL)
    assert stored["ts"].iloc[-1] == closed["ts"].iloc[-1], "the newest closed candle is stored"
    pd.testing.assert_frame_equal(stored, closed.tail(len(stored)).reset_index(drop=True))
    assert find_gaps(stored["ts"].to_numpy(), MINUTE_MS).empty
    assert exchange.requests["/api/v3/klines"] == 1 + 3


def test_live_never_returns_the_in_progress_candle(exchange):
    candles = fast_live(exchange.url).fetch_closed(SYMBOL, "1m", nothing_stored).candles
    forming_ts = exchange.now_ms // MINUTE_MS * MINUTE_MS
    assert candles["ts"].max() == forming_ts - MINUTE_MS
    assert (candles["ts"] + MINUTE_MS <= exchange.now_ms).all()


def test_live_ignores_the_local_clock_when_the_exchange_clock_is_hours_away(series):
    hours_behind = SERIES_START_MS + 3000 * MINUTE_MS + 10_000
    with BinanceSimulator(series, now_ms=hours_behind) as exchange:
        candles = fast_live(exchange.url).fetch_closed(SYMBOL, "1m", nothing_stored).candles
        assert candles["ts"].max() == hours_behind // MINUTE_MS * MINUTE_MS - MINUTE_MS


def test_rewrite_urls_keeps_paths_and_nesting():
    urls = {"public": "https://api.binance.com/api/v3", "nested": {"rest": "https://x.example/v2/"}, "name": "no url"}
    assert rewrite_urls(urls, "http://127.0.0.1:9/proxy") == {
        "public": "http://127.0.0.1:9/proxy/api/v3",
        "nested": {"rest": "http://127.0.0.1:9/proxy/v2/"},
        "name": "no url",
    }


def test_live_retries_server_errors_then_succeeds(exchange):
    exchange.queue(Fault(status=503, times=2))
    candles = fast_live(exchange.url).fetch_closed(SYMBOL, "1m", nothing_stored).candles
    assert len(candles) == 500
    assert exchange.requests["/api/v3/klines"] == 3


def test_live_honours_retry_after_on_429(exchange):
    sleeps = []
    clock = FakeClock()
    source = LiveSource("binance", exchange.url, (), history=HISTORY, backoff_seconds=0.01, sleep=sleeps.append, clock=clock)
    exchange.queue(Fault(status=429, headers={"Retry-After": "2"}))
    assert len(source.fetch_closed(SYMBOL, "1m", nothing_stored).candles) == 500
    assert sleeps == [2.0]

    exchange.queue(Fault(status=429, headers={"Retry-After": "120"}))
    with pytest.raises(RateLimited, match="120 s"):
        source.fetch_closed(SYMBOL, "1m", nothing_stored)
    calls = exchange.requests["/api/v3/klines"]
    clock.seconds += 60
    with pytest.raises(RateLimited):
        source.fetch_closed(SYMBOL, "1m", nothing_stored)
    assert exchange.requests["/api/v3/klines"] == calls, "no request before Retry-After has passed"
    clock.seconds += 61
    assert len(source.fetch_closed(SYMBOL, "1m", nothing_stored).candles) == 500


def test_live_fails_over_on_geo_block(exchange, series):
    with BinanceSimulator(series, now_ms=exchange.now_ms) as mirror:
        source = LiveSource("binance", exchange.url, (f"binanceus={mirror.url}",), history=HISTORY, backoff_seconds=0.01)
        exchange.queue(Fault(path="/", status=451, body='{"code":0,"msg":"Service unavailable from a restricted location"}', times=10))
        fetched = source.fetch_closed(SYMBOL, "1m", nothing_stored)
        assert fetched.exchange == "binanceus"
        assert "failed over from binance" in fetched.note
        assert source.label == "live: binanceus"
        assert len(fetched.candles) == 500


def test_live_fails_over_after_persistent_unavailability(exchange, series):
    with BinanceSimulator(series, now_ms=exchange.now_ms) as mirror:
        source = LiveSource("binance", exchange.url, (f"binanceus={mirror.url}",), history=HISTORY, backoff_seconds=0.0,
                            sleep=lambda s: None, failures_before_failover=2)
        assert source.fetch_closed(SYMBOL, "1m", nothing_stored).exchange == "binance"
        exchange.queue(Fault(path="/", status=503, times=100))
        with pytest.raises(SourceUnavailable, match="binance unreachable"):
            source.fetch_closed(SYMBOL, "1m", nothing_stored)
        assert source.fetch_closed(SYMBOL, "1m", nothing_stored).exchange == "binanceus"


def test_live_reports_unavailable_when_no_exchange_answers():
    url = f"http://127.0.0.1:{free_port()}"
    source = fast_live(url)
    with pytest.raises(SourceUnavailable, match="no exchange answered"):
        source.fetch_closed(SYMBOL, "1m", nothing_stored)


@pytest.mark.parametrize(
    "body",
    [
        '[[1735689600000, "1.0", "2.0"',  # truncated JSON
        "",  # empty reply
        "<html>gateway error</html>",
        '{"unexpected": "object"}',
        '[[1735689600000, "x", "y", "z", "w", "v", 0, "0", 0, "0", "0", "0"]]',  # no number in it
    ],
)
def test_live_malformed_replies_are_reported_and_store_nothing(exchange, body):
    exchange.queue(Fault(status=200, body=body))
    with pytest.raises(MalformedReply):
        fast_live(exchange.url).fetch_closed(SYMBOL, "1m", nothing_stored)


def test_live_keeps_only_candles_before_a_bad_row(exchange, series):
    rows = [kline_row(candle) for candle in series[SYMBOL].iloc[100:110].to_dict("records")]
    rows[6][2] = "0.5"  # high below low
    rows[3], rows[4] = rows[4], rows[3]  # out of order
    rows.insert(2, list(rows[2]))  # duplicated
    exchange.queue(Fault(status=200, body=pd.Series([rows]).to_json(orient="values")[1:-1]))
    fetched = fast_live(exchange.url).fetch_closed(SYMBOL, "1m", lambda _: int(series[SYMBOL]["ts"].iloc[100]))
    expected = series[SYMBOL].iloc[100:105].reset_index(drop=True)
    pd.testing.assert_frame_equal(fetched.candles, expected)  # 106 was bad; 105 is withheld as possibly forming
    assert "malformed" in fetched.note


@pytest.mark.slow
def test_markets_fetched_at_once_take_turns_on_one_client_and_never_mix_replies():
    symbols = [f"S{number}/USDT" for number in range(4)]
    with BinanceSimulator({symbol: make_candles(400, symbol) for symbol in symbols}) as exchange:
        exchange.queue(Fault(symbol="S0USDT", status=200, body="<html>bad gateway</html>", times=1000))
        source = fast_live(exchange.url, attempts=1)
        source.symbols()  # the markets, loaded once before the race

        def fetch(symbol: str) -> str:
            try:
                return f"{len(source.fetch_closed(symbol, '1m', nothing_stored).candles)} candles"
            except MalformedReply as error:
                return str(error)

        started, requests_before = time.monotonic(), exchange.requests["/api/v3/klines"]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(fetch, symbols * 5))
        elapsed, requests = time.monotonic() - started, exchange.requests["/api/v3/klines"] - requests_before
    assert all("not JSON" in reply for reply in replies[0::4]), "the bad market's own error, every time"
    assert all(reply.endswith(" candles") for index, reply in enumerate(replies) if index % 4), "never another market's reply"
    client = ccxt.binance()
    spacing = client.rateLimit * client.api["public"]["get"]["klines"]["cost"] / 1000
    # ccxt times requests in whole milliseconds, so a spacing may come out up to 1 ms short.
    assert elapsed >= (requests - 1) * (spacing - 0.001), "one client's requests spaced by its rate limit, threads or not"


def test_live_unknown_symbol_is_a_clear_error(exchange):
    with pytest.raises(UnknownSymbol, match="does not list"):
        fast_live(exchange.url).fetch_closed("DOGE/EUR", "1m", nothing_stored)


def test_live_unknown_exchange_id_lists_close_matches():
    with pytest.raises(UnknownExchange, match="did you mean binance"):
        LiveSource("binanse")


def test_live_lists_spot_symbols(exchange):
    assert fast_live(exchange.url).symbols() == ["BTC/USDT", "ETH/USDT"]


# ------------------------------------------------------------------------------------- auto


def test_auto_falls_back_to_demo_then_returns_to_live(exchange):
    exchange.queue(Fault(path="/", status=503))
    live = LiveSource("binance", exchange.url, (), history=HISTORY, backoff_seconds=0.0, sleep=lambda s: None, attempts=1)
    clock = FakeClock()
    auto = AutoSource(live, DemoSource(history=HISTORY), retry_seconds=60, clock=clock)
    fetched = auto.fetch_closed(SYMBOL, "1m", nothing_stored)
    assert fetched.exchange == "demo" and auto.label == "offline demo"
    assert "live unreachable" in fetched.note
    clock.seconds += 61
    auto.fetch_closed(SYMBOL, "1m", nothing_stored)  # starts the background probe, which now succeeds
    assert wait_until(lambda: auto.label == "live: binance")
    assert auto.fetch_closed(SYMBOL, "1m", nothing_stored).exchange == "binance"


def test_auto_shows_the_demo_soon_when_live_is_slow_to_answer_and_fails_over_once_for_all(exchange, caplog):
    exchange.queue(Fault(path="/", status=503, delay_seconds=5.0, times=10))  # live hangs, then fails
    live = LiveSource("binance", exchange.url, (), history=HISTORY, backoff_seconds=0.0, sleep=lambda s: None, attempts=1)
    auto = AutoSource(live, DemoSource(history=HISTORY), retry_seconds=600, first_answer_seconds=0.3)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # a cold start ticks every watched market at once
        fetched = list(pool.map(lambda symbol: auto.fetch_closed(symbol, "1m", nothing_stored), [SYMBOL, "ETH/USDT"] * 2))
    assert {each.exchange for each in fetched} == {"demo"} and "did not answer within 0.3 s" in fetched[0].note
    assert sum("live unreachable" in record.getMessage() for record in caplog.records) == 1, "one failover, not one a market"


# ------------------------------------------------------------------------------------- demo


def test_demo_market_is_btc_like():
    candles = demo_candles(SYMBOL, SERIES_START_MS, SERIES_START_MS + 20 * 1440 * MINUTE_MS)
    returns = np.diff(np.log(candles["close"].to_numpy()))
    assert 0.0005 <= returns.std() <= 0.001
    kurtosis = ((returns - returns.mean()) ** 4).mean() / returns.var() ** 2
    assert kurtosis > 5, "fat tails"
    magnitude = np.abs(returns)
    assert np.corrcoef(magnitude[:-30], magnitude[30:])[0, 1] > 0.05, "volatility clusters"
    assert clean_candles(candles.to_numpy().tolist(), MINUTE_MS).rejected == []
    assert (candles["open"].to_numpy()[1:] == candles["close"].to_numpy()[:-1]).all()


def test_demo_market_is_deterministic_and_continuous_across_calls():
    whole = demo_candles(SYMBOL, SERIES_START_MS, SERIES_START_MS + 3000 * MINUTE_MS)
    parts = pd.concat(
        [demo_candles(SYMBOL, SERIES_START_MS, SERIES_START_MS + 1700 * MINUTE_MS),
         demo_candles(SYMBOL, SERIES_START_MS + 1700 * MINUTE_MS, SERIES_START_MS + 3000 * MINUTE_MS)],
        ignore_index=True,
    )
    pd.testing.assert_frame_equal(whole, parts)
    assert not demo_candles("ETH/USDT", SERIES_START_MS, SERIES_START_MS + 10 * MINUTE_MS).equals(whole.head(10))


# ----------------------------------------------------------------------------------- replay


def test_replay_reads_data_vision_microsecond_epochs(tmp_path, series):
    path = tmp_path / "us.csv"
    candles = series[SYMBOL].head(50)
    rows = [kline_row(candle) for candle in candles.to_dict("records")]
    path.write_text("\n".join(",".join(str(v) for v in [row[0] * 1000] + row[1:]) for row in rows))
    pd.testing.assert_frame_equal(read_candle_csv(path).candles, candles)


def test_replay_reads_headed_iso_and_epoch_csvs(tmp_path, series):
    candles = series[SYMBOL].head(30)
    iso = candles.assign(open_time=pd.to_datetime(candles["ts"], unit="ms", utc=True).astype(str))
    iso[["open_time", "open", "high", "low", "close", "volume"]].to_csv(tmp_path / "iso.csv", index=False)
    epoch = candles.assign(timestamp=candles["ts"] // 1000)
    epoch[["timestamp", "open", "high", "low", "close", "volume"]].to_csv(tmp_path / "epoch.csv", index=False)
    for name in ("iso.csv", "epoch.csv"):
        loaded = read_candle_csv(tmp_path / name)
        assert loaded.bad_rows == []
        pd.testing.assert_frame_equal(loaded.candles, candles, check_exact=False, rtol=1e-12)


def test_replay_reports_bad_rows_with_line_numbers_and_skips_them(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(
        "open_time,open,high,low,close,volume\n"
        "2023-03-01 00:00:00+00:00,100,101,99,100.5,1\n"
        "2023-03-01 00:01:00+00:00,100,101,99,not-a-price,1\n"
        "2023-03-01 00:02:00+00:00,100,101\n"
        "yesterday,100,101,99,100.5,1\n"
        "2023-03-01 00:04:00+00:00,100,99,101,100.5,1\n"
        "2023-03-01 00:05:00+00:00,100,101,99,100.5,1\n"
    )
    loaded = read_candle_csv(path)
    assert len(loaded.candles) == 2
    assert [line for line, _ in loaded.bad_rows] == [3, 4, 5, 6]
    assert "fields" in loaded.bad_rows[1][1]
    assert "timestamp" in loaded.bad_rows[2][1]
    assert "below low" in loaded.bad_rows[3][1]


def test_replay_rejects_a_file_it_cannot_use(tmp_path):
    (tmp_path / "wrong.csv").write_text("when,price\n2023-03-01,100\n")
    with pytest.raises(CsvFormatError, match="lacks"):
        read_candle_csv(tmp_path / "wrong.csv")
    with pytest.raises(CsvFormatError, match="cannot read"):
        read_candle_csv(tmp_path / "absent.csv")


def test_replay_shared_binance_us_file_loads_completely(shared_csv):
    loaded = read_candle_csv(shared_csv)
    assert len(loaded.candles) == 20_160 and loaded.bad_rows == []
    assert find_gaps(loaded.candles["ts"].to_numpy(), MINUTE_MS).empty


def test_replay_advances_at_its_speed_and_says_when_finished(tmp_path):
    path = tmp_path / "short.csv"
    write_data_vision_csv(path, make_candles(600))
    clock = FakeClock()
    source = ReplaySource(path, speed=10.0, history=500, clock=clock)
    assert len(source.fetch_closed(SYMBOL, "1m", nothing_stored).candles) == 500
    clock.seconds += 3
    assert len(source.fetch_closed(SYMBOL, "1m", nothing_stored).candles) == 530
    clock.seconds += 100
    fetched = source.fetch_closed(SYMBOL, "1m", nothing_stored)
    assert len(fetched.candles) == 600 and "replay finished" in fetched.note
    assert source.label == "replay: short.csv"


def test_replay_plays_a_five_minute_freqtrade_file_and_refuses_finer_candles(tmp_path):
    five = aggregate_candles(make_candles(3000), 5 * MINUTE_MS)
    (tmp_path / "five.json").write_text(json.dumps(five[["ts", "open", "high", "low", "close", "volume"]].values.tolist()))
    source = ReplaySource(tmp_path / "five.json", history=120, clock=FakeClock())
    shown = source.fetch_closed(SYMBOL, "5m", nothing_stored).candles
    assert len(shown) == 120 and (np.diff(shown["ts"]) == 5 * MINUTE_MS).all()
    assert len(source.fetch_closed(SYMBOL, "15m", nothing_stored).candles) == 40
    with pytest.raises(SourceError, match="holds 5m candles: no 1m candles"):
        source.fetch_closed(SYMBOL, "1m", nothing_stored)
