// The data hub console's upload form. Loaded as a file: the CSP forbids inline script.
//
// <form data-hub-upload data-status="id" data-progress="/console/hub/uploads/{id}">: the file
// goes to the loading API (its own, larger body limit) with the session's CSRF header, a bar
// shows the transfer, then htmx polls the load's progress fragment until the load ends.
"use strict";

(function () {
  function message(status, text) {
    var p = document.createElement("p");
    p.className = "alert error";
    p.setAttribute("role", "alert");
    p.textContent = text;
    status.replaceChildren(p);
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-hub-upload")) return;
    event.preventDefault();
    var status = document.getElementById(form.dataset.status);
    var button = form.querySelector("button[type=submit]");
    var token = form.querySelector("input[name=csrf_token]");
    var label = document.createElement("p");
    var bar = document.createElement("progress");
    label.textContent = form.dataset.sending;
    bar.max = 100;
    bar.value = 0;
    status.replaceChildren(label, bar);
    if (button) button.disabled = true;

    var xhr = new XMLHttpRequest();
    xhr.upload.addEventListener("progress", function (e) {
      if (e.lengthComputable) bar.value = Math.round((100 * e.loaded) / e.total);
    });
    xhr.addEventListener("load", function () {
      if (button) button.disabled = false;
      var body = null;
      try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
      if (xhr.status === 202 && body && body.id) {
        form.reset();
        htmx.ajax("GET", form.dataset.progress.replace("{id}", encodeURIComponent(body.id)),
                  { target: status, swap: "innerHTML" });
      } else if (xhr.status === 401) {
        window.location.reload();  // the session ended: the page sends us to sign in
      } else {
        message(status, form.dataset.failed + " " + ((body && (body.detail || body.title)) || xhr.status));
      }
    });
    xhr.addEventListener("error", function () {
      if (button) button.disabled = false;
      message(status, form.dataset.failed);
    });
    xhr.open("POST", form.action);
    xhr.setRequestHeader("Accept", "application/json");
    if (token) xhr.setRequestHeader("X-CSRF-Token", token.value);
    xhr.send(new FormData(form));
  });
})();
