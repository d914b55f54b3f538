// The agent screen's smart dispatch (智能派单): as the agent types what the caller says, ask
// /console/cases/agent/suggest and show the guess; when it is confident enough (a rule, or the
// model above the city's threshold) fill in the category unless the agent chose one. The agent
// decides: the suggestion is only a starting point.
(function () {
  "use strict";

  var C = window.CityOSCases;
  var WAIT_MS = 500;

  function start() {
    var mapNode = document.getElementById("pick-map");
    var text = document.getElementById("f-description");
    var select = document.getElementById("f-category");
    var box = document.querySelector("[data-suggestion]");
    if (!mapNode || !text || !select || !box) return;
    var cfg = C.config(mapNode);
    var words = cfg.text || {};
    var chosenByHand = select.value !== "";
    var timer = null, asked = 0;
    select.addEventListener("change", function (e) { if (e.isTrusted) chosenByHand = select.value !== ""; });

    function show(s) {
      var line = box.querySelector("[data-suggestion-text]");
      var more = box.querySelector("[data-suggestion-more]");
      if (!s.available) { box.hidden = true; box.setAttribute("data-state", "none"); return; }
      var pct = typeof s.confidence === "number" ? Math.round(s.confidence * 100) + "%" : "";
      line.textContent = s.category_name + (s.department_name ? " → " + s.department_name : "") +
        (pct ? "（" + (words.confidence || "") + " " + pct + "）" : "");
      var others = (s.top3 || []).filter(function (t) { return t.category !== s.category; }).map(function (t) {
        return t.name + (typeof t.confidence === "number" ? " " + Math.round(t.confidence * 100) + "%" : "");
      });
      more.textContent = [s.reason || "", others.join(" · ")].filter(Boolean).join(" — ");
      box.hidden = false;
      box.setAttribute("data-state", "shown");
      box.setAttribute("data-category", s.category);
      var option = select.querySelector('option[value="' + CSS.escape(s.category) + '"]');
      if (s.confident && !chosenByHand && option) {
        select.value = s.category;
        select.setAttribute("data-suggested", s.category);
      }
    }

    function ask() {
      var value = text.value.trim();
      if (value.length < (cfg.suggest_min || 4)) return;
      var lon = document.getElementById("f-lon"), lat = document.getElementById("f-lat");
      var q = new URLSearchParams({ text: value, lon: lon ? lon.value : "", lat: lat ? lat.value : "" });
      var mine = ++asked;
      C.request(cfg.suggest_url + "?" + q.toString()).then(function (s) {
        if (mine === asked) show(s);
      }).catch(function () { box.hidden = true; });
    }

    function later() {
      if (timer) clearTimeout(timer);
      timer = setTimeout(ask, WAIT_MS);
    }
    text.addEventListener("input", later);
    if (text.value.trim()) later();
  }

  C.ready(start);
})();
