// The incident's map (应急指挥): the incident point, the resources near it from the one map
// (shelters, hospitals, valves, cameras), and the district outlines as the base — the city's own
// layers, never internet tiles. Loaded as a file: the CSP forbids inline script.
(function () {
  "use strict";

  var COLOURS = ["#1570ef", "#12b76a", "#f79009", "#7a5af8", "#ee46bc", "#0e9384"];

  function ready(fn) {
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", fn);
    else fn();
  }

  function state(node, text) {
    var box = node.parentNode && node.parentNode.querySelector("[data-map-state]");
    if (box) box.textContent = text || "";
  }

  ready(function () {
    var node = document.getElementById("incident-map");
    if (!node || !window.L) return;
    var L = window.L;
    var cfg = {};
    try { cfg = JSON.parse(node.getAttribute("data-config") || "{}"); } catch (e) { cfg = {}; }
    var text = cfg.text || {};
    try {
      var map = L.map(node, { zoomSnap: 0.25, boxZoom: false });
      map.attributionControl.setPrefix("Leaflet");
      L.control.scale({ imperial: false }).addTo(map);
      var point = [cfg.point[1], cfg.point[0]];
      map.setView(point, 14);
      if (cfg.districts) {
        fetch("/api/maps/layers/" + encodeURIComponent(cfg.districts) + "/features?limit=10000",
              { headers: { Accept: "application/json" }, credentials: "same-origin" })
          .then(function (r) { return r.ok ? r.json() : null; })
          .then(function (fc) {
            if (fc) L.geoJSON(fc, { interactive: false, style: function () {
              return { color: "#5b4b8a", weight: 2, fill: false };
            } }).addTo(map);
          }).catch(function () { /* the incident still shows without the outlines */ });
      }
      var colours = {};
      var bounds = L.latLngBounds([point, point]);
      (cfg.resources || []).forEach(function (r) {
        if (!(r.layer in colours)) colours[r.layer] = COLOURS[Object.keys(colours).length % COLOURS.length];
        var at = [r.lat, r.lon];
        bounds.extend(at);
        var marker = L.circleMarker(at, { radius: 6, color: colours[r.layer], weight: 2, fillOpacity: 0.7 });
        var label = document.createElement("span");
        label.textContent = r.name + " · " + r.layer + " · " + Math.round(r.distance_m) + " " + (text.m || "m");
        marker.bindTooltip(label);
        marker.addTo(map);
      });
      var here = L.circleMarker(point, { radius: 10, color: "#7a271a", weight: 3, fillColor: "#f04438",
                                         fillOpacity: 0.9 });
      var caption = document.createElement("span");
      caption.textContent = text.incident || "Incident";
      here.bindTooltip(caption, { permanent: true, direction: "top" });
      here.addTo(map);
      if ((cfg.resources || []).length) map.fitBounds(bounds.pad(0.2), { animate: false, maxZoom: 16 });
      node.setAttribute("data-status", "ready");
      state(node, "");
    } catch (err) {
      node.setAttribute("data-status", "failed");
      state(node, text.failed || "The map could not load");
    }
  });
})();
