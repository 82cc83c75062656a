import concurrent.futures
import logging

import pandas as pd
import pytest

from chronoprice.market.source import Market
from chronoprice.store import open_store
from chronoprice.store.claims import claim_tick, hold_lease
from chronoprice.store.records import read_candles, read_matured_forecasts, upsert_candles, write_forecasts
from chronoprice.store.retention import fold_scored_steps, step_score_sums
from tests.helpers import MINUTE_MS, make_candles
from tests.pgbouncer_server import SERVER_POOL, PgBouncer

MARKET = Market("binance", "BTC/USDT", "1m")
pytestmark = pytest.mark.slow  # a PgBouncer process in front of PostgreSQL


@pytest.fixture
def bouncer(postgres_server):
    bouncer = PgBouncer(postgres_server)
    yield bouncer
    bouncer.stop()


def forecast_steps(origin_ts: int, close: float) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "origin_ts": origin_ts,
            "step": range(1, 11),
            "target_ts": [origin_ts + n * MINUTE_MS for n in range(1, 11)],
            "predicted": close,
            "lower": close - 5,
            "upper": close + 5,
        }
    )


def test_behind_pgbouncer_in_transaction_mode_two_processes_pools_share_three_server_connections(
    bouncer, postgres_url, caplog
):
    url = bouncer.url(postgres_url)
    with caplog.at_level(logging.WARNING, "chronoprice.store.postgres"):
        first, second = open_store(url), open_store(url)  # both migrate: the advisory lock lives in one transaction
    assert "refuses startup options" in caplog.text and "s3cret" not in caplog.text
    assert first.execute("show statement_timeout").fetchone()[0] == "5s", "the bouncer's connect_query sets it"

    candles = make_candles(400)
    upsert_candles(first, MARKET, candles.iloc[:200])

    def one_process_ticking(db, offset: int) -> int:
        """Per candle what a tick does: claim, store the candle and a forecast, read the scores."""
        for index in range(200 + offset, 400, 4):
            assert claim_tick(db, f"k{offset}", int(candles["ts"].iloc[index]), 0)
            upsert_candles(db, MARKET, candles.iloc[index : index + 1])
            write_forecasts(
                db, MARKET, forecast_steps(int(candles["ts"].iloc[index]), float(candles["close"].iloc[index])), "v1"
            )
            read_matured_forecasts(db, MARKET, limit=50)
            hold_lease(db, "scheduler", f"owner{offset}", int(candles["ts"].iloc[index]), 30_000)
        return offset

    # Two "processes" of 8 connections each and four threads, through a server pool of three: a
    # statement psycopg had prepared on one server connection would be missing on the next (this
    # test fails so with psycopg's default prepare_threshold).
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        done = list(pool.map(one_process_ticking, [first, second, first, second], [0, 1, 2, 3]))
    assert done == [0, 1, 2, 3]
    assert read_candles(second, MARKET)["ts"].tolist() == candles["ts"].tolist()
    assert fold_scored_steps(first, MARKET, int(candles["ts"].iloc[300])) > 0
    assert step_score_sums(second, MARKET, 0)["count"].sum() == first.execute(
        "select count(*) from forecasts where actual is not null"
    ).fetchone()[0] + int(first.execute("select sum(scored) from forecast_days").fetchone()[0])
    assert bouncer.server_connections(postgres_url) <= SERVER_POOL
    first.close()
    second.close()
