// The one map's tools beyond the query (一张图工具): box query (框选), burst analysis (爆管分析)
// and before you dig (开挖前查询). Loaded after map.js, whose window.CityOSMap they register with
// and draw through. Every text from the data goes into the page through textContent.
(function () {
  "use strict";

  var M = window.CityOSMap;
  if (!M) return;
  var L = window.L;
  var el = M.el, shown = M.shown, request = M.request, status = M.status, metres = M.metres;
  var panel = M.panel, newResults = M.newResults, summaryList = M.summaryList;
  var zoomButton = M.zoomButton, tagResult = M.tagResult;

  var map, cfg, text;
  var setOn = M.setOn;

  // A handler that sees the map as it is now (map.js builds it after this file is read).
  function bound(fn) {
    return function (e) {
      map = M.map();
      cfg = M.config();
      text = cfg.text;
      return fn(e);
    };
  }

  // -- burst analysis -----------------------------------------------------------------------

  function nearestPipe(network, latlng) {
    var entry = M.layer(network + "-pipes");
    if (!entry || !entry.group) return null;
    var p = map.latLngToLayerPoint(latlng);
    var best = null;
    entry.group.eachLayer(function (shape) {
      var lines = shape.getLatLngs();
      if (lines.length && !Array.isArray(lines[0])) lines = [lines];
      lines.forEach(function (line) {
        for (var i = 1; i < line.length; i++) {
          var d = L.LineUtil.pointToSegmentDistance(p, map.latLngToLayerPoint(line[i - 1]), map.latLngToLayerPoint(line[i]));
          if (!best || d < best.d) best = { d: d, feature: shape.feature };
        }
      });
    });
    return best && best.d <= 14 ? best.feature : null;
  }

  function burstAt(latlng) {
    var select = document.querySelector("[data-network]");
    if (!select || !select.value) return;
    var network = select.value;
    setOn(network + "-pipes", true).then(function () {
      var pipe = nearestPipe(network, latlng);
      if (!pipe) { status(text.no_pipe); return; }
      status(text.loading);
      request("/api/maps/networks/" + encodeURIComponent(network) + "/burst",
              { pipe_id: String(pipe.id), at: [latlng.lng, latlng.lat] })
        .then(showBurst)
        .catch(function (err) { status(text.failed + ": " + err.message); });
    });
  }

  function showBurst(r) {
    status("");
    var group = newResults();
    if (r.area) {
      L.geoJSON(r.area, { pane: "map-result-area", interactive: false,
        style: { color: "#e76f51", weight: 1, fillColor: "#f4a261", fillOpacity: 0.3 } }).addTo(group);
    }
    L.geoJSON(r.unsupplied_pipes, { pane: "map-results",
      style: { color: "#f08c00", weight: 6, dashArray: "8 6", opacity: 0.9 },
      onEachFeature: function (f, s) { tagResult(s, "unsupplied", f.id); } }).addTo(group);
    L.geoJSON(r.isolated_pipes, { pane: "map-results", style: { color: "#b42318", weight: 7, opacity: 0.85 },
      onEachFeature: function (f, s) { tagResult(s, "isolated", f.id); } }).addTo(group);
    L.geoJSON(r.segment, { pane: "map-results", interactive: false,
      style: { color: "#111", weight: 4, dashArray: "2 4" } }).addTo(group);
    L.geoJSON(r.customers_cut_off, { pane: "map-result-points",
      pointToLayer: function (f, latlng) {
        return L.circleMarker(latlng, { pane: "map-result-points", radius: 4, color: "#6a1b9a", weight: 1,
                                        fillColor: "#ce93d8", fillOpacity: 1, className: "burst-customer" });
      },
      onEachFeature: function (f, s) { tagResult(s, "customer", f.id); s.bindTooltip(f.properties.name || f.id); } }).addTo(group);
    var valves = L.geoJSON(r.valves_to_close, { pane: "map-result-points",
      pointToLayer: function (f, latlng) {
        return L.circleMarker(latlng, { pane: "map-result-points", radius: 9, color: "#ffffff", weight: 3,
                                        fillColor: "#b42318", fillOpacity: 1, className: "burst-valve" });
      },
      onEachFeature: function (f, s) { tagResult(s, "valve", f.id); s.bindTooltip(f.id, { permanent: false }); } }).addTo(group);
    L.geoJSON(r.valves_already_closed, { pane: "map-result-points",
      pointToLayer: function (f, latlng) {
        return L.circleMarker(latlng, { pane: "map-result-points", radius: 7, color: "#b42318", weight: 3,
                                        fillColor: "#ffffff", fillOpacity: 1, className: "burst-valve-closed" });
      },
      onEachFeature: function (f, s) { tagResult(s, "valve-closed", f.id); } }).addTo(group);
    if (r.at) {
      L.circleMarker([r.at[1], r.at[0]], { pane: "map-result-points", radius: 6, color: "#111", weight: 2,
                                           fillColor: "#ffd400", fillOpacity: 1, className: "burst-at" }).addTo(group);
    }
    var s = r.summary;
    var body = panel(text.burst_title + " · " + text.pipe + " " + r.pipe_id);
    body.append(summaryList([
      [text.valves_to_close, String(s.valves_to_close)],
      [text.valves_already_closed, String(s.valves_already_closed)],
      [text.isolated_pipes, s.isolated_pipes + "（" + metres(s.isolated_length_m) + "）"],
      [text.unsupplied_pipes, s.unsupplied_pipes + "（" + metres(s.unsupplied_length_m) + "）"],
      [text.customers_cut_off, s.customers_cut_off + "（" + text.customers_in_zone + " " + s.customers_in_zone +
        "，" + text.customers_downstream + " " + s.customers_downstream + "）"],
      [text.area, Math.round(s.area_m2).toLocaleString() + " " + text.square_metres]
    ]));
    var h = el("h3", null, text.valves_to_close);
    var list = el("ol", "map-valves");
    list.setAttribute("data-valves", "");
    r.valves_to_close.features.forEach(function (f) {
      var li = el("li");
      li.setAttribute("data-valve", String(f.id));
      li.append(el("span", "map-valve-id", f.id), document.createTextNode(" "),
                zoomButton([f.geometry.coordinates[1], f.geometry.coordinates[0]]));
      list.append(li);
    });
    body.append(h, list);
    if (r.warnings.length) {
      var warn = el("ul", "alert warn map-warnings");
      r.warnings.forEach(function (w) { warn.append(el("li", null, w.properties.message)); });
      body.append(el("h3", null, text.warnings), warn);
    }
    document.getElementById("map").setAttribute("data-result", "burst");
    if (valves.getLayers().length || r.isolated_pipes.features.length) {
      var bounds = group.getBounds();
      if (bounds.isValid() && !map.getBounds().contains(bounds)) map.fitBounds(bounds.pad(0.2));
    }
  }

  // -- before you dig -----------------------------------------------------------------------

  function digAt(latlng) {
    var input = document.querySelector("[data-dig-metres]");
    var radius = Math.min(Math.max(Number(input && input.value) || 10, 1), cfg.dig_max_m);
    var group = newResults();
    L.circle(latlng, { radius: radius, pane: "map-result-area", color: "#123f73", weight: 2, dashArray: "4 4",
                       fillOpacity: 0.08, interactive: false }).addTo(group);
    status(text.loading);
    request("/api/maps/networks/dig-check", { geometry: { type: "Point", coordinates: [latlng.lng, latlng.lat] },
                                              metres: radius })
      .then(function (r) {
        status("");
        L.geoJSON(r, { pane: "map-results",
          style: { color: "#f5a623", weight: 8, opacity: 0.9 },
          onEachFeature: function (f, s) { tagResult(s, "dig", f.id); } }).addTo(group);
        var body = panel(text.dig_title + " · " + metres(radius));
        if (!r.features.length) { body.append(el("p", "hint", text.dig_none)); return; }
        var table = el("table", "table map-dig");
        var head = el("tr");
        [text.pipe, text.kind, text.distance, text.depth, text.diameter, text.material, text.year, text.network]
          .forEach(function (h) { var th = el("th", null, h); th.scope = "col"; head.append(th); });
        var thead = el("thead");
        thead.append(head);
        var tbody = el("tbody");
        r.features.forEach(function (f) {
          var p = f.properties;
          var tr = el("tr");
          tr.setAttribute("data-dig-hit", String(f.id));
          [f.id, p.kind_zh || p.kind, metres(p.distance_m), shown(p.depth_m), shown(p.diameter_mm),
           shown(p.material), shown(p.year), p.network].forEach(function (v) { tr.append(el("td", null, v)); });
          tbody.append(tr);
        });
        table.append(thead, tbody);
        var scroll = el("div", "table-scroll");
        scroll.append(table);
        body.append(scroll);
        document.getElementById("map").setAttribute("data-result", "dig");
      })
      .catch(function (err) { status(text.failed + ": " + err.message); });
  }

  // -- box query ----------------------------------------------------------------------------

  var boxing = null;

  function boxStart(e) {
    boxing = { start: e.latlng, rect: L.rectangle(L.latLngBounds(e.latlng, e.latlng),
      { pane: "map-result-area", color: "#123f73", weight: 2, dashArray: "4 4", fillOpacity: 0.05, interactive: false }).addTo(map) };
  }

  function boxMove(e) {
    if (boxing) boxing.rect.setBounds(L.latLngBounds(boxing.start, e.latlng));
  }

  function boxEnd(e) {
    if (!boxing) return;
    var rect = boxing.rect;
    var bounds = L.latLngBounds(boxing.start, e.latlng);
    boxing = null;
    map.removeLayer(rect);
    if (bounds.getNorthEast().equals(bounds.getSouthWest())) return;
    var group = newResults();
    L.rectangle(bounds, { pane: "map-result-area", color: "#123f73", weight: 2, dashArray: "4 4", fillOpacity: 0.05, interactive: false }).addTo(group);
    var bbox = [bounds.getWest(), bounds.getSouth(), bounds.getEast(), bounds.getNorth()].map(function (v) { return v.toFixed(6); }).join(",");
    var body = panel(text.box_title);
    var list = el("ul", "map-box-results");
    body.append(list);
    var layers = M.layers();
    Object.keys(layers).forEach(function (code) {
      var entry = layers[code];
      if (!entry.on) return;
      var li = el("li");
      li.append(el("strong", null, entry.info.title), document.createTextNode(" "), el("span", "hint", text.loading));
      list.append(li);
      var url = "/api/maps/layers/" + encodeURIComponent(code) + "/features?limit=100&bbox=" + bbox +
                (entry.time ? "&datetime=" + encodeURIComponent(entry.time) : "");
      request(url).then(function (fc) {
        li.lastChild.textContent = text.matched.replace("{n}", fc.numberMatched !== undefined ? fc.numberMatched : fc.numberReturned);
        L.geoJSON(fc, { pane: "map-results", interactive: false,
          style: { color: "#f5a623", weight: 4, fill: false },
          pointToLayer: function (f, latlng) { return L.circleMarker(latlng, { pane: "map-results", radius: 7, color: "#f5a623", weight: 3, fill: false }); }
        }).addTo(group);
        var names = el("ul", "map-names");
        fc.features.slice(0, 10).forEach(function (f) {
          var p = f.properties || {};
          names.append(el("li", null, p.name || p.code || f.id));
        });
        if (fc.features.length > 10) names.append(el("li", "hint", text.more));
        li.append(names);
      }).catch(function (err) { li.lastChild.textContent = err.message; });
    });
  }

  // -- registration -------------------------------------------------------------------------

  M.tool("burst", {
    click: bound(function (e) { burstAt(e.latlng); }),
    enter: bound(function () {
      var select = document.querySelector("[data-network]");
      if (select && select.value) setOn(select.value + "-pipes", true);
    })
  });
  M.tool("dig", { click: bound(function (e) { digAt(e.latlng); }) });
  // Dragging a box must not pan the map.
  M.tool("box", { enter: bound(function () { map.dragging.disable(); }), mousedown: bound(boxStart),
                  mousemove: bound(boxMove), mouseup: bound(boxEnd) });
})();
