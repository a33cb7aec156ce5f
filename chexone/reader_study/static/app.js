// Reader study: report the time the page was visible and focused (the server also times from first display to
// signing), and keep a double click from sending a form twice. No data leaves the page except with the form.
(function () {
  "use strict";
  var activeMs = 0;
  var since = null;
  function isActive() { return document.visibilityState === "visible" && document.hasFocus(); }
  function tick() {
    var now = Date.now();
    if (since !== null) { activeMs += now - since; }
    since = isActive() ? now : null;
  }
  ["visibilitychange", "focus", "blur"].forEach(function (ev) {
    (ev === "visibilitychange" ? document : window).addEventListener(ev, tick);
  });
  document.addEventListener("DOMContentLoaded", function () {
    since = isActive() ? Date.now() : null;
    var form = document.querySelector("form.timed");
    if (!form) { return; }
    form.addEventListener("submit", function () {
      tick();
      var field = form.querySelector("input[name=active_ms]");
      if (field) { field.value = String(Math.round(activeMs)); }
      var button = form.querySelector("button[type=submit]");
      if (button) { setTimeout(function () { button.disabled = true; }, 0); }
    });
  });
})();
