// tre web interface: progressive enhancement only. Every page works without
// this script. It re-checks the query editor as the researcher types, by
// posting the same form (with its CSRF token) to the check endpoint and
// placing the server-rendered, server-escaped fragment in the page, and it
// inserts what the researcher clicks in the catalog into the SQL.
(function () {
  "use strict";
  var form = document.getElementById("editor");
  if (!form) { return; }
  var sql = document.getElementById("sql");
  // The catalog beside the editor: a click inserts a table, column, value
  // or code at the cursor, then re-checks the query.
  document.addEventListener("click", function (ev) {
    var btn = ev.target.closest("button.insert");
    if (!btn || !sql) { return; }
    var text = btn.getAttribute("data-insert");
    var start = sql.selectionStart, end = sql.selectionEnd, v = sql.value;
    var before = v.slice(0, start), after = v.slice(end);
    if (before && !/[\s(,.]$/.test(before)) { text = " " + text; }
    if (after && !/^[\s),]/.test(after)) { text = text + " "; }
    sql.value = before + text + after;
    var at = before.length + text.length;
    sql.focus();
    sql.setSelectionRange(at, at);
    sql.dispatchEvent(new Event("input", { bubbles: true }));
  });
  var target = document.getElementById("check-result");
  var url = form.getAttribute("data-check-url");
  var timer = null;
  var seq = 0;
  function check() {
    var mine = ++seq;
    var body = new URLSearchParams(new FormData(form));
    fetch(url, { method: "POST", body: body, credentials: "same-origin" })
      .then(function (resp) { return resp.text(); })
      .then(function (html) { if (mine === seq) { target.innerHTML = html; } })
      .catch(function () { /* the Check button still works */ });
  }
  function schedule() {
    if (timer) { clearTimeout(timer); }
    timer = setTimeout(check, 600);
  }
  form.addEventListener("input", schedule);
  form.addEventListener("change", schedule);
})();
