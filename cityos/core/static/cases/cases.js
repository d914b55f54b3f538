// What the case pages share (工单): JSON requests, DOM building with textContent (data never
// becomes HTML), and the map — the city's own layers as the base map (no internet tiles unless
// the city has its own tile server), the case's point, or a pin the user drops by clicking
// (which fills the form's lon/lat). Loaded as a file: the CSP forbids inline script.
(function () {
  "use strict";

  function el(tag, className, content) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (content !== undefined && content !== null) node.textContent = String(content);
    return node;
  }

  function request(url) {
    return fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" }).then(function (r) {
      if (r.ok) return r.json();
      return r.json().catch(function () { return {}; }).then(function (problem) {
        var err = new Error(problem.detail || problem.title || String(r.status));
        err.status = r.status;
        throw err;
      });
    });
  }

  function config(node) {
    try { return JSON.parse(node.getAttribute("data-config") || "{}"); } catch (e) { return {}; }
  }

  function ready(fn) {
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", fn);
    else fn();
  }

  function baseStyle(layer) {
    if (layer.role === "district") return { color: "#5b4b8a", weight: 2, fill: false };
    if (layer.role === "street") return { color: "#7a6aa8", weight: 1, dashArray: "6 4", fill: false };
    if (layer.look === "water") return { color: "#3b82c4", weight: 1, fillColor: "#9cc9f0", fillOpacity: 0.6 };
    if (layer.look === "road") return { color: "#c9a45c", weight: 1.5 };
    return { color: "#8895a7", weight: 1, fillOpacity: 0.05 };
  }

  function drawBase(L, map, layer, interactive) {
    var url = "/api/maps/layers/" + encodeURIComponent(layer.code) + "/features?limit=10000";
    return request(url).then(function (fc) {
      L.geoJSON(fc, {
        pane: "cases-base", interactive: interactive, style: function () { return baseStyle(layer); },
        pointToLayer: function (f, latlng) {
          return L.circleMarker(latlng, { radius: 2, color: "#8895a7", pane: "cases-base", interactive: interactive });
        }
      }).addTo(map);
    }).catch(function () { /* the case still shows without this layer */ });
  }

  function state(node, text) {
    var box = node.parentNode && node.parentNode.querySelector("[data-map-state]");
    if (box) box.textContent = text || "";
  }

  // A Leaflet map on `node` from its data-config: base layers, first view, tiles. Returns
  // {map, cfg, base} where base is a promise settled once the base layers are drawn.
  function makeMap(node) {
    var L = window.L;
    var cfg = config(node);
    var map = L.map(node, { zoomSnap: 0.25, boxZoom: false });
    map.attributionControl.setPrefix("Leaflet");
    L.control.scale({ imperial: false }).addTo(map);
    map.createPane("cases-base").style.zIndex = "405";
    map.createPane("cases-point").style.zIndex = "450";
    if (cfg.point) map.setView([cfg.point[1], cfg.point[0]], 16);
    else if (cfg.view) map.fitBounds([[cfg.view[1], cfg.view[0]], [cfg.view[3], cfg.view[2]]], { animate: false });
    else map.setView([43.84, 126.55], 12);
    if (cfg.tile_url) L.tileLayer(cfg.tile_url, { maxZoom: 19 }).addTo(map);
    var base = Promise.all((cfg.base || []).map(function (layer) { return drawBase(L, map, layer, !cfg.pick); }));
    return { map: map, cfg: cfg, base: base };
  }

  function pointMarker(L, latlng) {
    return L.circleMarker(latlng, {
      pane: "cases-point", radius: 9, color: "#7a271a", weight: 2, fillColor: "#f04438", fillOpacity: 0.85
    });
  }

  function showPoint(node) {
    var made = makeMap(node);
    var p = made.cfg.point;
    var dot = pointMarker(window.L, [p[1], p[0]]);
    dot.on("add", function () { var e = dot.getElement(); if (e) e.setAttribute("data-point", "case"); });
    dot.addTo(made.map);
    made.base.then(function () { node.setAttribute("data-status", "ready"); });
  }

  // Click the map to drop the pin: the form's lon/lat follow it, and typing them moves it.
  function pickPoint(node) {
    var L = window.L;
    var made = makeMap(node);
    var map = made.map;
    var lonIn = document.getElementById(node.getAttribute("data-lon-input"));
    var latIn = document.getElementById(node.getAttribute("data-lat-input"));
    var pin = null;
    function place(lat, lon) {
      if (pin) { pin.setLatLng([lat, lon]); return; }
      pin = pointMarker(L, [lat, lon]);
      pin.on("add", function () { var e = pin.getElement(); if (e) e.setAttribute("data-pin", "true"); });
      pin.addTo(map);
    }
    if (made.cfg.point) place(made.cfg.point[1], made.cfg.point[0]);
    map.on("click", function (e) {
      var lat = e.latlng.lat, lon = e.latlng.lng;
      if (lonIn) lonIn.value = lon.toFixed(6);
      if (latIn) latIn.value = lat.toFixed(6);
      place(lat, lon);
      node.setAttribute("data-picked", lon.toFixed(6) + "," + lat.toFixed(6));
      state(node, (made.cfg.text && made.cfg.text.picked || "") + " " + lon.toFixed(6) + ", " + lat.toFixed(6));
      if (lonIn) lonIn.dispatchEvent(new Event("change", { bubbles: true }));
    });
    function typed() {
      var lon = parseFloat(lonIn && lonIn.value), lat = parseFloat(latIn && latIn.value);
      if (isFinite(lon) && isFinite(lat) && Math.abs(lat) <= 90 && Math.abs(lon) <= 180) {
        place(lat, lon);
        map.panTo([lat, lon]);
      }
    }
    [lonIn, latIn].forEach(function (input) { if (input) input.addEventListener("input", typed); });
    state(node, made.cfg.text && made.cfg.text.pin);
    made.base.then(function () { node.setAttribute("data-status", "ready"); });
  }

  window.CityOSCases = { el: el, request: request, config: config, ready: ready, makeMap: makeMap };

  ready(function () {
    if (!window.L) return;
    var shown = document.getElementById("case-map");
    if (shown) showPoint(shown);
    var picking = document.getElementById("pick-map");
    if (picking) pickPoint(picking);
  });
})();
