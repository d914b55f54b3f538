// A device's page (设备详情): one ECharts line chart per numeric datastream with a zoom slider.
// Zoomed out, the series API answers rollups (a min–max band and the mean); zoomed in, the raw
// readings; every zoom asks again for just the window in view. The newest readings arrive by
// polling /api/sensing/latest. The credentials button issues a device key and secret, shown once.
(function () {
  "use strict";

  var S = window.CityOSSensing;
  var LIVE_MS = 5000;
  var charts = {};   // datastream id -> {chart, node, info, extent: [a, b], raw, last}
  var cfg, text;

  // -- series answers -----------------------------------------------------------------------

  // The series API's answer ({grain, points: [{time, value} | {time, min, max, mean, ...}]}) as
  // {raw, grain, points: [[t, v]], band: [[t, min, max]], mean: [[t, mean]]}.
  function normalize(body) {
    var out = { raw: body.grain === "raw", grain: body.grain, points: [], band: [], mean: [] };
    (body.points || []).forEach(function (p) {
      var t = Date.parse(p.time);
      if (out.raw) {
        if (typeof p.value === "number") out.points.push([t, p.value]);
      } else if (p.min !== null && p.min !== undefined) {
        out.band.push([t, p.min, p.max]);
        out.mean.push([t, p.mean]);
      }
    });
    return out;
  }

  // -- charts -------------------------------------------------------------------------------

  var BLUE = "#1f5fa8";

  // Axis labels in the city's time (the browser's zone may differ): hours and minutes, with the
  // date once the window spans more than a day and a half.
  function axisLabel(entry) {
    return function (value) {
      var s = S.localTime(value);
      var w = entry.window;
      return w[1] - w[0] > 36 * 3600 * 1000 ? s.slice(5, 16) : s.slice(11, 16);
    };
  }

  // The tooltip as text (rich text: an HTML tooltip would carry style="", which the CSP
  // refuses): the reading, or the bucket's mean, minimum and maximum.
  function tooltip(params) {
    var list = Array.isArray(params) ? params : [params];
    if (!list.length) return "";
    var lines = [S.localTime(list[0].value[0])];
    var lower = null;
    list.forEach(function (p) {
      var v = p.value[1];
      if (p.seriesId === "value") lines.push(text.value + "  " + S.number(v));
      else if (p.seriesId === "mean") lines.push(text.mean + "  " + S.number(v));
      else if (p.seriesId === "lower") lower = v;
      else if (p.seriesId === "upper" && lower !== null) {
        lines.push(text.range + "  " + S.number(lower) + " – " + S.number(lower + v));
      }
    });
    return lines.join("\n");
  }

  function baseOption(entry) {
    var unit = entry.info.unit || "";
    return {
      animation: false,
      tooltip: { trigger: "axis", renderMode: "richText", formatter: tooltip },
      legend: { top: 0, right: 0, data: [text.value, text.mean, text.range] },
      grid: { top: 32, left: 56, right: 24, bottom: 64 },
      xAxis: { type: "time", min: entry.extent[0], max: entry.extent[1], axisLabel: { formatter: axisLabel(entry) } },
      yAxis: { type: "value", name: unit, scale: true },
      dataZoom: [
        { type: "inside", filterMode: "none", throttle: 100 },
        { type: "slider", filterMode: "none", height: 22, bottom: 12, labelFormatter: function (v) { return S.localTime(v); } }
      ],
      series: [
        { id: "value", name: text.value, type: "line", showSymbol: false, sampling: "lttb", color: BLUE, data: [] },
        { id: "lower", name: text.range, type: "line", stack: "band", symbol: "none", color: "rgba(31, 95, 168, 0.35)",
          lineStyle: { opacity: 0 }, data: [] },
        { id: "upper", name: text.range, type: "line", stack: "band", symbol: "none", color: "rgba(31, 95, 168, 0.35)",
          lineStyle: { opacity: 0 }, areaStyle: { color: "rgba(31, 95, 168, 0.18)" }, data: [] },
        { id: "mean", name: text.mean, type: "line", showSymbol: false, color: "#123f73", data: [] }
      ]
    };
  }

  function show(entry, series) {
    entry.raw = series.raw;
    var lower = series.band.map(function (b) { return [b[0], b[1]]; });
    var upper = series.band.map(function (b) { return [b[0], b[2] - b[1]]; });
    entry.chart.setOption({
      xAxis: { min: entry.extent[0], max: entry.extent[1] },
      series: [
        { id: "value", data: series.points },
        { id: "lower", data: lower },
        { id: "upper", data: upper },
        { id: "mean", data: series.mean }
      ]
    });
    var count = series.points.length + series.band.length;
    entry.node.setAttribute("data-points", String(count));
    entry.node.setAttribute("data-grain", series.raw ? "raw" : String(series.grain));
    state(entry, count ? "" : text.no_data);
  }

  function state(entry, message) {
    var node = entry.node.parentNode.querySelector("[data-chart-state]");
    if (node) node.textContent = message || "";
  }

  function windowOf(entry) {
    var dz = entry.chart.getOption().dataZoom[0];
    var span = entry.extent[1] - entry.extent[0];
    var a = entry.extent[0] + span * (dz.start || 0) / 100;
    var b = entry.extent[0] + span * (dz.end === undefined ? 100 : dz.end) / 100;
    return [Math.floor(a), Math.ceil(b) + 1];  // the API's ranges are [start, end)
  }

  function load(entry) {
    var w = windowOf(entry);
    entry.window = w;
    var seq = (entry.seq || 0) + 1;
    entry.seq = seq;
    var url = "/api/sensing/datastreams/" + encodeURIComponent(entry.info.id) + "/series?start=" +
      encodeURIComponent(new Date(w[0]).toISOString()) + "&end=" + encodeURIComponent(new Date(w[1]).toISOString()) +
      "&grain=auto";
    entry.node.setAttribute("data-loading", "true");
    return S.request(url).then(function (body) {
      if (seq !== entry.seq) return;  // a later zoom has asked since
      show(entry, normalize(body));
    }).catch(function (err) {
      state(entry, text.failed + " " + err.message);
    }).then(function () {
      if (seq === entry.seq) entry.node.removeAttribute("data-loading");
    });
  }

  function chartFor(node) {
    var info = S.config(node);
    var now = Date.now();
    var a = info.start !== null && info.start !== undefined ? info.start : now - 24 * 3600 * 1000;
    var b = info.end !== null && info.end !== undefined ? info.end : now;
    if (b - a < 60 * 1000) { a -= 30 * 60 * 1000; b += 30 * 60 * 1000; }  // one reading: show an hour round it
    var entry = { node: node, info: info, extent: [a, b], window: [a, b], raw: true, last: info.end, timer: null };
    entry.chart = window.echarts.init(node);  // canvas: styled through the CSSOM, which the CSP allows
    entry.chart.setOption(baseOption(entry));
    entry.chart.on("datazoom", function () {
      clearTimeout(entry.timer);
      entry.timer = setTimeout(function () { load(entry); }, 250);
    });
    window.addEventListener("resize", function () { entry.chart.resize(); });
    charts[String(info.id)] = entry;
    load(entry);
  }

  // -- live readings ------------------------------------------------------------------------

  // /api/sensing/latest's answer ({items: [{datastream_id, time, value, result}]}) as rows.
  function latestRows(body) {
    return (body.items || []).map(function (r) {
      return { id: String(r.datastream_id), time: r.time ? Date.parse(r.time) : null,
               value: r.value !== null && r.value !== undefined ? r.value : r.result };
    });
  }

  function applyLatest(row) {
    var cell = document.querySelector('[data-latest="' + row.id + '"]');
    if (cell) {
      cell.querySelector("[data-latest-value]").textContent = S.number(row.value);
      cell.querySelector("[data-latest-time]").textContent = S.localTime(row.time);
    }
    var entry = charts[row.id];
    if (!entry || typeof row.value !== "number" || !(row.time > (entry.last || 0))) return;
    entry.last = row.time;
    var following = windowOf(entry)[1] >= entry.extent[1] - 1;
    if (row.time > entry.extent[1]) entry.extent[1] = row.time;
    if (entry.raw && following) {
      var data = entry.chart.getOption().series[0].data || [];
      data.push([row.time, row.value]);
      entry.chart.setOption({ xAxis: { max: entry.extent[1] }, series: [{ id: "value", data: data }] });
      entry.node.setAttribute("data-points", String(data.length));
    } else {
      entry.chart.setOption({ xAxis: { max: entry.extent[1] } });
    }
  }

  function poll() {
    var live = document.querySelector("[data-live]");
    S.request("/api/sensing/latest?thing=" + encodeURIComponent(cfg.thing)).then(function (body) {
      latestRows(body).forEach(applyLatest);
      if (live) { live.setAttribute("data-live", "on"); live.textContent = text.live_on; }
    }).catch(function () {
      if (live) { live.setAttribute("data-live", "off"); live.textContent = text.live_off; }
    }).then(function () { setTimeout(poll, LIVE_MS); });
  }

  // -- device credentials -------------------------------------------------------------------

  function credentials(button) {
    if (!window.confirm(button.getAttribute("data-confirm-text"))) return;
    var box = document.querySelector("[data-issued]");
    button.disabled = true;
    S.request(button.getAttribute("data-credentials"), "POST").then(function (body) {
      box.querySelector("[data-issued-key]").textContent = body.device_key || body.key || "";
      box.querySelector("[data-issued-secret]").textContent = body.secret || "";
      box.hidden = false;
      var key = document.querySelector("[data-device-key]");
      if (key && (body.device_key || body.key)) key.textContent = body.device_key || body.key;
    }).catch(function (err) {
      window.alert(text.failed + " " + err.message);
    }).then(function () { button.disabled = false; });
  }

  S.ready(function () {
    var page = document.getElementById("sense-thing");
    if (!page) return;
    cfg = S.config(page);
    text = cfg.text;
    if (window.echarts) document.querySelectorAll("[data-chart]").forEach(chartFor);
    var button = document.querySelector("[data-credentials]");
    if (button) button.addEventListener("click", function () { credentials(button); });
    poll();
  });
})();
