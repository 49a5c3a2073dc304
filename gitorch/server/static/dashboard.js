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
// The live stream ends after a while with a "renew" event naming the store's change marks it
// announced last: a new stream is opened at once from those marks (so a change between the two
// is announced by the new one) and the old one closed before it could report the end as an
// error. htmx's SSE extension creates its streams through htmx.createEventSource, so this
// wrapper stands in for an EventSource. A page's first stream starts from the marks the page
// was rendered at (its sse-connect URL), so nothing needs fetching when it opens.
function RenewingSource(url) {
  var self = this;
  self.url = url;
  self.listeners = [];
  self.onopen = null;
  self.onerror = null;
  self.open = function () {
    var real = new EventSource(self.url);
    self.real = real;
    self.readyState = real.readyState;
    real.onopen = function (event) { self.readyState = real.readyState; if (self.onopen) self.onopen(event); };
    real.onerror = function (event) { self.readyState = real.readyState; if (self.onerror) self.onerror(event); };
    real.addEventListener("renew", function (event) {
      real.close();
      if (/^[a-z]+:[0-9a-f]+(,[a-z]+:[0-9a-f]+)*$/.test(event.data || "")) {
        var next = new URL(self.url, window.location.href);
        next.searchParams.set("since", event.data);
        self.url = next.pathname + next.search;
      }
      self.open();
    });
    self.listeners.forEach(function (l) { real.addEventListener(l[0], l[1]); });
  };
  self.addEventListener = function (type, fn) { self.listeners.push([type, fn]); self.real.addEventListener(type, fn); };
  self.removeEventListener = function (type, fn) {
    self.listeners = self.listeners.filter(function (l) { return l[0] !== type || l[1] !== fn; });
    self.real.removeEventListener(type, fn);
  };
  self.close = function () { self.real.close(); self.readyState = EventSource.CLOSED; };
  self.open();
}
RenewingSource.CLOSED = EventSource.CLOSED;
if (window.htmx) {
  htmx.createEventSource = function (url) { return new RenewingSource(url); };
}
// A stream that reconnects after a lost connection starts from the marks in its URL (the page's,
// or the last renewal's): what changed meanwhile is announced by the stream itself.
document.addEventListener("htmx:sseOpen", function (event) {
  if (event.target !== document.body) return;
  var live = document.getElementById("live");
  if (live) live.classList.add("on");
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
