// The rule editor (告警规则): the kind chooses which parameters are shown, the target type which
// list of targets; saving posts JSON to /api/sensing/rules (PATCH to edit) and puts each error
// of the API's problem document next to its field ("params.value" beside the value).
(function () {
  "use strict";

  var S = window.CityOSSensing;
  var form, cfg;

  function showKind() {
    var kind = form.elements.kind.value;
    form.querySelectorAll("fieldset[data-kind]").forEach(function (fs) {
      var on = fs.getAttribute("data-kind") === kind;
      fs.hidden = !on;
      fs.disabled = !on;
    });
  }

  function showTarget() {
    var type = form.elements.target_type.value;
    form.querySelectorAll("[data-target-for]").forEach(function (box) {
      var on = box.getAttribute("data-target-for") === type;
      box.hidden = !on;
      box.querySelector("select").disabled = !on;
    });
  }

  // A parameter's value as the API wants it; what cannot be read is sent as typed, so the
  // API's answer names the field and says why.
  function paramValue(control) {
    var raw = control.value.trim();
    if (raw === "") return undefined;
    var type = control.getAttribute("data-param");
    if (type === "number" || type === "integer") {
      var n = Number(raw);
      return isNaN(n) ? raw : n;
    }
    if (type === "geojson") {
      try { return JSON.parse(raw); } catch (e) { return raw; }
    }
    return raw;
  }

  function body() {
    var out = {
      name: form.elements.namedItem("name").value.trim(),
      kind: form.elements.kind.value,
      severity: form.elements.severity.value,
      target_type: form.elements.target_type.value,
      enabled: form.querySelector('[name="enabled"]').checked,
      params: {}
    };
    var target = form.querySelector('[data-target-for="' + out.target_type + '"] select').value;
    out.target_id = target === "" ? null : Number(target);
    var fieldset = form.querySelector('fieldset[data-kind="' + out.kind + '"]');
    fieldset.querySelectorAll("[data-param]").forEach(function (control) {
      var value = paramValue(control);
      if (value !== undefined) out.params[control.name.slice("params.".length)] = value;
    });
    return out;
  }

  function clearErrors() {
    form.querySelectorAll("[data-error-for]").forEach(function (p) { p.hidden = true; p.textContent = ""; });
    form.querySelectorAll(".has-error").forEach(function (f) { f.classList.remove("has-error"); });
    form.querySelectorAll("[aria-invalid]").forEach(function (c) { c.removeAttribute("aria-invalid"); });
    var box = form.querySelector("[data-form-error]");
    box.hidden = true;
    box.querySelector("[data-form-error-list]").replaceChildren();
  }

  // The visible place for a field's error, if the form has one.
  function placeOf(field) {
    var name = field.replace(/^body\./, "");
    var found = null;
    form.querySelectorAll('[data-error-for="' + name + '"]').forEach(function (p) {
      var box = p.parentElement.closest("[hidden], fieldset[disabled]");
      if (!found && !box) found = p;
    });
    return found;
  }

  function showErrors(problem) {
    var errors = (problem && problem.errors) || [];
    var others = [];
    errors.forEach(function (e) {
      var place = placeOf(e.field || "");
      if (!place) { others.push((e.field ? e.field + ": " : "") + e.reason); return; }
      place.textContent = e.reason;
      place.hidden = false;
      var box = place.closest(".field");
      box.classList.add("has-error");
      var control = box.querySelector("input, select, textarea");
      if (control) { control.setAttribute("aria-invalid", "true"); control.setAttribute("aria-describedby", place.id || ""); }
    });
    if (!errors.length) others.push((problem && (problem.detail || problem.title)) || cfg.text.failed);
    var alertBox = form.querySelector("[data-form-error]");
    var list = alertBox.querySelector("[data-form-error-list]");
    others.forEach(function (line) { list.append(S.el("li", null, line)); });
    alertBox.hidden = false;
    var first = form.querySelector("[aria-invalid]");
    if (first) first.focus();
  }

  function save(event) {
    event.preventDefault();
    clearErrors();
    var button = form.querySelector('button[type="submit"]');
    button.disabled = true;
    S.request(form.getAttribute("data-url"), form.getAttribute("data-method"), body())
      .then(function (rule) {
        window.location.assign("/console/sensing/rules?saved=" + encodeURIComponent(rule.id));
      })
      .catch(function (err) {
        button.disabled = false;
        showErrors(err.problem || { detail: err.message });
      });
  }

  S.ready(function () {
    form = document.getElementById("rule-form");
    if (!form) return;
    cfg = S.config(form);
    form.elements.kind.addEventListener("change", showKind);
    form.elements.target_type.addEventListener("change", showTarget);
    form.addEventListener("submit", save);
    showKind();
    showTarget();
  });
})();
