// sdbridge UI: the filter box filters the visible rows at once and, after a pause,
// asks the server for the filtered pages (the server filters all targets, not just
// this page). No dependencies.
(function () {
  "use strict";
  var form = document.getElementById("filter");
  var input = document.getElementById("filter-input");
  if (!form || !input) return;
  var rows = Array.prototype.slice.call(document.querySelectorAll("#targets tbody tr"));
  var texts = rows.map(function (row) { return row.textContent.toLowerCase(); });
  var timer = null;

  function filterVisible() {
    var terms = input.value.toLowerCase().split(/\s+/).filter(Boolean);
    rows.forEach(function (row, i) {
      var ok = terms.every(function (t) { return texts[i].indexOf(t) !== -1; });
      row.classList.toggle("hidden", !ok);
    });
  }

  input.addEventListener("input", function () {
    filterVisible();
    clearTimeout(timer);
    timer = setTimeout(function () { form.submit(); }, 600);
  });
  form.addEventListener("submit", function () { clearTimeout(timer); });
  form.querySelector("select").addEventListener("change", function () { form.submit(); });

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
})();
