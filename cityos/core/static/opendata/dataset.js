// A dataset's page on the open-data portal: the chart (ECharts) and the map (Leaflet).
// Loaded as a file: the CSP forbids inline script. The page works without it: the chart's
// numbers are in a table below it, the downloads are plain links.
//
// <div id="chart" data-src="…/chart.json" data-series='{…}'>: bars drawn from the embedded
// series; the form [data-chart-form] fetches another series when a choice changes.
// <div id="map" data-src="…/points.geojson" data-bbox='[w,s,e,n]'>: points on a blank
// background with a scale and the data's extent outlined. No tile server: a city's internal
// network has none, and nothing here may load from the internet.
"use strict";

(function () {
  function escapeHtml(value) {
    return String(value).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }

  function label(value) {
    return value === null || value === undefined ? "—" : String(value);
  }

  function drawChart(el) {
    if (!window.echarts) return;
    var chart = window.echarts.init(el, null, { renderer: "canvas" });
    var aggLabels = JSON.parse(el.dataset.aggLabels || "{}");
    var status = document.createElement("p");
    status.className = "hint";
    el.insertAdjacentElement("afterend", status);

    function show(s) {
      var name = s.y.id === "_count" ? el.dataset.countLabel
        : s.y.title + "（" + (aggLabels[s.agg] || s.agg) + "）";
      var categories = s.categories.map(label);
      chart.setOption({
        aria: { enabled: true },
        animationDuration: 300,
        color: ["#1f5fa8"],
        grid: { left: 64, right: 24, top: 40, bottom: categories.length > 8 ? 96 : 48 },
        tooltip: {
          trigger: "axis",
          axisPointer: { type: "shadow" },
          formatter: function (items) {
            var item = items[0];
            return escapeHtml(item.name) + "<br>" + escapeHtml(name) + ": " + escapeHtml(item.value);
          }
        },
        xAxis: {
          type: "category", data: categories, name: s.x.title, nameLocation: "middle",
          nameGap: categories.length > 8 ? 72 : 28,
          axisLabel: { interval: 0, rotate: categories.length > 8 ? 40 : 0 }
        },
        yAxis: { type: "value", name: name },
        series: [{ type: "bar", name: name, data: s.values, barMaxWidth: 48 }]
      }, true);
      status.textContent = s.total_categories > s.categories.length
        ? el.dataset.more.replace("{shown}", s.categories.length).replace("{total}", s.total_categories)
        : "";
    }

    show(JSON.parse(el.dataset.series));
    var form = document.querySelector("[data-chart-form]");
    if (form) {
      form.addEventListener("change", function () {
        var params = new URLSearchParams(new FormData(form));
        var src = el.dataset.src + (el.dataset.src.indexOf("?") >= 0 ? "&" : "?") + params.toString();
        fetch(src, { headers: { Accept: "application/json" }, credentials: "same-origin" })
          .then(function (r) { return r.ok ? r.json() : Promise.reject(new Error(String(r.status))); })
          .then(show)
          .catch(function (err) { status.textContent = String(err.message || err); });
      });
    }
    window.addEventListener("resize", function () { chart.resize(); });
  }

  function popup(properties, titles) {
    var dl = document.createElement("dl");
    dl.className = "popup";
    Object.keys(properties).forEach(function (key) {
      var dt = document.createElement("dt");
      var dd = document.createElement("dd");
      dt.textContent = titles[key] || key;
      dd.textContent = label(properties[key]);
      dl.append(dt, dd);
    });
    return dl;
  }

  function drawMap(el) {
    if (!window.L) return;
    var L = window.L;
    var titles = JSON.parse(el.dataset.titles || "{}");
    var map = L.map(el, { zoomSnap: 0.25, worldCopyJump: false });
    map.attributionControl.setPrefix("Leaflet");
    L.control.scale({ imperial: false }).addTo(map);
    var bbox = JSON.parse(el.dataset.bbox || "null");
    var extent = null;
    if (bbox && bbox.length === 4) {
      extent = L.latLngBounds([bbox[1], bbox[0]], [bbox[3], bbox[2]]);
      L.rectangle(extent, {
        fill: false, color: "#5b6775", weight: 1, dashArray: "4 4", interactive: false
      }).addTo(map);
    }
    function fit(bounds) {
      if (!bounds || !bounds.isValid()) { map.setView([43.84, 126.55], 11); return; }
      if (bounds.getNorthEast().equals(bounds.getSouthWest())) map.setView(bounds.getCenter(), 13);
      else map.fitBounds(bounds.pad(0.15));
    }
    fit(extent);
    fetch(el.dataset.src + (el.dataset.src.indexOf("?") >= 0 ? "&" : "?") + "limit=1000",
          { headers: { Accept: "application/geo+json" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(new Error(String(r.status))); })
      .then(function (data) {
        var layer = L.geoJSON(data, {
          pointToLayer: function (feature, latlng) {
            return L.circleMarker(latlng, {
              radius: 6, color: "#123f73", weight: 1, fillColor: "#1f5fa8", fillOpacity: 0.75
            });
          },
          onEachFeature: function (feature, marker) {
            marker.bindPopup(popup(feature.properties || {}, titles));
          }
        }).addTo(map);
        el.dataset.points = String(layer.getLayers().length);
        if (!layer.getLayers().length) {
          var note = document.createElement("p");
          note.className = "hint";
          note.textContent = el.dataset.empty;
          el.insertAdjacentElement("afterend", note);
        } else if (!extent) {
          fit(layer.getBounds());
        }
      })
      .catch(function (err) { el.dataset.error = String(err.message || err); });
  }

  function start() {
    var chart = document.getElementById("chart");
    if (chart) drawChart(chart);
    var map = document.getElementById("map");
    if (map) drawMap(map);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
