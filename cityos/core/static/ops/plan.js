/* The programme office (/ops/projects): the 43 key projects as an ECharts Gantt chart (custom
   series) and a dependency graph (graph series). Reads the config the page embeds in
   #ops-gantt[data-config]; nothing from the internet. */
(function () {
  "use strict";
  var COLORS = { planned: "#8c8c8c", running: "#1677ff", done: "#52c41a", delayed: "#fa541c", suspended: "#faad14" };

  function ready(fn) {
    if (document.readyState !== "loading") fn(); else document.addEventListener("DOMContentLoaded", fn);
  }

  function name(cfg, row) { return cfg.lang === "zh-CN" ? row.name : (row.name_en || row.name); }
  function word(cfg, pair) { return cfg.lang === "zh-CN" ? pair[0] : pair[1]; }

  function gantt(el, cfg) {
    var g = cfg.gantt;
    var rows = g.rows.slice().reverse(); // P01 at the top
    el.style.height = Math.max(400, rows.length * 22 + 80) + "px";
    var chart = echarts.init(el);
    var cats = rows.map(function (r) {  // "P12 一号通": the code and the start of the name
      var n = name(cfg, r), max = cfg.lang === "zh-CN" ? 10 : 22;
      return r.code + " " + (n.length > max ? n.slice(0, max - 1) + "…" : n);
    });
    var data = rows.map(function (r, i) {
      return { value: [i, r.start, r.end, r.progress], row: r,
               itemStyle: { color: COLORS[r.status] || "#1677ff", borderColor: r.critical ? "#cf1322" : "transparent", borderWidth: r.critical ? 2 : 0 } };
    });
    chart.setOption({
      animation: false,
      tooltip: { formatter: function (p) {
        var r = p.data.row;
        return r.code + " " + name(cfg, r) + "<br>" + r.start + " – " + r.end + "<br>" +
          word(cfg, cfg.statuses[r.status] || [r.status, r.status]) + " · " + r.progress + "%" +
          (r.critical ? "<br>" + word(cfg, cfg.text.critical) : "");
      } },
      grid: { left: 200, right: 30, top: 30, bottom: 40 },
      xAxis: { type: "time", min: g.from, max: g.to, position: "top" },
      yAxis: { type: "category", data: cats, axisLabel: { fontSize: 11 } },
      dataZoom: [{ type: "inside", yAxisIndex: 0 }],
      series: [{
        type: "custom", encode: { x: [1, 2], y: 0 }, data: data,
        renderItem: function (params, api) {
          var y = api.value(0), start = api.coord([api.value(1), y]), end = api.coord([api.value(2), y]);
          var h = api.size([0, 1])[1] * 0.6, w = Math.max(end[0] - start[0], 2);
          var rect = echarts.graphic.clipRectByRect({ x: start[0], y: start[1] - h / 2, width: w, height: h }, {
            x: params.coordSys.x, y: params.coordSys.y, width: params.coordSys.width, height: params.coordSys.height });
          if (!rect) return null;
          var done = { x: rect.x, y: rect.y, width: rect.width * api.value(3) / 100, height: rect.height };
          return { type: "group", children: [
            { type: "rect", shape: rect, style: api.style({ opacity: 0.45 }) },
            { type: "rect", shape: done, style: api.style() }
          ] };
        }
      }]
    });
    chart.on("click", function (p) { if (p.data && p.data.row) window.location.href = "/ops/projects/" + p.data.row.code; });
    window.addEventListener("resize", function () { chart.resize(); });
    el.setAttribute("data-status", "ready");
  }

  function graph(el, cfg) {
    var gr = cfg.graph;
    el.style.height = "620px";
    var chart = echarts.init(el);
    var groups = [];
    gr.nodes.forEach(function (n) { if (groups.indexOf(n.category) < 0) groups.push(n.category); });
    chart.setOption({
      animation: false,
      tooltip: { formatter: function (p) {
        if (p.dataType === "edge") return p.data.source + " → " + p.data.target;
        return p.data.id + " " + name(cfg, p.data.node) + " · " + p.data.node.progress + "%";
      } },
      legend: [{ data: groups, type: "scroll", bottom: 0 }],
      series: [{
        type: "graph", layout: "force", roam: true, draggable: true, edgeSymbol: ["none", "arrow"], edgeSymbolSize: 8,
        force: { repulsion: 140, edgeLength: 70, gravity: 0.08 },
        categories: groups.map(function (c) { return { name: c }; }),
        label: { show: true, fontSize: 10, formatter: function (p) { return p.data.id; } },
        data: gr.nodes.map(function (n) {
          return { id: n.id, name: n.id, node: n, category: groups.indexOf(n.category),
                   symbolSize: n.critical ? 26 : 18,
                   itemStyle: n.critical ? { borderColor: "#cf1322", borderWidth: 3 } : undefined };
        }),
        links: gr.edges.map(function (e) {
          return { source: e.source, target: e.target,
                   lineStyle: e.critical ? { color: "#cf1322", width: 3 } : { color: "#999", width: 1 } };
        })
      }]
    });
    chart.on("click", function (p) { if (p.dataType === "node") window.location.href = "/ops/projects/" + p.data.id; });
    window.addEventListener("resize", function () { chart.resize(); });
    el.setAttribute("data-status", "ready");
  }

  ready(function () {
    var ge = document.getElementById("ops-gantt"), gre = document.getElementById("ops-graph");
    if (!ge) return;
    var cfg;
    try { cfg = JSON.parse(ge.getAttribute("data-config")); } catch (e) { return; }
    if (typeof echarts === "undefined") {
      [ge, gre].forEach(function (el) { if (el) { el.textContent = word(cfg, cfg.text.failed); el.setAttribute("data-status", "failed"); } });
      return;
    }
    try { gantt(ge, cfg); } catch (e) { ge.textContent = word(cfg, cfg.text.failed); ge.setAttribute("data-status", "failed"); }
    if (gre) {
      try { graph(gre, cfg); } catch (e) { gre.textContent = word(cfg, cfg.text.failed); gre.setAttribute("data-status", "failed"); }
    }
  });
})();
