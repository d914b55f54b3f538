// The KPI dashboard (考核看板): on-time and satisfaction rates per group as ECharts bars, and the
// hotspots (热点) as circles on the map, sized by the number of cases.
(function () {
  "use strict";

  var C = window.CityOSCases;

  function chart() {
    var node = document.getElementById("kpi-chart");
    if (!node || !window.echarts) return;
    var cfg = C.config(node);
    var rows = cfg.chart || [];
    var labels = cfg.labels || {};
    var bars = window.echarts.init(node, null, { renderer: "canvas" });
    bars.setOption({
      animation: false,
      tooltip: { trigger: "axis" },
      legend: { data: [labels.on_time, labels.satisfaction] },
      grid: { left: 48, right: 16, top: 36, bottom: 64 },
      xAxis: { type: "category", data: rows.map(function (r) { return r.name; }), axisLabel: { rotate: 20, interval: 0 } },
      yAxis: { type: "value", min: 0, max: 100 },
      series: [
        { name: labels.on_time, type: "bar", data: rows.map(function (r) { return r.on_time; }), itemStyle: { color: "#1570ef" } },
        { name: labels.satisfaction, type: "bar", data: rows.map(function (r) { return r.satisfaction; }), itemStyle: { color: "#12b76a" } }
      ]
    });
    node.setAttribute("data-status", "ready");
    window.addEventListener("resize", function () { bars.resize(); });
  }

  function hotspots() {
    var node = document.getElementById("kpi-map");
    if (!node || !window.L) return;
    var L = window.L;
    var made = C.makeMap(node);
    var spots = made.cfg.hotspots || [];
    var most = spots.reduce(function (m, s) { return Math.max(m, s.count); }, 1);
    var bounds = [];
    spots.forEach(function (s) {
      var at = [s.coordinates ? s.coordinates[1] : s.lat, s.coordinates ? s.coordinates[0] : s.lon];
      bounds.push(at);
      var dot = L.circleMarker(at, {
        pane: "cases-point", radius: 5 + 20 * Math.sqrt(s.count / most), color: "#b42318", weight: 1,
        fillColor: "#f04438", fillOpacity: 0.45
      });
      dot.bindTooltip(String(s.count) + " " + ((made.cfg.labels && made.cfg.labels.cases) || ""));
      dot.on("add", function () { var e = dot.getElement(); if (e) e.setAttribute("data-hotspot", String(s.count)); });
      dot.addTo(made.map);
    });
    if (bounds.length) made.map.fitBounds(L.latLngBounds(bounds).pad(0.3), { maxZoom: 15, animate: false });
    node.setAttribute("data-drawn", String(spots.length));
    made.base.then(function () { node.setAttribute("data-status", "ready"); });
  }

  C.ready(function () { chart(); hotspots(); });
})();
