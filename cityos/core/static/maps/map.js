// The one map (一张图): the console map (/console/maps) and the public map (/map).
// Loaded as a file: the CSP forbids inline script. Everything the page knows comes from the JSON
// in #map's data-config; features come from /api/maps as GeoJSON. No tiles unless the city set
// map_tile_url: the base map is the city's own layers (districts, roads, river, grid cells).
// Every text from the data goes into the page through textContent, never as HTML.
//
// The query tool is here (click: the feature and which district, street, community and grid the
// point is in); the others (box, burst, dig) are in map-tools.js and register through
// window.CityOSMap.tool(name, handlers), which also gives them what they share.
(function () {
  "use strict";

  var L, cfg, map, text;
  var layers = {};          // code -> {info, group, loaded, loading, time}
  var results = null;       // the layer group of the current tool's answer
  var mode = "query";
  var clicked = null;       // the feature a click hit, handed from the feature to the map
  var tools = {};           // name -> {click, mousedown, mousemove, mouseup, enter}
  var PAGE = 10000;         // the API's largest page
  var BY_VIEW = 5000;       // layers larger than this are fetched for the view only

  // -- small helpers ------------------------------------------------------------------------

  function el(tag, className, content) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (content !== undefined && content !== null) node.textContent = String(content);
    return node;
  }

  function shown(value) {
    if (value === null || value === undefined || value === "") return "—";
    if (typeof value === "number") return String(Math.round(value * 100) / 100);
    return String(value);
  }

  function csrf() {
    var raw = document.body.getAttribute("hx-headers");
    if (!raw) return null;
    try { return JSON.parse(raw)["X-CSRF-Token"] || null; } catch (e) { return null; }
  }

  function request(url, body) {
    var opts = { headers: { Accept: "application/json" }, credentials: "same-origin" };
    if (body !== undefined) {
      opts.method = "POST";
      opts.headers["Content-Type"] = "application/json";
      var token = csrf();
      if (token) opts.headers["X-CSRF-Token"] = token;
      opts.body = JSON.stringify(body);
    }
    return fetch(url, opts).then(function (r) {
      if (r.ok) return r.json();
      return r.json().catch(function () { return {}; }).then(function (problem) {
        var err = new Error(problem.detail || problem.title || String(r.status));
        err.status = r.status;
        throw err;
      });
    });
  }

  function status(message) {
    var node = document.querySelector("[data-map-status]");
    if (node) node.textContent = message || "";
  }

  function metres(value) {
    return (value < 10 ? value.toFixed(1) : Math.round(value).toLocaleString()) + " " + text.metres;
  }

  // -- styles -------------------------------------------------------------------------------

  var PALETTE = ["#1f5fa8", "#b5179e", "#2a9d8f", "#e76f51", "#6a4c93", "#8a5a00", "#3a86ff", "#588157"];

  function pipeColour(props) {
    var kind = cfg.pipe_kinds[props && props.kind];
    return kind ? kind.colour : "#00bfff";
  }

  function baseStyle(info, index) {
    var colour = PALETTE[index % PALETTE.length];
    // Borders only: a click inside goes through to what lies below (the grid, the network).
    if (info.role === "district") return { color: "#5b4b8a", weight: 2.5, fill: false };
    if (info.role === "street") return { color: "#7a6aa8", weight: 1.5, dashArray: "6 4", fill: false };
    if (info.role === "community") return { color: "#9a8cc4", weight: 1, dashArray: "2 3", fill: false };
    if (info.role === "grid") return { color: "#8895a7", weight: 0.6, fill: true, fillOpacity: 0.01 };
    if (info.look === "water") return { color: "#3b82c4", weight: 1, fillColor: "#9cc9f0", fillOpacity: 0.7 };
    if (info.look === "road") return { color: "#c9a45c", weight: 2 };
    if (info.geometry_type === "polygon") return { color: colour, weight: 1.5, fillOpacity: 0.15 };
    return { color: colour, weight: 2 };
  }

  function styleFor(info, index) {
    var base = baseStyle(info, index);
    return function (feature) {
      var props = feature.properties || {};
      var style = Object.assign({}, base);
      if (info.part === "pipes") {
        style.color = pipeColour(props);
        style.weight = props.diameter_mm >= 400 ? 5 : 3.5;
      } else if (info.look === "road") {
        style.weight = props["class"] === "主干路" ? 4 : props["class"] === "次干路" ? 2.5 : 1.5;
      } else if (info.look === "water" && feature.geometry && feature.geometry.type.indexOf("Line") >= 0) {
        style.dashArray = "6 6";
      }
      return style;
    };
  }

  function pointFor(info, index) {
    return function (feature, latlng) {
      var props = feature.properties || {};
      var o = { radius: 5, color: "#123f73", weight: 1, fillColor: PALETTE[index % PALETTE.length], fillOpacity: 0.85 };
      if (info.part === "valves") {
        o = { radius: 4, color: "#222", weight: 1.5, fillColor: props.status === "closed" ? "#b42318" : "#ffffff", fillOpacity: 1 };
      } else if (info.part === "customers") {
        o = { radius: 3, color: "#555", weight: 1, fillColor: "#bbb", fillOpacity: 0.9 };
      } else if (info.part === "sources") {
        o = { radius: 8, color: "#0b4f8a", weight: 2, fillColor: "#3b9ae1", fillOpacity: 1 };
      }
      o.pane = paneOf(info);
      o.className = "map-f map-l-" + info.code;
      return L.circleMarker(latlng, o);
    };
  }

  function paneOf(info) {
    if (info.geometry_type === "point" || info.part === "valves" || info.part === "sources" || info.part === "customers") return "map-points";
    if (info.geometry_type === "line" || info.look === "road") return "map-lines";
    if (info.role === "district" || info.role === "street") return "map-borders";
    return "map-areas";
  }

  // -- popups -------------------------------------------------------------------------------

  function propsList(props, titles) {
    var dl = el("dl", "map-props");
    Object.keys(props || {}).forEach(function (key) {
      dl.append(el("dt", null, (titles && titles[key]) || key), el("dd", null, shown(props[key])));
    });
    return dl;
  }

  function nameOf(role, code) {
    var ref = cfg.reference[role];
    var entry = ref && layers[ref.layer];
    if (!entry || !entry.group) return null;
    var found = null;
    entry.group.eachLayer(function (l) {
      if (!found && l.feature && l.feature.properties && String(l.feature.properties[ref.attribute]) === code) {
        found = l.feature.properties.name || null;
      }
    });
    return found;
  }

  function locateInto(box, latlng) {
    var where = el("div", "map-locate");
    where.append(el("h3", null, text.location));
    var line = el("p", "hint", latlng.lng.toFixed(6) + ", " + latlng.lat.toFixed(6));
    where.append(line);
    box.append(where);
    if (!Object.keys(cfg.reference).length) return;
    request("/api/maps/locate?lon=" + latlng.lng + "&lat=" + latlng.lat).then(function (found) {
      var dl = el("dl", "map-props");
      ["district", "street", "community", "grid"].forEach(function (role) {
        if (!(role in found)) return;
        var code = found[role];
        var name = code ? nameOf(role, code) : null;
        dl.append(el("dt", null, cfg.roles[role] || role),
                  el("dd", null, code ? (name ? name + "（" + code + "）" : code) : text.outside));
      });
      where.append(dl);
    }).catch(function () { where.append(el("p", "hint", text.locate_refused)); });
  }

  function queryPopup(latlng) {
    var box = el("div", "map-popup");
    if (clicked) {
      box.append(el("h3", null, clicked.info.title));
      var fid = el("p", "hint", clicked.feature.id);
      box.append(fid, propsList(clicked.feature.properties, clicked.info.attributes));
    }
    locateInto(box, latlng);
    L.popup({ maxWidth: 360, maxHeight: 360 }).setLatLng(latlng).setContent(box).openOn(map);
  }

  // -- loading layers -----------------------------------------------------------------------

  function featuresUrl(info, extra) {
    var url = "/api/maps/layers/" + encodeURIComponent(info.code) + "/features?limit=" + PAGE;
    var entry = layers[info.code];
    if (entry && entry.time) url += "&datetime=" + encodeURIComponent(entry.time);
    return url + (extra || "");
  }

  function fetchAll(info, extra) {
    var all = [];
    function page(offset) {
      return request(featuresUrl(info, (extra || "") + "&offset=" + offset)).then(function (fc) {
        all = all.concat(fc.features || []);
        var more = fc.numberMatched !== undefined ? all.length < fc.numberMatched : (fc.features || []).length === PAGE;
        return more && (fc.features || []).length ? page(offset + PAGE) : all;
      });
    }
    return page(0);
  }

  function tag(info) {
    return function (feature, shape) {
      shape.on("add", function () {
        var node = shape.getElement && shape.getElement();
        if (node) {
          node.setAttribute("data-layer", info.code);
          node.setAttribute("data-fid", String(feature.id));
        }
      });
      // The map's own click (which follows) shows the feature with the location.
      shape.on("click", function () { clicked = { info: info, feature: feature }; });
    };
  }

  function draw(code) {
    var entry = layers[code];
    var info = entry.info;
    var byView = info.feature_count > BY_VIEW;
    if (entry.loading) return entry.loading;
    var extra = "";
    if (byView) {
      var b = map.getBounds();
      extra = "&bbox=" + [b.getWest(), b.getSouth(), b.getEast(), b.getNorth()].map(function (v) { return v.toFixed(6); }).join(",");
    }
    status(text.loading + " " + info.title);
    entry.loading = (byView ? request(featuresUrl(info, extra)).then(function (fc) { return fc.features || []; })
                            : fetchAll(info, ""))
      .then(function (features) {
        var group = L.geoJSON({ type: "FeatureCollection", features: features }, {
          pane: paneOf(info), className: "map-f map-l-" + info.code,
          style: styleFor(info, entry.index), pointToLayer: pointFor(info, entry.index),
          onEachFeature: tag(info)
        });
        if (entry.group) map.removeLayer(entry.group);
        entry.group = group;
        entry.loaded = true;
        if (entry.on) group.addTo(map);
        var item = document.querySelector('[data-layer-item="' + info.code + '"]');
        if (item) item.setAttribute("data-drawn", String(features.length));
        status("");
        return group;
      })
      .catch(function (err) { status(text.failed + " " + info.title + ": " + err.message); })
      .then(function (group) { entry.loading = null; return group; });
    return entry.loading;
  }

  function setOn(code, on) {
    var entry = layers[code];
    if (!entry) return Promise.resolve(null);
    entry.on = on;
    var box = document.querySelector('input[data-layer="' + code + '"]');
    if (box) box.checked = on;
    if (!on) {
      if (entry.group) map.removeLayer(entry.group);
      return Promise.resolve(null);
    }
    if (entry.loaded && entry.group && !(entry.info.feature_count > BY_VIEW)) {
      entry.group.addTo(map);
      return Promise.resolve(entry.group);
    }
    return draw(code);
  }

  function fitBox(bbox, maxZoom) {
    if (!bbox || bbox.length !== 4) return;
    var bounds = L.latLngBounds([bbox[1], bbox[0]], [bbox[3], bbox[2]]);
    // Not animated: the map is where it was asked to be as soon as the button is pressed.
    if (bounds.getNorthEast().equals(bounds.getSouthWest())) map.setView(bounds.getCenter(), maxZoom || 16, { animate: false });
    else map.fitBounds(bounds.pad(0.05), { maxZoom: maxZoom || 18, animate: false });
  }

  // -- time slider --------------------------------------------------------------------------

  function timeWindow(code) {
    var entry = layers[code];
    var range = document.querySelector('[data-time-range="' + code + '"]');
    var label = document.querySelector('[data-time-label="' + code + '"]');
    var on = document.querySelector('[data-time-on="' + code + '"]');
    var extent = entry.info.time;
    range.disabled = !on.checked;
    if (!on.checked) {
      entry.time = null;
      label.textContent = text.time_all;
    } else {
      var start = Date.parse(extent[0]);
      var end = extent[1] ? Date.parse(extent[1]) : Date.parse(cfg.now);
      var steps = Number(range.max);
      var width = Math.max((end - start) / steps, 1000);
      var a = new Date(start + width * Math.min(Number(range.value), steps - 1));
      var b = new Date(a.getTime() + width);
      entry.time = a.toISOString() + "/" + b.toISOString();
      label.textContent = a.toLocaleString() + " – " + b.toLocaleString();
    }
    entry.loaded = false;
    if (entry.on) draw(code);
  }

  // -- results panel ------------------------------------------------------------------------

  function panel(title) {
    var section = document.querySelector("[data-results]");
    var body = section.querySelector("[data-results-body]");
    section.querySelector("[data-results-title]").textContent = title;
    body.replaceChildren();
    section.hidden = false;
    var clear = el("button", "link map-clear", text.clear);
    clear.type = "button";
    clear.addEventListener("click", clearResults);
    body.append(clear);
    return body;
  }

  function clearResults() {
    if (results) map.removeLayer(results);
    results = null;
    var section = document.querySelector("[data-results]");
    section.hidden = true;
    section.querySelector("[data-results-body]").replaceChildren();
    document.getElementById("map").removeAttribute("data-result");
  }

  function newResults() {
    if (results) map.removeLayer(results);
    results = L.featureGroup().addTo(map);
    return results;
  }

  function summaryList(rows) {
    var dl = el("dl", "map-summary");
    rows.forEach(function (row) { dl.append(el("dt", null, row[0]), el("dd", null, row[1])); });
    return dl;
  }

  function zoomButton(latlng) {
    var b = el("button", "link", text.zoom);
    b.type = "button";
    b.addEventListener("click", function () { map.setView(latlng, Math.max(map.getZoom(), 17)); });
    return b;
  }

  function tagResult(shape, kind, id) {
    shape.on("add", function () {
      var node = shape.getElement && shape.getElement();
      if (node) { node.setAttribute("data-result", kind); node.setAttribute("data-fid", String(id)); }
    });
  }

  // -- tools --------------------------------------------------------------------------------

  function setMode(next) {
    mode = next;
    document.getElementById("map").setAttribute("data-mode", mode);
    document.querySelectorAll("[data-for-tool]").forEach(function (node) {
      node.hidden = node.getAttribute("data-for-tool") !== mode;
    });
    var hint = document.querySelector("[data-tool-hint]");
    if (hint) hint.textContent = text[mode + "_hint"] || "";
    map.closePopup();
    map.dragging.enable();
    if (tools[mode] && tools[mode].enter) tools[mode].enter();
  }

  function dispatch(type) {
    return function (e) {
      var hit = clicked;
      clicked = null;
      if (type === "click" && mode === "query") {
        clicked = hit;
        queryPopup(e.latlng);
        clicked = null;
      } else if (tools[mode] && tools[mode][type]) {
        tools[mode][type](e);
      }
    };
  }

  // What map-tools.js shares (the map exists once start() has run; tools use it on events).
  window.CityOSMap = {
    tool: function (name, handlers) { tools[name] = handlers; },
    map: function () { return map; },
    config: function () { return cfg; },
    layer: function (code) { return layers[code]; },
    layers: function () { return layers; },
    el: el, shown: shown, request: request, status: status, metres: metres, setOn: setOn,
    panel: panel, newResults: newResults, summaryList: summaryList, zoomButton: zoomButton,
    tagResult: tagResult
  };

  // -- start --------------------------------------------------------------------------------

  function start() {
    var node = document.getElementById("map");
    if (!node || !node.dataset.config || !window.L) return;
    L = window.L;
    cfg = JSON.parse(node.dataset.config);
    text = cfg.text;
    map = L.map(node, { zoomSnap: 0.25, worldCopyJump: false, boxZoom: false, preferCanvas: false });
    map.attributionControl.setPrefix("Leaflet");
    L.control.scale({ imperial: false }).addTo(map);
    [["map-areas", 405], ["map-borders", 410], ["map-result-area", 415], ["map-lines", 420],
     ["map-results", 430], ["map-points", 440], ["map-result-points", 450]].forEach(function (p) {
      map.createPane(p[0]).style.zIndex = String(p[1]);
    });
    if (cfg.view) fitBox(cfg.view, 15);
    else map.setView([43.84, 126.55], 11);
    var tiles = null;
    if (cfg.tile_url) {
      tiles = L.tileLayer(cfg.tile_url, { maxZoom: 19 }).addTo(map);
      var toggle = document.querySelector("[data-tiles]");
      if (toggle) toggle.addEventListener("change", function () {
        if (toggle.checked) tiles.addTo(map); else map.removeLayer(tiles);
      });
    }
    cfg.layers.forEach(function (info, index) {
      layers[info.code] = { info: info, index: index, on: false, group: null, loaded: false, time: null };
    });
    document.querySelectorAll("[data-swatch]").forEach(function (sw) {
      var entry = layers[sw.getAttribute("data-swatch")];
      if (!entry) return;
      var style = baseStyle(entry.info, entry.index);
      sw.style.borderColor = entry.info.part === "pipes" ? "#00bfff" : style.color;
      if (style.fillColor) sw.style.backgroundColor = style.fillColor;
    });
    document.querySelectorAll("input[data-layer]").forEach(function (box) {
      box.addEventListener("change", function () { setOn(box.getAttribute("data-layer"), box.checked); });
    });
    document.querySelectorAll("[data-zoom-layer]").forEach(function (b) {
      b.addEventListener("click", function () {
        var code = b.getAttribute("data-zoom-layer");
        fitBox(layers[code].info.bbox);
        setOn(code, true);
      });
    });
    document.querySelectorAll("[data-time-on]").forEach(function (box) {
      var code = box.getAttribute("data-time-on");
      var range = document.querySelector('[data-time-range="' + code + '"]');
      box.addEventListener("change", function () { timeWindow(code); });
      range.addEventListener("change", function () { timeWindow(code); });
    });
    document.querySelectorAll("[data-tool]").forEach(function (radio) {
      radio.addEventListener("change", function () { if (radio.checked) setMode(radio.value); });
    });
    var select = document.querySelector("[data-network]");
    if (select) select.addEventListener("change", function () { setMode(mode); });
    ["click", "mousedown", "mousemove", "mouseup"].forEach(function (type) { map.on(type, dispatch(type)); });
    map.on("moveend", function () {
      Object.keys(layers).forEach(function (code) {
        var entry = layers[code];
        if (entry.on && entry.info.feature_count > BY_VIEW) draw(code);
      });
    });
    setMode("query");
    var pending = cfg.layers.filter(function (info) { return info.on; }).map(function (info) { return setOn(info.code, true); });
    Promise.all(pending).then(function () { node.setAttribute("data-status", "ready"); });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
