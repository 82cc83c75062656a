"""The price chart's zoom and pan, kept across refreshes and live updates. Plotly's uirevision
does not keep them on this chart (its x axes are matched across the subplots, and a redraw
dropped a box-zoom within seconds), so the page keeps them itself: the ranges the user set, from
the chart's relayout events, are written into every redrawn figure of the same market. Pure."""

from __future__ import annotations

import re

import pandas as pd

AXIS_RANGE = re.compile(r"^(xaxis\d*|yaxis)\.range(?:\[([01])\])?$")
AXIS_AUTORANGE = re.compile(r"^(xaxis\d*|yaxis)\.autorange$")
MAX_VALUE_CHARACTERS = 40  # an axis end is a date or a price; anything longer is not from the chart
PHONE_WIDTH = 700  # px: below it the chart opens on the recent candles, so the forecast is a third of it
PHONE_CANDLES = 20


def _end(value) -> str | float | None:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    return value if not isinstance(value, str) or len(value) <= MAX_VALUE_CHARACTERS else None


def ranges_after(ranges: dict | None, relayout: dict | None) -> dict[str, list]:
    """The ranges the user has set ("x": the shared time axis, "yaxis": the price axis) after a
    relayout event: a zoom or pan sets them, a double click (autorange) clears them, and what is
    not an axis range (a resize, a legend click, a malformed value) changes nothing."""
    ranges = {axis: list(values) for axis, values in (ranges or {}).items()}
    for key, value in (relayout or {}).items():
        if (match := AXIS_AUTORANGE.match(str(key))) and value is True:
            ranges.pop("x" if match[1].startswith("x") else match[1], None)
        elif match := AXIS_RANGE.match(str(key)):
            axis = "x" if match[1].startswith("x") else match[1]
            if match[2] is None:
                ends = [_end(each) for each in value] if isinstance(value, list) and len(value) == 2 else [None, None]
                ranges[axis] = ends
            else:
                ranges.setdefault(axis, [None, None])[int(match[2])] = _end(value)
    return {axis: ends for axis, ends in ranges.items() if None not in ends}


def view_after(view: dict | None, market: str, relayout) -> dict:
    """The chart-view store after a relayout event of `market`'s chart: the user's ranges, and
    "whole" once a double click asked for the whole chart (so a phone's recent-candles default is
    not put back on the next refresh) until the next zoom or pan. Another market's view is dropped."""
    kept = view if isinstance(view, dict) and view.get("market") == market else {}
    relayout = relayout if isinstance(relayout, dict) else None
    ranges = ranges_after(kept.get("ranges"), relayout)
    asked_whole = any(AXIS_AUTORANGE.match(str(key)) and value is True for key, value in (relayout or {}).items())
    return {"market": market, "ranges": ranges, "whole": not ranges and (asked_whole or kept.get("whole") is True)}


def shown_ranges(view: dict | None, market: str, figure: dict, viewport_width) -> dict:
    """The ranges a redraw of `market`'s chart shows: the user's; else, on a phone and unless the
    user asked for the whole chart, the recent candles; else none (the whole chart)."""
    kept = view if isinstance(view, dict) and view.get("market") == market else {}
    if kept.get("ranges"):
        return kept["ranges"]
    phone = isinstance(viewport_width, (int, float)) and not isinstance(viewport_width, bool) and viewport_width < PHONE_WIDTH
    return recent_ranges(figure) if phone and kept.get("whole") is not True else {}


def with_user_ranges(figure: dict, ranges: dict | None) -> dict:
    """`figure` (a dict) with the user's ranges applied: the time range to every matched x axis."""
    if not ranges or "layout" not in figure:
        return figure
    layout = dict(figure["layout"])
    for axis, ends in ranges.items():
        for key in [name for name in layout if name.startswith("xaxis")] if axis == "x" else [axis]:
            layout[key] = {**layout.get(key, {}), "range": list(ends), "autorange": False}
    return {**figure, "layout": layout}


def recent_ranges(figure: dict, candles: int = PHONE_CANDLES) -> dict[str, list]:
    """The time range from the last `candles` closed candles to the forecast's end (a third of the
    chart for ten forecast candles): a phone's first view, where 60 candles leave the forecast a
    sliver. {} when the figure has no candles."""
    traces = {trace.get("name"): trace for trace in figure.get("data", [])}
    if "candles" not in traces or len(traces["candles"].get("x", [])) < 2:
        return {}
    shown = pd.to_datetime(pd.Series(list(traces["candles"]["x"])), utc=True)
    step = shown.iloc[-1] - shown.iloc[-2]
    end = pd.to_datetime(pd.Series(list(traces["forecast"]["x"])), utc=True).iloc[-1] if "forecast" in traces else shown.iloc[-1]
    start = shown.iloc[-min(candles, len(shown))]
    return {"x": [(start - step / 2).strftime("%Y-%m-%d %H:%M:%S"), (end + step / 2).strftime("%Y-%m-%d %H:%M:%S")]}
