// The forming candle and the last price follow the exchange: once a second the market page asks
// /api/v1/live (which reads memory or Redis, never the exchange) and fills in the chart's
// "forming" trace, without a server callback or a redraw of the rest. After a refresh redraws the
// chart from the last tick, the newest live candle is put back at once, so it never steps back.
(function () {
  const latest = {market: null, candle: null};

  async function fetchForming(symbol, timeframe) {
    const response = await fetch("/api/v1/live?" + new URLSearchParams({symbol, timeframe}), {cache: "no-store"});
    return response.ok ? (await response.json()).candle : null;
  }

  function utcIso(ts) {
    return new Date(ts).toISOString().slice(0, 19); // as plotly serialises the chart's UTC times
  }

  function price(value) {
    // As the server writes it (Python's f"{value:,.2f}"): toFixed rounds the exact binary value as
    // Python does, where toLocaleString would round 27108.335 the other way.
    const [whole, cents] = value.toFixed(2).split(".");
    return whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",") + "." + cents;
  }

  window.dash_clientside = Object.assign({}, window.dash_clientside, {
    chronoprice: Object.assign({}, (window.dash_clientside || {}).chronoprice, {
      followLive: async function (_, figure, symbol, timeframe, hidden) {
        const dc = window.dash_clientside;
        const unchanged = [dc.no_update, dc.no_update, dc.no_update];
        const polled = dc.callback_context.triggered.some((item) => item.prop_id === "live-poll.n_intervals");
        const candles = figure && figure.data ? figure.data.find((trace) => trace.uid === "candles") : null;
        if (hidden || !candles || !candles.x || !candles.x.length) {
          return unchanged; // no candle drawn yet: the first tick has not stored any, so there is nothing live to ask for
        }
        const market = symbol + "@" + timeframe;
        if (polled) {
          try {
            latest.candle = await fetchForming(symbol, timeframe);
            latest.market = market;
          } catch (error) {
            return unchanged; // offline for a moment: the next poll tries again
          }
        }
        const forming = figure.data.findIndex((trace) => trace.uid === "forming");
        const candle = latest.candle;
        if (latest.market !== market || !candle || forming < 0) {
          return unchanged;
        }
        if (candle.ts <= Date.parse(candles.x[candles.x.length - 1] + "Z")) {
          return unchanged; // closed already: the refresh draws it as a real candle
        }
        const shown = figure.data[forming];
        if (shown.x && shown.x.length && shown.close[0] === candle.close && shown.high[0] === candle.high
            && shown.low[0] === candle.low && shown.x[0] === utcIso(candle.ts)) {
          return unchanged;
        }
        const patch = new dc.Patch();
        patch.assign(["data", forming, "x"], [utcIso(candle.ts)]);
        for (const key of ["open", "high", "low", "close"]) {
          patch.assign(["data", forming, key], [candle[key]]);
        }
        patch.assign(["data", forming, "showlegend"], true);
        return [patch.build(), price(candle.close), "the " + utcIso(candle.ts).slice(11, 16) + " UTC candle, still forming · live"];
      },
    }),
  });
})();
