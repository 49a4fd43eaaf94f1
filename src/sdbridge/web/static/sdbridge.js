// sdbridge UI, no dependencies.
//
// - Live pages: every data-refresh seconds the page fetches its own URL again and swaps
//   each element marked data-live (by id) for its fresh copy; the "live" box pauses it.
//   A refresh waits while the user types in the filter, selects text or the tab is hidden.
// - Relative times ("3s ago", "in 25s") keep moving between refreshes (data-ago and
//   data-until hold Unix times; data-now is the server's clock, so a skewed client clock
//   does not matter).
// - The filter box filters the visible rows at once and, after a pause, asks the server
//   for the filtered pages (the server filters everything, not just this page).
(function () {
  "use strict";
  var body = document.body;
  var skew = 0; // server clock minus client clock, in seconds

  function setSkew(serverNow) {
    var now = parseFloat(serverNow);
    if (!isNaN(now)) skew = now - Date.now() / 1000;
  }
  setSkew(body.getAttribute("data-now"));

  // --- relative times (the same steps as ui.py's _relative) ---------------------------
  function relative(seconds) {
    if (seconds < 120) return seconds + "s";
    if (seconds < 7200) return Math.floor(seconds / 60) + "m";
    if (seconds < 172800) return Math.floor(seconds / 3600) + "h";
    return Math.floor(seconds / 86400) + "d";
  }

  function tick() {
    var now = Date.now() / 1000 + skew;
    document.querySelectorAll("time[data-ago]").forEach(function (el) {
      var s = Math.max(0, Math.floor(now - parseFloat(el.getAttribute("data-ago"))));
      var text = relative(s) + " ago";
      if (el.textContent !== text) el.textContent = text;
    });
    document.querySelectorAll("time[data-until]").forEach(function (el) {
      var s = Math.floor(parseFloat(el.getAttribute("data-until")) - now);
      var text = s > 0 ? "in " + relative(s) : "expired";
      if (el.textContent !== text) el.textContent = text;
      el.classList.toggle("expired", s <= 0);
    });
  }
  setInterval(tick, 1000);

  // --- the filter box ------------------------------------------------------------------
  var form = document.getElementById("filter");
  var input = document.getElementById("filter-input");
  var timer = null;

  function filterVisible() {
    if (!input) return;
    var terms = input.value.toLowerCase().split(/\s+/).filter(Boolean);
    document.querySelectorAll("table.filterable tbody tr").forEach(function (row) {
      var text = row.textContent.toLowerCase();
      var ok = terms.every(function (t) { return text.indexOf(t) !== -1; });
      row.classList.toggle("hidden", !ok);
    });
  }

  function typing() {
    return input && input.value !== input.defaultValue;
  }

  if (form && input) {
    input.addEventListener("input", function () {
      filterVisible();
      clearTimeout(timer);
      timer = setTimeout(function () { form.submit(); }, 600);
    });
    form.addEventListener("submit", function () { clearTimeout(timer); });
    form.querySelectorAll("select").forEach(function (select) {
      select.addEventListener("change", function () { form.submit(); });
    });
    // Keep typing where the user left off after the server answered.
    if (input.value) {
      input.focus();
      input.setSelectionRange(input.value.length, input.value.length);
    }
    // "/" focuses the filter box, as on many code hosts.
    document.addEventListener("keydown", function (e) {
      if (e.key === "/" && document.activeElement !== input) {
        e.preventDefault();
        input.focus();
      }
    });
  }

  // --- live refresh --------------------------------------------------------------------
  var interval = parseFloat(body.getAttribute("data-refresh")) * 1000;
  var live = document.getElementById("live");
  var label = document.getElementById("live-label");
  var busy = false;

  function selecting() {
    var selection = window.getSelection();
    return selection && !selection.isCollapsed;
  }

  function swap(fresh) {
    setSkew(fresh.body.getAttribute("data-now"));
    document.querySelectorAll("[data-live][id]").forEach(function (el) {
      var next = fresh.getElementById(el.id);
      if (!next) return;
      // Keep open <details> (a mechanism's config) open across the swap.
      var open = [];
      el.querySelectorAll("details").forEach(function (d, i) { if (d.open) open.push(i); });
      var copy = document.importNode(next, true);
      var details = copy.querySelectorAll("details");
      open.forEach(function (i) { if (details[i]) details[i].open = true; });
      el.replaceWith(copy);
    });
    filterVisible();
    tick();
    body.setAttribute("data-refreshed", String(Date.now()));
  }

  function refresh() {
    if (busy || !live || !live.checked || document.hidden || typing() || selecting()) return;
    busy = true;
    fetch(window.location.href, { cache: "no-store", credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok && response.status !== 404) throw new Error(response.status);
        return response.text();
      })
      .then(function (text) {
        swap(new DOMParser().parseFromString(text, "text/html"));
        if (label) label.classList.remove("offline");
      })
      .catch(function () {
        if (label) label.classList.add("offline");
      })
      .then(function () { busy = false; });
  }

  if (interval > 0 && live) {
    try {
      live.checked = window.localStorage.getItem("sdbridge.live") !== "off";
    } catch (e) { /* storage may be disabled */ }
    live.addEventListener("change", function () {
      try {
        window.localStorage.setItem("sdbridge.live", live.checked ? "on" : "off");
      } catch (e) { /* ignore */ }
      if (live.checked) refresh();
    });
    setInterval(refresh, interval);
  }
})();
