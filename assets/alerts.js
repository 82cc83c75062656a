// The bell: every few seconds it asks /api/v1/firings for the newest firings, counts those
// newer than what this browser has seen (kept in localStorage, so nothing is written on a public
// server), lists them, and shows a browser notification for each new one where allowed. Opening
// the list marks them seen.
(function () {
  const SEEN = "chronoprice-alerts-seen";
  let notifiedUpTo = Number(localStorage.getItem(SEEN) || 0);

  function item(text) {
    return {type: "Li", namespace: "dash_html_components", props: {children: text}};
  }

  window.dash_clientside = Object.assign({}, window.dash_clientside, {
    chronoprice: Object.assign({}, (window.dash_clientside || {}).chronoprice, {
      pollAlerts: async function (_, clicks, hidden) {
        const dc = window.dash_clientside;
        // Read before the first await: Dash removes the callback context once the function returns its promise.
        const opened = dc.callback_context.triggered.some((each) => each.prop_id === "alerts-bell.n_clicks") && hidden;
        let firings;
        try {
          const response = await fetch("/api/v1/firings?limit=20", {cache: "no-store"});
          if (!response.ok) { return [dc.no_update, dc.no_update]; }
          firings = (await response.json()).firings;
        } catch (error) {
          return [dc.no_update, dc.no_update];
        }
        const newest = firings.length ? firings[0].fired_ms : 0;
        if (opened) { localStorage.setItem(SEEN, String(newest)); }
        const seen = Number(localStorage.getItem(SEEN) || 0);
        if (window.Notification && Notification.permission === "granted") {
          firings.filter((each) => each.fired_ms > notifiedUpTo).forEach((each) => new Notification("ChronoPrice", {body: each.message}));
        }
        notifiedUpTo = Math.max(notifiedUpTo, newest);
        const unread = firings.filter((each) => each.fired_ms > seen).length;
        const list = firings.length
          ? firings.map((each) => item(new Date(each.fired_ms).toISOString().slice(11, 16) + " UTC · " + each.message))
          : [item("no alert has fired yet")];
        return [unread ? String(unread) : "", list];
      },
    }),
  });
})();
