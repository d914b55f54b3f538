// What the sensing console's pages share (城市感知): JSON requests with the console's CSRF
// token, problem documents as errors, DOM building with textContent (data never becomes HTML),
// and times in the city's zone. Loaded as a file: the CSP forbids inline script.
(function () {
  "use strict";

  function el(tag, className, content) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (content !== undefined && content !== null) node.textContent = String(content);
    return node;
  }

  function csrf() {
    var raw = document.body.getAttribute("hx-headers");
    if (!raw) return null;
    try { return JSON.parse(raw)["X-CSRF-Token"] || null; } catch (e) { return null; }
  }

  // fetch JSON; a refusal rejects with an Error carrying the problem document (.problem).
  function request(url, method, body) {
    var opts = { method: method || "GET", headers: { Accept: "application/json" }, credentials: "same-origin" };
    if (opts.method !== "GET") {
      var token = csrf();
      if (token) opts.headers["X-CSRF-Token"] = token;
    }
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    return fetch(url, opts).then(function (r) {
      if (r.ok) return r.status === 204 ? null : r.json();
      return r.json().catch(function () { return {}; }).then(function (problem) {
        var err = new Error(problem.detail || problem.title || String(r.status));
        err.status = r.status;
        err.problem = problem;
        throw err;
      });
    });
  }

  var FORMAT = new Intl.DateTimeFormat("zh-CN", {
    timeZone: "Asia/Shanghai", year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false
  });

  // Epoch ms or an ISO time as the city's wall-clock time, like the server's local_time.
  function localTime(value) {
    if (value === null || value === undefined || value === "") return "";
    var date = typeof value === "number" ? new Date(value) : new Date(String(value));
    if (isNaN(date.getTime())) return String(value);
    var parts = {};
    FORMAT.formatToParts(date).forEach(function (p) { parts[p.type] = p.value; });
    return parts.year + "-" + parts.month + "-" + parts.day + " " + (parts.hour === "24" ? "00" : parts.hour) +
      ":" + parts.minute + ":" + parts.second;
  }

  function number(value) {
    if (value === null || value === undefined || value === "") return "—";
    if (typeof value === "number") return String(Math.round(value * 1000) / 1000);
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  function config(node) {
    try { return JSON.parse(node.getAttribute("data-config") || "{}"); } catch (e) { return {}; }
  }

  function ready(fn) {
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", fn);
    else fn();
  }

  window.CityOSSensing = {
    el: el, request: request, localTime: localTime, number: number, config: config, ready: ready
  };
})();
