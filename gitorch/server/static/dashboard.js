// The dashboard's only script of its own: copy buttons, the live indicator, and keeping a
// followed log scrolled to its end. Pages work without it (and without htmx) as plain HTML.
"use strict";
document.addEventListener("click", function (event) {
  var button = event.target.closest("button.copy");
  if (!button) return;
  var source = document.getElementById(button.dataset.copy);
  if (!source || !navigator.clipboard) return;
  navigator.clipboard.writeText(source.textContent.trim()).then(function () {
    button.textContent = "Copied";
  }, function () {
    button.textContent = "Select and copy";
  });
});
document.addEventListener("htmx:sseOpen", function (event) {
  var live = document.getElementById("live");
  if (live && event.target === document.body) live.classList.add("on");
});
document.addEventListener("htmx:sseError", function (event) {
  var live = document.getElementById("live");
  if (live && event.target === document.body) live.classList.remove("on");
});
document.addEventListener("htmx:afterSwap", function (event) {
  var log = document.getElementById("log");
  if (log && event.target === log) log.scrollTop = log.scrollHeight;
});
