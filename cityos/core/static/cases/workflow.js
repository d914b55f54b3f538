// A workflow as its BPMN diagram (流程图), drawn by bpmn-js's viewer from the XML this page's
// route serves. Read-only: workflows are published through the API.
(function () {
  "use strict";

  function start() {
    var node = document.getElementById("bpmn");
    if (!node || !window.BpmnJS) return;
    var cfg = {};
    try { cfg = JSON.parse(node.getAttribute("data-config") || "{}"); } catch (e) { cfg = {}; }
    var state = document.querySelector("[data-bpmn-state]");
    var viewer = new window.BpmnJS({ container: node });
    fetch(cfg.bpmn_url, { credentials: "same-origin" }).then(function (r) {
      if (!r.ok) throw new Error(String(r.status));
      return r.text();
    }).then(function (xml) {
      return viewer.importXML(xml);
    }).then(function () {
      viewer.get("canvas").zoom("fit-viewport", "auto");
      node.setAttribute("data-status", "ready");
    }).catch(function (err) {
      node.setAttribute("data-status", "failed");
      if (state) state.textContent = ((cfg.text && cfg.text.failed) || "") + " " + (err && err.message || "");
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
