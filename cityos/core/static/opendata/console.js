// The open-data console's charts (ECharts, served by CityOS). Loaded as a file: the CSP forbids
// inline script. <div data-od-chart="usage|rate" data-chart='{...}' data-labels='{...}'>; the
// same numbers are in the tables beside them.
"use strict";

(function () {
  function draw(el) {
    var data = JSON.parse(el.dataset.chart);
    var labels = JSON.parse(el.dataset.labels);
    var chart = window.echarts.init(el);  // canvas: it styles through the CSSOM, which the CSP allows
    if (el.dataset.odChart === "usage") {
      chart.setOption({
        title: { text: labels.title, left: 0, textStyle: { fontSize: 14 } },
        tooltip: { trigger: "axis" },
        legend: { top: 0, right: 0, data: [labels.views, labels.downloads, labels.api_calls] },
        grid: { top: 44, left: 40, right: 16, bottom: 28 },
        xAxis: { type: "category", data: data.days },
        yAxis: { type: "value", minInterval: 1 },
        series: [
          { name: labels.views, type: "line", data: data.views },
          { name: labels.downloads, type: "line", data: data.downloads },
          { name: labels.api_calls, type: "line", data: data.api_calls }
        ]
      });
    } else {
      chart.setOption({
        title: { text: labels.title, left: 0, textStyle: { fontSize: 14 } },
        tooltip: { trigger: "axis", valueFormatter: function (v) { return v + "%"; } },
        grid: { top: 40, left: 40, right: 16, bottom: 28, containLabel: true },
        xAxis: { type: "category", data: data.departments },
        yAxis: { type: "value", max: 100, axisLabel: { formatter: "{value}%" } },
        series: [{ name: labels.rate, type: "bar", data: data.open_rate, barMaxWidth: 40 }]
      });
    }
    window.addEventListener("resize", function () { chart.resize(); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (!window.echarts) return;  // the tables carry the numbers anyway
    document.querySelectorAll("[data-od-chart]").forEach(draw);
  });
})();
