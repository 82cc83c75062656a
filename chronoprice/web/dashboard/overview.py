"""The overview page, pure: one row per watched market, sortable by any column, with a text
sparkline of its recent closes and forecast, and a link to its chart page.

A plain table rather than dash_table.DataTable, which Dash 4 deprecates: the rows are few, and
sorting them on the server keeps the page light on a phone.
"""

from __future__ import annotations

from dash import dcc, html

from chronoprice.evaluation.metrics import DEFAULT_LEVEL, UNDERCOVERAGE_POINTS, undercovered
from chronoprice.market.timeframes import TIMEFRAME_MS, timeframe_ms
from chronoprice.model.forecasters import NaiveBandForecaster
from chronoprice.service.overview import MarketSummary
from chronoprice.web.dashboard.urls import market_search

BLOCKS = "▁▂▃▄▅▆▇█"
# (key, heading, digits for numbers; None for text)
COLUMNS = [
    ("market", "Market", None), ("price", "Last price", 2), ("change", "24 h %", 2), ("trend", "Closes ┆ forecast", None),
    ("forecast", "Forecast, 10 candles (90 % band)", None), ("mae_ratio", "MAE vs last close", 4), ("dm_p", "DM p, last step", 3),
    ("coverage", "Band coverage %", 1), ("age_minutes", "Newest close, min ago", 0), ("status", "Status", None),
]
DEFAULT_SORT = {"key": "market", "descending": False}


def market_path(symbol: str, timeframe: str) -> str:
    return "/market" + market_search(symbol, timeframe)


def sparkline(closes: list[float], forecast: list[float]) -> str:
    """Closes, a divider, then the forecast, as block characters on one shared scale."""
    values = closes + forecast
    if not values:
        return ""
    low, span = min(values), (max(values) - min(values)) or 1.0

    def blocks(series: list[float]) -> str:
        return "".join(BLOCKS[min(len(BLOCKS) - 1, int((value - low) / span * len(BLOCKS)))] for value in series)

    return blocks(closes) + ("┆" + blocks(forecast) if forecast else "")


def overview_row(summary: MarketSummary, now_ms: int) -> dict:
    """The values of one row, numbers unformatted so they sort as numbers."""
    naive = summary.model_version == NaiveBandForecaster.version
    forecast = "–"
    if summary.forecast:
        forecast = (f"{summary.forecast[-1]:,.2f} ({summary.lower:,.2f}–{summary.upper:,.2f})"
                    + (", last close" if naive else ", last close: skill guard" if summary.guarded else ""))
    return {
        "market": f"{summary.symbol} {summary.timeframe}", "path": market_path(summary.symbol, summary.timeframe),
        "price": summary.last_price, "change": summary.change_24h_pct, "trend": sparkline(summary.closes, summary.forecast),
        "forecast": forecast, "mae_ratio": None if naive else summary.mae_ratio, "dm_p": None if naive else summary.dm_p_value,
        "coverage": None if summary.coverage is None else 100 * summary.coverage,
        "undercovered": undercovered(summary.coverage, summary.matured_origins),
        "age_minutes": None if summary.newest_ts is None else max(0, (now_ms - closed_at(summary)) // 60_000),
        "status": summary.status if not summary.error else f"{summary.status}: {summary.error}",
    }


def closed_at(summary: MarketSummary) -> int:
    """When the newest candle closed: its open plus one candle (a healthy 1h market is 0-60 min old)."""
    return summary.newest_ts + timeframe_ms(summary.timeframe)


def number_text(value: float, digits: int) -> str:
    """A number as the table shows it; one that rounds to zero has no sign ("0.00", never "-0.00")."""
    text = f"{value:,.{digits}f}"
    return text.lstrip("-") if float(text.replace(",", "")) == 0 else text


def sorted_rows(rows: list[dict], sort: dict) -> list[dict]:
    """Rows by `sort["key"]`, empty values last either way."""
    key, descending = sort.get("key", "market"), bool(sort.get("descending"))
    present = [row for row in rows if row.get(key) is not None]
    return sorted(present, key=lambda row: row[key], reverse=descending) + [row for row in rows if row.get(key) is None]


def _cell(row: dict, key: str, digits: int | None) -> html.Td:
    value = row[key]
    if key == "market":
        return html.Td(dcc.Link(value, href=row["path"]))
    if digits is None or value is None:
        return html.Td("–" if value is None else value, className="text")
    if key == "coverage" and row.get("undercovered"):
        return html.Td(f"⚠ {number_text(value, digits)}", className="number warning",
                       title=f"more than {UNDERCOVERAGE_POINTS:.0%} below the band's {DEFAULT_LEVEL:.0%}: it is too narrow")
    return html.Td(number_text(value, digits), className="number")


def _unwatch(row: dict) -> html.Td:
    return html.Td(html.Button("✕", id={"type": "unwatch", "market": row["market"]}, n_clicks=0, className="unwatch",
                               title=f"stop watching {row['market']}"))


def table_body(rows: list[dict], sort: dict) -> list[html.Tr]:
    if not rows:
        return [html.Tr(html.Td("No market is watched: add one above, with POST /api/v1/markets or --watch.",
                                colSpan=len(COLUMNS) + 1))]
    return [html.Tr([_cell(row, key, digits) for key, _, digits in COLUMNS] + [_unwatch(row)]) for row in sorted_rows(rows, sort)]


def sort_after_click(sort: dict, key: str) -> dict:
    """A click on a column's heading sorts by it; a second click reverses the order."""
    return {"key": key, "descending": not sort.get("descending") if sort.get("key") == key else False}


def overview_section() -> html.Section:
    return html.Section(className="panel", children=[
        html.H2("Watched markets"),
        html.P("Every market here is forecast on each of its candle closes, whether or not anyone is looking. "
               "MAE below 1 beats repeating the last close; DM p, last step, is the Diebold-Mariano test of that at the "
               "last step (small means significant); ⚠ marks a band that covers too little. Click a heading to sort, a market for its chart.", className="verdict"),
        dcc.Store(id="overview-sort", data=DEFAULT_SORT),
        dcc.Store(id="watchlist-changed", data=0),
        html.Div(className="watch-form", children=[
            dcc.Input(id="watch-symbol", type="text", placeholder="add a market, e.g. SOL/USDT", spellCheck=False, autoComplete="off"),
            dcc.RadioItems(id="watch-timeframe", options=list(TIMEFRAME_MS), value="1m", inline=True, className="timeframes"),
            dcc.Input(id="admin-token", type="password", placeholder="admin token, if the server has one", autoComplete="off"),
            html.Button("Watch", id="watch-add", n_clicks=0),
            html.Div(id="watch-message", className="inline-message", role="status"),
        ]),
        html.Div(className="table-scroll", children=html.Table(id="overview-table", className="overview", children=[
            html.Thead(html.Tr([html.Th(html.Button(heading, id={"type": "overview-sort", "key": key}, n_clicks=0))
                                for key, heading, _ in COLUMNS] + [html.Th("")])),
            html.Tbody(id="overview-body"),
        ])),
    ])
