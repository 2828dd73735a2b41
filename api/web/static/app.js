// tre web interface: progressive enhancement only. Every page works without
// this script. It re-checks the query editor as the researcher types, by
// posting the same form (with its CSRF token) to the check endpoint and
// placing the server-rendered, server-escaped fragment in the page.
(function () {
  "use strict";
  var form = document.getElementById("editor");
  if (!form) { return; }
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
