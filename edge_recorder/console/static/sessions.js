// Live sessions table: poll the same query for changes; replace the rows when the index moved.
(function () {
  "use strict";
  const table = document.getElementById("sessions");
  const rows = document.getElementById("rows");
  const pager = document.getElementById("pager");
  const state = document.getElementById("live-state");
  const EVERY_MS = 2000;
  let version = table.dataset.version;

  function seen() {
    return new Set(Array.from(rows.querySelectorAll("tr[data-session]"), (tr) => tr.dataset.session));
  }

  async function poll() {
    if (!document.hidden) {
      const params = new URLSearchParams(window.location.search);
      params.set("v", version);
      try {
        const r = await fetch("/sessions/live?" + params.toString(), { credentials: "same-origin" });
        if (r.status === 200) {
          const data = await r.json();
          const before = seen();
          rows.innerHTML = data.rows;  // rendered and escaped by the server's templates
          pager.innerHTML = data.pager;
          version = data.version;
          table.dataset.version = version;
          let fresh = 0;
          for (const tr of rows.querySelectorAll("tr[data-session]")) {
            if (!before.has(tr.dataset.session)) { tr.classList.add("new"); fresh += 1; }
          }
          state.textContent = "live: updated " + new Date().toLocaleTimeString() +
            (fresh ? " (" + fresh + " new on this page)" : "");
        } else if (r.status !== 204) {
          state.textContent = "live: the console answered " + r.status + "; retrying";
        }
      } catch (e) {
        state.textContent = "live: console unreachable; retrying";
      }
    }
    window.setTimeout(poll, EVERY_MS);
  }
  window.setTimeout(poll, EVERY_MS);
})();
