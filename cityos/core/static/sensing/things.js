// The device registry's map (设备分布图): the city's own layers as the base map (no internet
// tiles unless the city has its own tile server), and every device that matches the page's
// filters as a dot coloured by its status. Devices come from /api/sensing/things (the same
// filters as the table), base layers from /api/maps as GeoJSON.
(function () {
  "use strict";

  var S = window.CityOSSensing;
  var COLOURS = { online: "#12b76a", offline: "#98a2b3", alerting: "#d92d20" };
  var PAGE = 500;  // the API's largest page
  var MOST = 10000;  // dots drawn at most; the table pages through the rest

  function baseStyle(layer) {
    if (layer.role === "district") return { color: "#5b4b8a", weight: 2, fill: false };
    if (layer.role === "street") return { color: "#7a6aa8", weight: 1, dashArray: "6 4", fill: false };
    if (layer.look === "water") return { color: "#3b82c4", weight: 1, fillColor: "#9cc9f0", fillOpacity: 0.6 };
    if (layer.look === "road") return { color: "#c9a45c", weight: 1.5 };
    return { color: "#8895a7", weight: 1, fillOpacity: 0.05 };
  }

  function drawBase(L, map, layer) {
    var url = "/api/maps/layers/" + encodeURIComponent(layer.code) + "/features?limit=10000";
    return S.request(url).then(function (fc) {
      L.geoJSON(fc, {
        pane: "sense-base", style: function () { return baseStyle(layer); },
        pointToLayer: function (f, latlng) { return L.circleMarker(latlng, { radius: 2, color: "#8895a7", pane: "sense-base" }); },
        onEachFeature: function (f, shape) {
          shape.on("add", function () {
            var node = shape.getElement && shape.getElement();
            if (node) node.setAttribute("data-layer", layer.code);
          });
        }
      }).addTo(map);
    }).catch(function () { /* the devices still show without this layer */ });
  }

  // Where a device is: the API gives lon/lat of its (first) Location.
  function pointOf(item) {
    return typeof item.lon === "number" && typeof item.lat === "number" ? [item.lat, item.lon] : null;
  }

  function popup(item, text) {
    var box = S.el("div", "sense-popup");
    var a = S.el("a", null, item.name);
    a.href = "/console/sensing/things/" + encodeURIComponent(item.id);
    var title = S.el("p");
    title.append(a);
    box.append(title, S.el("p", "small", (text.status[item.status] || item.status) +
      (item.last_seen_at ? " · " + S.localTime(item.last_seen_at) : "")));
    return box;
  }

  function fetchThings(url) {
    var all = [];
    function page(offset) {
      var sep = url.indexOf("?") >= 0 ? "&" : "?";
      return S.request(url + sep + "limit=" + PAGE + "&offset=" + offset).then(function (body) {
        var items = body.items || [];
        all = all.concat(items);
        var more = items.length === PAGE && all.length < Math.min(body.total || 0, MOST);
        return more ? page(offset + PAGE) : all;
      });
    }
    return page(0);
  }

  function start() {
    var node = document.getElementById("sense-map");
    if (!node || !window.L) return;
    var L = window.L;
    var cfg = S.config(node);
    var map = L.map(node, { zoomSnap: 0.25, boxZoom: false });
    map.attributionControl.setPrefix("Leaflet");
    L.control.scale({ imperial: false }).addTo(map);
    map.createPane("sense-base").style.zIndex = "405";
    map.createPane("sense-things").style.zIndex = "450";
    if (cfg.view) map.fitBounds([[cfg.view[1], cfg.view[0]], [cfg.view[3], cfg.view[2]]], { animate: false });
    else map.setView([43.84, 126.55], 11);
    if (cfg.tile_url) L.tileLayer(cfg.tile_url, { maxZoom: 19 }).addTo(map);
    var base = Promise.all((cfg.base || []).map(function (layer) { return drawBase(L, map, layer); }));
    var things = fetchThings(cfg.things_url).then(function (items) {
      var bounds = [];
      items.forEach(function (item) {
        var at = pointOf(item);
        if (!at) return;
        bounds.push(at);
        var dot = L.circleMarker(at, {
          pane: "sense-things", radius: 7, color: "#123f73", weight: 1,
          fillColor: COLOURS[item.status] || "#98a2b3", fillOpacity: 0.9
        });
        dot.on("add", function () {
          var el = dot.getElement && dot.getElement();
          if (el) { el.setAttribute("data-thing", String(item.id)); el.setAttribute("data-status", item.status || ""); }
        });
        dot.bindPopup(function () { return popup(item, cfg.text); });
        dot.addTo(map);
      });
      if (bounds.length) map.fitBounds(L.latLngBounds(bounds).pad(0.2), { maxZoom: 15, animate: false });
      node.setAttribute("data-drawn", String(bounds.length));
    }).catch(function (err) {
      var state = document.querySelector("[data-map-state]");
      if (state) state.textContent = cfg.text.failed + " " + err.message;
    });
    Promise.all([base, things]).then(function () { node.setAttribute("data-status", "ready"); });
  }

  S.ready(start);
})();
