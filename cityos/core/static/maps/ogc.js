// The OGC API pages (/ogc): the features of the page on a blank Leaflet map (no tiles: a city
// network has no internet). The features come from the page's JSON data block #ogc-data, in
// CRS84 (lon, lat); nothing is fetched and nothing runs inline.
(function () {
  "use strict";

  function popup(feature) {
    var box = document.createElement("div");
    var title = document.createElement("strong");
    title.textContent = String(feature.id);
    box.appendChild(title);
    var dl = document.createElement("dl");
    var props = feature.properties || {};
    Object.keys(props).forEach(function (key) {
      var dt = document.createElement("dt");
      dt.textContent = key;
      var dd = document.createElement("dd");
      dd.textContent = props[key] === null ? "" : String(props[key]);
      dl.appendChild(dt);
      dl.appendChild(dd);
    });
    box.appendChild(dl);
    return box;
  }

  function draw(el, data) {
    var L = window.L;
    var map = L.map(el, { zoomSnap: 0.25, worldCopyJump: false });
    map.attributionControl.setPrefix("Leaflet");
    L.control.scale({ imperial: false }).addTo(map);
    var layer = L.geoJSON(data, {
      style: function () { return { color: "#123f73", weight: 2, fillColor: "#1f5fa8", fillOpacity: 0.25 }; },
      pointToLayer: function (feature, latlng) {
        return L.circleMarker(latlng, {
          radius: 6, color: "#123f73", weight: 1, fillColor: "#1f5fa8", fillOpacity: 0.75
        });
      },
      onEachFeature: function (feature, shape) { shape.bindPopup(popup(feature)); }
    }).addTo(map);
    var bounds = layer.getBounds();
    var bbox = JSON.parse(el.dataset.bbox || "null");
    if ((!bounds || !bounds.isValid()) && bbox && bbox.length === 4) {
      bounds = L.latLngBounds([bbox[1], bbox[0]], [bbox[3], bbox[2]]);
    }
    if (!bounds || !bounds.isValid()) map.setView([43.84, 126.55], 11);
    else if (bounds.getNorthEast().equals(bounds.getSouthWest())) map.setView(bounds.getCenter(), 15);
    else map.fitBounds(bounds.pad(0.1));
    el.dataset.features = String(layer.getLayers().length);
  }

  function start() {
    var el = document.getElementById("ogc-map");
    var data = document.getElementById("ogc-data");
    if (!el || !data || !window.L) return;
    draw(el, JSON.parse(data.textContent));
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
