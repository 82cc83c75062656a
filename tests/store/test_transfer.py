"""`python -m chronoprice migrate`: a store copied exactly from SQLite to PostgreSQL and back,
resumed after more rows arrive, with counts and checksums that must agree."""

import pandas as pd
import pytest

from chronoprice.cli.main import main
from chronoprice.market.candles import aggregate_candles
from chronoprice.market.files import read_candle_csv
from chronoprice.market.source import Market
from chronoprice.store import open_store
from chronoprice.store.records import read_candles, read_matured_forecasts, upsert_candles, write_forecasts
from chronoprice.store.retention import fold_scored_steps
from chronoprice.store.transfer import TABLES, copy_store, table_checksum
from chronoprice.store.watchlist import replace_watchlist
from tests.postgres_server import PASSWORD

MARKET = Market("binanceus", "BTC/USDT", "1m")


def forecasts_from(candles: pd.DataFrame, origins: range) -> pd.DataFrame:
    """Ten steps from each origin: a made-up path around the origin close, with a band."""
    rows = []
    for origin in origins:
        close, ts = float(candles["close"].iloc[origin]), int(candles["ts"].iloc[origin])
        rows += [{"origin_ts": ts, "step": step, "target_ts": ts + step * 60_000, "predicted": close * (1 + step / 1e4),
                  "lower": close * 0.99, "upper": close * 1.01} for step in range(1, 11)]
    return pd.DataFrame(rows)


@pytest.mark.slow
def test_the_shared_datas_store_round_trips_through_postgresql_exactly(shared_csv, tmp_path, postgres_url, capsys):
    candles = read_candle_csv(shared_csv).candles
    source = open_store(tmp_path / "source.db")
    upsert_candles(source, MARKET, candles.iloc[:15_000])
    upsert_candles(source, Market("binanceus", "BTC/USDT", "1h"), aggregate_candles(candles, 3_600_000))
    write_forecasts(source, MARKET, forecasts_from(candles, range(14_000, 14_990)), "lstm-test")
    assert fold_scored_steps(source, MARKET, int(candles["ts"].iloc[14_500])) > 0, "retention's daily sums go along"
    replace_watchlist(source, [("BTC/USDT", "1m"), ("BTC/USDT", "1h")], "BTC/USDT@1m,BTC/USDT@1h")

    assert main(["migrate", "--from", str(tmp_path / "source.db"), "--to", postgres_url, "--batch", "4000"]) == 0
    printed = capsys.readouterr().out
    assert printed.count(": exact") == len(TABLES) and PASSWORD not in printed

    # More candles arrive; the copy resumes after the last row the target holds.
    upsert_candles(source, MARKET, candles.iloc[15_000:])
    target = open_store(postgres_url)
    copies = {copy.table: copy for copy in copy_store(source, target, batch=4000, progress=False)}
    assert copies["candles"].copied == len(candles) - 15_000, "only the new candles"
    assert all(copy.exact for copy in copies.values())
    pd.testing.assert_frame_equal(read_candles(target, MARKET), read_candles(source, MARKET))
    pd.testing.assert_frame_equal(read_matured_forecasts(target, MARKET), read_matured_forecasts(source, MARKET))

    back = open_store(tmp_path / "back.db")
    assert all(copy.exact for copy in copy_store(target, back, progress=False))
    assert all(table_checksum(back, table) == table_checksum(source, table) for table in TABLES), "SQLite -> PostgreSQL -> SQLite"


def test_migrate_names_a_store_it_cannot_open_and_hides_the_password(tmp_path, postgres_url, capsys):
    wrong = postgres_url.replace(PASSWORD, "wrong-password")
    assert main(["migrate", "--from", str(tmp_path / "empty.db"), "--to", wrong]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: cannot use database postgresql://chronoprice:***@") and "wrong-password" not in error
