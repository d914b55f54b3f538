// CityOS pages' small behaviours. Loaded as a file: the CSP forbids inline script.
"use strict";

// Forms that do something hard to undo ask first: <form data-confirm="...">.
document.addEventListener("submit", function (event) {
  var form = event.target;
  if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
    event.stopImmediatePropagation();
  }
}, true);

// <button data-copy="element-id" data-copied="Copied">: copy that element's text.
document.addEventListener("click", function (event) {
  var button = event.target instanceof Element ? event.target.closest("[data-copy]") : null;
  if (!button || !navigator.clipboard) return;
  var source = document.getElementById(button.dataset.copy);
  if (!source) return;
  navigator.clipboard.writeText(source.textContent.trim()).then(function () {
    if (button.dataset.copied) button.textContent = button.dataset.copied;
  });
});
