// Session plots: uPlot per sensor and quantity, x synchronised, data decimated on the server
// (min/max envelope per pixel) and fetched again for every zoom/pan window.
(function () {
  "use strict";
  const cfg = JSON.parse(document.getElementById("plot-config").textContent);
  const box = document.getElementById("plots");
  const status = document.getElementById("plots-state");
  const GROUPS = [
    ["acceleration", "m/s²", ["ax", "ay", "az"]],
    ["angular rate", "rad/s", ["gx", "gy", "gz"]],
    ["temperature", "°C", ["temp_c"]],
  ];
  const COLORS = { ax: "#d62728", ay: "#2ca02c", az: "#1f77b4",
                   gx: "#d62728", gy: "#2ca02c", gz: "#1f77b4", temp_c: "#9467bd" };
  const full = [0, Math.max(cfg.duration_s, 0.001)];
  let view = full.slice();
  let plots = [];
  let request = 0;
  let timer = null;

  function width() { return Math.max(300, box.clientWidth - 10); }

  async function load(a, b, url) {
    const n = ++request;
    const points = Math.min(4000, Math.round(width()));
    url = url || cfg.series + "?from=" + a.toFixed(6) + "&to=" + b.toFixed(6) + "&points=" + points;
    const r = await fetch(url, { credentials: "same-origin" });
    if (!r.ok) { throw new Error("the console answered " + r.status + ": " + (await r.text())); }
    const data = await r.json();
    return n === request ? data : null;  // a newer window was asked for meanwhile
  }

  function columns(series, keys) { return [series.x].concat(keys.map((k) => series[k])); }

  function gapsOf(sensor) { return cfg.gaps.filter((g) => g.sensor === sensor); }

  function decorations(sensor) {
    const gaps = gapsOf(sensor);
    return {
      hooks: {
        drawClear: [(u) => {
          const ctx = u.ctx;
          ctx.save();
          ctx.fillStyle = "rgba(255, 165, 0, 0.25)";
          for (const g of gaps) {
            const x0 = Math.max(u.bbox.left, u.valToPos(g.start_s, "x", true));
            const x1 = Math.min(u.bbox.left + u.bbox.width,
                                u.valToPos(g.start_s + g.length_s, "x", true));
            if (x1 > x0) { ctx.fillRect(x0, u.bbox.top, Math.max(1, x1 - x0), u.bbox.height); }
          }
          ctx.restore();
        }],
        draw: [(u) => {
          const x = u.valToPos(cfg.trigger_s, "x", true);
          if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) { return; }
          const ctx = u.ctx;
          ctx.save();
          ctx.strokeStyle = "#c00";
          ctx.lineWidth = 1.5 * devicePixelRatio;
          ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
          ctx.beginPath();
          ctx.moveTo(x, u.bbox.top);
          ctx.lineTo(x, u.bbox.top + u.bbox.height);
          ctx.stroke();
          ctx.restore();
        }],
      },
    };
  }

  function setView(a, b, fetchNow) {
    const span = Math.max(b - a, 0.002);
    a = Math.max(full[0], Math.min(a, full[1] - span));
    b = Math.min(full[1], a + span);
    view = [a, b];
    for (const p of plots) { p.u.setScale("x", { min: a, max: b }); }
    window.clearTimeout(timer);
    timer = window.setTimeout(refresh, fetchNow ? 0 : 150);
  }

  async function refresh() {
    try {
      const data = await load(view[0], view[1]);
      if (!data) { return; }
      for (const p of plots) {
        const s = data.sensors[p.sensor];
        if (s) { p.u.setData(columns(s, p.keys), false); }
        p.u.setScale("x", { min: view[0], max: view[1] });
      }
    } catch (e) { status.textContent = String(e); }
  }

  function interactions(u) {
    u.over.addEventListener("wheel", (e) => {
      e.preventDefault();
      const at = u.posToVal(e.offsetX, "x");
      const k = e.deltaY < 0 ? 0.75 : 1 / 0.75;
      setView(at - (at - view[0]) * k, at + (view[1] - at) * k, false);
    }, { passive: false });
    u.over.addEventListener("mousedown", (e) => {
      if (!e.shiftKey) { return; }
      e.stopImmediatePropagation();  // not a selection: uPlot's own handler must not see it
      e.preventDefault();
      const x0 = e.clientX;
      const start = view.slice();
      const perPx = (start[1] - start[0]) / u.bbox.width * devicePixelRatio;
      const move = (ev) => { const d = (ev.clientX - x0) * perPx; setView(start[0] - d, start[1] - d, false); };
      const up = () => { document.removeEventListener("mousemove", move); document.removeEventListener("mouseup", up); };
      document.addEventListener("mousemove", move);
      document.addEventListener("mouseup", up);
    }, true);
  }

  function build(data) {
    box.textContent = "";
    for (const sensor of cfg.sensors) {
      const s = data.sensors[sensor];
      if (!s) { continue; }
      const section = document.createElement("section");
      section.className = "sensor";
      const h = document.createElement("h3");
      h.textContent = sensor;
      section.appendChild(h);
      box.appendChild(section);
      for (const [title, unit, wanted] of GROUPS) {
        const keys = wanted.filter((k) => k in s);
        if (!keys.length) { continue; }
        const holder = document.createElement("div");
        holder.className = "plot";
        holder.dataset.sensor = sensor;
        holder.dataset.quantity = title;
        section.appendChild(holder);
        const opts = {
          title: sensor + " " + title + " (" + unit + ")",
          width: width(), height: 220,
          scales: { x: { time: false, min: view[0], max: view[1] } },
          axes: [{ label: "seconds since the session's start" }, { label: unit, size: 60 }],
          series: [{ label: "s" }].concat(keys.map((k) => ({ label: k, stroke: COLORS[k], width: 1 }))),
          cursor: {
            sync: { key: "session" },
            drag: { x: true, y: false, setScale: false },
            bind: { dblclick: () => () => { setView(full[0], full[1], true); return null; } },
          },
          hooks: { setSelect: [(u) => {
            if (u.select.width > 2) {
              const a = u.posToVal(u.select.left, "x");
              const b = u.posToVal(u.select.left + u.select.width, "x");
              u.setSelect({ left: 0, width: 0, top: 0, height: 0 }, false);
              setView(a, b, true);
            }
          }] },
          plugins: [decorations(sensor)],
        };
        const u = new uPlot(opts, columns(s, keys), holder);
        interactions(u);
        plots.push({ u: u, sensor: sensor, keys: keys });
      }
    }
    if (!plots.length) { box.textContent = "This session file holds no samples."; }
  }

  window.addEventListener("resize", () => {
    for (const p of plots) { p.u.setSize({ width: width(), height: 220 }); }
  });

  load(full[0], full[1], cfg.first).then((data) => {  // the preloaded request
    build(data);
    requestAnimationFrame(() => {
      document.body.dataset.plotsReady = String(plots.length);
      document.body.dataset.plotsMs = String(Math.round(performance.now()));
    });
  }).catch((e) => { status.textContent = "could not load the signals: " + e; });
})();
