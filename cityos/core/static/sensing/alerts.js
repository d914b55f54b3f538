// The alert list (告警): acknowledge and resolve without leaving the page, and alerts arriving
// live from the server-sent event stream (/api/sensing/alerts/stream): a new alert that
// matches the filters appears at the top; a change to one in view updates its row.
(function () {
  "use strict";

  var S = window.CityOSSensing;
  var cfg, text, table, body;
  var BADGE = { open: "bad", acknowledged: "warn", resolved: "good" };
  var SEVERITY = { critical: "bad", warning: "warn" };

  function status(message) {
    var node = document.querySelector("[data-alert-status]");
    if (node) node.textContent = message || "";
  }

  function badge(kind, value) {
    var cls = kind === "state" ? BADGE[value] : SEVERITY[value];
    var words = kind === "state" ? text.states : text.severities;
    var b = S.el("span", "badge" + (cls ? " " + cls : ""), words[value] || value);
    if (kind === "state") b.setAttribute("data-state-badge", "");
    else b.setAttribute("data-severity", value);
    return b;
  }

  function showState(row, alert) {
    row.setAttribute("data-state", alert.state);
    var cell = row.querySelector("[data-alert-state]");
    if (cell) cell.replaceChildren(badge("state", alert.state));
    var count = row.querySelector("[data-alert-occurrences]");
    if (count && alert.occurrences !== undefined) count.textContent = String(alert.occurrences);
    row.querySelectorAll("[data-alert-action]").forEach(function (b) {
      var action = b.getAttribute("data-alert-action");
      b.hidden = action === "acknowledge" ? alert.state !== "open" : alert.state === "resolved";
    });
  }

  function act(button) {
    var row = button.closest("[data-alert]");
    var id = row.getAttribute("data-alert");
    var action = button.getAttribute("data-alert-action");
    button.disabled = true;
    S.request("/api/sensing/alerts/" + encodeURIComponent(id) + "/" + action, "POST", {})
      .then(function (alert) {
        showState(row, alert);
        status(text.done[action]);
      })
      .catch(function (err) { status(text.failed + " " + err.message); })
      .then(function () { button.disabled = false; });
  }

  function actionButton(action) {
    var b = S.el("button", "link", text.actions[action]);
    b.type = "button";
    b.setAttribute("data-alert-action", action);
    return b;
  }

  function cell(content, className) {
    var td = S.el("td", className || null);
    if (content instanceof Node) td.append(content); else if (content !== undefined) td.textContent = content;
    return td;
  }

  function newRow(alert) {
    var row = S.el("tr", "sense-new");
    row.setAttribute("data-alert", String(alert.id));
    var thing = S.el("a", null, cfg.things[alert.thing_id] || "#" + alert.thing_id);
    thing.href = "/console/sensing/things/" + encodeURIComponent(alert.thing_id);
    var rule = S.el("a", null, cfg.rules[alert.rule_id] || "#" + alert.rule_id);
    rule.href = "/console/sensing/rules?edit=" + encodeURIComponent(alert.rule_id);
    var message = cell(alert.message);
    if (alert.value !== null && alert.value !== undefined) message.append(" ", S.el("span", "muted", "(" + S.number(alert.value) + ")"));
    var state = cell(); state.setAttribute("data-alert-state", "");
    var count = cell("", "num"); count.setAttribute("data-alert-occurrences", "");
    row.append(cell(S.localTime(alert.opened_at), "nowrap"), cell(badge("severity", alert.severity)), state,
               cell(thing), cell(rule), message, count);
    if (cfg.may_handle) {
      var actions = cell(undefined, "row-actions");
      actions.append(actionButton("acknowledge"), " ", actionButton("resolve"));
      row.append(actions);
    }
    showState(row, alert);
    return row;
  }

  function matches(alert) {
    return (!cfg.filters.state || cfg.filters.state === alert.state) &&
      (!cfg.filters.severity || cfg.filters.severity === alert.severity);
  }

  function arrived(name, alert) {
    var row = body.querySelector('[data-alert="' + alert.id + '"]');
    if (row) {
      showState(row, alert);
      return;
    }
    if (name !== "alert.opened" || !cfg.first_page || !matches(alert)) return;
    var empty = body.querySelector("[data-empty]");
    if (empty) empty.remove();
    body.prepend(newRow(alert));
    status(text.new_alert + "：" + alert.message);
  }

  function listen() {
    var live = document.querySelector("[data-live]");
    if (!window.EventSource) return;
    var source = new EventSource(cfg.stream);
    source.onopen = function () { live.setAttribute("data-live", "on"); live.textContent = text.live_on; };
    source.onerror = function () { live.setAttribute("data-live", "off"); live.textContent = text.live_off; };
    ["alert.opened", "alert.acknowledged", "alert.resolved"].forEach(function (name) {
      source.addEventListener(name, function (event) {
        var data;
        try { data = JSON.parse(event.data); } catch (e) { return; }
        arrived(name, data.alert || data);
      });
    });
    window.addEventListener("pagehide", function () { source.close(); });
  }

  S.ready(function () {
    table = document.getElementById("sense-alerts");
    if (!table) return;
    cfg = S.config(table);
    text = cfg.text;
    body = table.querySelector("[data-alert-rows]");
    table.addEventListener("click", function (event) {
      var button = event.target instanceof Element ? event.target.closest("[data-alert-action]") : null;
      if (button) act(button);
    });
    listen();
  });
})();
