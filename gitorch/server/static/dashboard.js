// The dashboard's only script of its own: copy buttons, the live indicator, and keeping a
// followed log scrolled to its end. Pages work without it (and without htmx) as plain HTML.
"use strict";
document.addEventListener("click", function (event) {
  var button = event.target.closest("button.copy");
  if (!button) return;
  var source = document.getElementById(button.dataset.copy);
  if (!source) return;
  function select() {  // no clipboard (a plain-HTTP page off loopback): leave it selected to copy
    var range = document.createRange();
    range.selectNodeContents(source);
    window.getSelection().removeAllRanges();
    window.getSelection().addRange(range);
    button.textContent = "Selected: copy it";
  }
  if (!navigator.clipboard) return select();
  navigator.clipboard.writeText(source.textContent.trim()).then(function () {
    button.textContent = "Copied";
  }, select);
});
// A live update replaces the page's live part: workloads someone folded stay folded.
var folded = [];
document.addEventListener("htmx:beforeSwap", function (event) {
  if (event.target.id !== "live-part") return;
  folded = Array.from(event.target.querySelectorAll("li.workload > details:not([open])")).map(function (d) {
    return d.parentElement.id;
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
  if (event.target.id === "live-part") {
    folded.forEach(function (id) {
      var item = document.getElementById(id);
      if (item && item.firstElementChild) item.firstElementChild.removeAttribute("open");
    });
  }
});
