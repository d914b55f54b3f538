// The big screen (城市运行大屏): paint the snapshot embedded in the page at once, then follow
// /api/ops/stream — a `snapshot` event replaces the whole state, a `patch` event carries only the
// tiles that changed. EventSource reconnects by itself after an error. Data never becomes HTML
// (textContent only). Loaded as a file: the CSP forbids inline script.
(function () {
  "use strict";

  var W = 1920, H = 1080;
  var COLORS = { normal: "#3ecf8e", attention: "#f5c542", warning: "#ff8c2e", critical: "#ff4d4f" };
  var SEV_COLORS = { critical: "#ff4d4f", warning: "#ff8c2e", info: "#4da3ff" };
  var state = { seq: 0, clock: "", tiles: {} };
  var text = {};
  var lang = "zh-CN";
  var sparks = {};  // indicator code → ECharts instance
  var alertsChart = null;
  var map = null, markers = null;

  function el(tag, className, content) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (content !== undefined && content !== null) node.textContent = String(content);
    return node;
  }

  function json(id) {
    var node = document.getElementById(id);
    try { return JSON.parse(node ? node.textContent : "{}"); } catch (e) { return {}; }
  }

  function name(item) { return lang === "en" ? (item.name_en || item.name) : item.name; }

  function fmt(v) {
    if (v === null || v === undefined) return "—";
    var a = Math.abs(v);
    if (Number.isInteger(v)) return v.toLocaleString();  // counts: 9 cases, not 9.00
    return a >= 1000 ? Math.round(v).toLocaleString() : a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : v.toFixed(2);
  }

  // 1920×1080 drawn at the window's size.
  function fit() {
    var stage = document.getElementById("stage");
    var s = Math.min(window.innerWidth / W, window.innerHeight / H);
    stage.style.transform = "scale(" + s + ")";
  }

  // -- indicator cards ------------------------------------------------------------------------

  function sparkline(node, code, values, level) {
    if (!window.echarts) return;
    var chart = sparks[code];
    if (chart && chart.getDom() !== node) { chart.dispose(); chart = null; }
    if (!chart) chart = sparks[code] = window.echarts.init(node, null, { renderer: "canvas" });
    chart.setOption({
      animation: false, grid: { left: 0, right: 0, top: 2, bottom: 2 },
      xAxis: { type: "category", show: false, data: values.map(function (_, i) { return i; }) },
      yAxis: { type: "value", show: false, scale: true },
      series: [{ type: "line", data: values, symbol: "none", smooth: true,
                 lineStyle: { width: 2, color: COLORS[level] || "#4da3ff" },
                 areaStyle: { opacity: 0.15, color: COLORS[level] || "#4da3ff" } }]
    });
  }

  function card(item, link) {
    var a = el("a", "card");
    a.href = link;
    a.setAttribute("data-indicator", item.code);
    a.appendChild(el("span", "card-name"));
    var v = el("span", "card-value");
    v.appendChild(el("span", "num"));
    v.appendChild(el("span", "unit"));
    a.appendChild(v);
    a.appendChild(el("span", "card-note"));
    a.appendChild(el("div", "spark"));
    return a;
  }

  function fillCard(a, item) {
    a.className = "card lvl-" + (item.error ? "none" : (item.level || "none"));
    a.setAttribute("data-level", item.level || "");
    a.setAttribute("data-value", item.value === null || item.value === undefined ? "" : String(item.value));
    a.querySelector(".card-name").textContent = name(item);
    a.querySelector(".num").textContent = item.error ? text.no_data : fmt(item.value);
    a.querySelector(".unit").textContent = item.error ? "" : (item.unit || "");
    var note = a.querySelector(".card-note");
    if (item.error) {
      note.textContent = item.error;
      note.className = "card-note err";
    } else if (item.forecast && item.forecast.value !== null && item.forecast.value !== undefined) {
      var f = item.forecast;
      note.textContent = text.forecast + " " + fmt(f.value) + (f.level && f.level !== "normal" ? " · " + (text[f.level] || f.level) : "") +
        (f.mape !== null && f.mape !== undefined ? " · " + text.mape + " " + (f.mape * 100).toFixed(0) + "%" : "");
      note.className = "card-note" + (f.level && f.level !== "normal" ? " ahead lvl-" + f.level : "");
    } else {
      note.textContent = item.level ? (text[item.level] || item.level) : "";
      note.className = "card-note";
    }
    var values = (item.spark || []).slice();
    if (values.length > 1) sparkline(a.querySelector(".spark"), item.code, values, item.level);
  }

  function paintCards(section, tile) {
    var box = section.querySelector("[data-cards]");
    if (!box) return;
    var items = tile.indicators || [];
    var have = {};
    Array.prototype.forEach.call(box.querySelectorAll("[data-indicator]"), function (n) { have[n.getAttribute("data-indicator")] = n; });
    var keep = {};
    items.forEach(function (item) {
      var a = have[item.code];
      if (!a) { a = card(item, tile.link || "#"); }
      box.appendChild(a);  // in the snapshot's order
      fillCard(a, item);
      keep[item.code] = true;
    });
    Object.keys(have).forEach(function (code) {
      if (!keep[code]) {
        if (sparks[code]) { sparks[code].dispose(); delete sparks[code]; }
        have[code].remove();
      }
    });
    section.setAttribute("data-count", String(items.length));
  }

  // -- the other tiles ------------------------------------------------------------------------

  function paintAlerts(section, tile) {
    var c = (tile.counts || {});
    var sev = c.by_severity || {};
    var dl = section.querySelector("[data-counts]");
    dl.textContent = "";
    ["critical", "warning", "info"].forEach(function (k) {
      var dt = el("dt", "sev-" + k, text[k] || k);
      var dd = el("dd", "sev-" + k, String(sev[k] || 0));
      dd.setAttribute("data-severity", k);
      dl.appendChild(dt); dl.appendChild(dd);
    });
    dl.appendChild(el("dt", "", text.open)); dl.appendChild(el("dd", "", String(c.open || 0)));
    section.querySelector("[data-count]").textContent = String(c.total || 0);
    if (!window.echarts) return;
    var node = document.getElementById("alerts-chart");
    if (!alertsChart) alertsChart = window.echarts.init(node, null, { renderer: "canvas" });
    alertsChart.setOption({
      animation: false,
      // All zero: an empty grey ring, not three equal slices.
      series: [{ type: "pie", radius: ["55%", "85%"], label: { show: false }, stillShowZeroSum: false,
                 emptyCircleStyle: { color: "#1b3a66" },
                 data: ["critical", "warning", "info"].map(function (k) {
                   return { name: text[k] || k, value: sev[k] || 0, itemStyle: { color: SEV_COLORS[k] } };
                 }) }]
    });
  }

  function paintIncidents(section, tile) {
    var items = tile.items || [];
    section.querySelector("[data-count]").textContent = String(items.length);
    var ul = section.querySelector("[data-items]");
    ul.textContent = "";
    if (!items.length) ul.appendChild(el("li", "empty", text.no_incidents));
    items.forEach(function (inc) {
      var li = el("li", "incident lvl-" + inc.level);
      li.setAttribute("data-incident", inc.number);
      var a = el("a");
      a.href = inc.url;
      a.appendChild(el("span", "badge", inc.level + (lang === "en" ? " " : "") + text.level));
      a.appendChild(el("span", "title", inc.title));
      a.appendChild(el("span", "muted", (lang === "en" ? (inc.type_name_en || inc.type_name) : inc.type_name) || ""));
      li.appendChild(a);
      ul.appendChild(li);
    });
    if (!map || !markers) return;
    markers.clearLayers();
    items.forEach(function (inc) {
      if (inc.lat === null || inc.lon === null || inc.lat === undefined) return;
      var m = window.L.circleMarker([inc.lat, inc.lon], { radius: 11, color: "#fff", weight: 2,
        fillColor: inc.level === "I" || inc.level === "II" ? "#ff4d4f" : "#ff8c2e", fillOpacity: 0.9 });
      m.on("add", function () { var e = m.getElement(); if (e) e.setAttribute("data-incident", inc.number); });
      m.on("click", function () { window.location.href = inc.url; });
      m.bindTooltip(inc.title);
      markers.addLayer(m);
    });
  }

  function paintWarnings(section, tile) {
    var items = tile.items || [];
    section.querySelector("[data-count]").textContent = String(items.length);
    var ul = section.querySelector("[data-items]");
    ul.textContent = "";
    if (!items.length) ul.appendChild(el("li", "empty", text.no_warnings));
    items.forEach(function (w) {
      var li = el("li", "warning lvl-" + w.level);
      li.setAttribute("data-warning", String(w.id));
      li.appendChild(el("span", "badge", text[w.level] || w.level));
      li.appendChild(el("span", "title", w.title));
      li.appendChild(el("time", "muted", (w.raised_at || "").slice(11, 19)));
      ul.appendChild(li);
    });
  }

  function paintTile(key, tile) {
    var section = document.getElementById("tile-" + key);
    if (!section || !tile) return;
    var err = section.querySelector(".tile-error");
    if (err) {
      err.hidden = !tile.error;
      err.textContent = tile.error ? text.no_data + ": " + tile.error : "";
    }
    section.setAttribute("data-error", tile.error ? "1" : "0");
    if (key === "alerts") paintAlerts(section, tile);
    if (key === "incidents") paintIncidents(section, tile);
    if (key === "warnings") paintWarnings(section, tile);
    paintCards(section, tile);
  }

  function paintAll() {
    document.getElementById("clock").textContent = state.clock || "";
    Object.keys(state.tiles || {}).forEach(function (k) { paintTile(k, state.tiles[k]); });
  }

  // -- the map --------------------------------------------------------------------------------

  function makeMap() {
    var L = window.L;
    var node = document.getElementById("ops-map");
    if (!L || !node) return;
    var cfg = {};
    try { cfg = JSON.parse(node.getAttribute("data-config") || "{}"); } catch (e) { cfg = {}; }
    map = L.map(node, { zoomControl: false, attributionControl: false, zoomSnap: 0.25 });
    if (cfg.view) map.fitBounds([[cfg.view[1], cfg.view[0]], [cfg.view[3], cfg.view[2]]], { animate: false });
    else map.setView([43.84, 126.55], 12);
    if (cfg.tile_url) L.tileLayer(cfg.tile_url, { maxZoom: 19 }).addTo(map);
    (cfg.base || []).forEach(function (layer) {
      fetch("/api/maps/layers/" + encodeURIComponent(layer.code) + "/features?limit=10000",
            { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (fc) {
          if (!fc) return;
          L.geoJSON(fc, { interactive: false, style: function () {
            return layer.role === "district" ? { color: "#4da3ff", weight: 2, fillOpacity: 0.06 }
              : { color: "#2b5a8a", weight: 1, dashArray: "4 4", fill: false };
          } }).addTo(map).bringToBack();
        })
        .catch(function () { /* the incidents still show */ });
    });
    markers = L.layerGroup().addTo(map);
  }

  // -- live -----------------------------------------------------------------------------------

  function connect() {
    if (!window.EventSource) return;
    var conn = document.getElementById("conn");
    var es = new EventSource("/api/ops/stream");
    es.addEventListener("open", function () { conn.setAttribute("data-state", "live"); conn.textContent = text.live; });
    es.addEventListener("error", function () { conn.setAttribute("data-state", "offline"); conn.textContent = text.offline; });
    es.addEventListener("snapshot", function (ev) {
      var snap = JSON.parse(ev.data);
      state = snap;
      paintAll();
      document.body.setAttribute("data-seq", String(snap.seq));
    });
    es.addEventListener("patch", function (ev) {
      var patch = JSON.parse(ev.data);
      if (patch.seq <= state.seq) return;  // already in the snapshot we hold
      if (patch.clock) { state.clock = patch.clock; document.getElementById("clock").textContent = patch.clock; }
      Object.keys(patch.tiles || {}).forEach(function (k) {
        state.tiles[k] = patch.tiles[k];
        paintTile(k, patch.tiles[k]);
      });
      state.seq = patch.seq;
      document.body.setAttribute("data-seq", String(patch.seq));
    });
  }

  function start() {
    text = json("ops-text");
    lang = document.body.getAttribute("data-lang") || "zh-CN";
    state = json("ops-snapshot");
    state.tiles = state.tiles || {};
    fit();
    window.addEventListener("resize", fit);
    try { makeMap(); } catch (e) { map = null; }
    paintAll();
    document.body.setAttribute("data-seq", String(state.seq || 0));
    document.body.setAttribute("data-ready", "1");
    connect();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
