// The run page: extends the driver log while the run goes, then reloads the page once it has ended.
// Served as a file (the Content-Security-Policy allows no inline script); the page passes the run id
// and the log offset in data attributes of <pre id="driver-log">. The fetches are same-origin and
// carry the page session cookie the page set.
(function () {
  var log = document.getElementById("driver-log");
  if (!log || log.dataset.follow !== "true") { return; }
  var runId = log.dataset.runId;
  var offset = parseInt(log.dataset.offset, 10) || 0;
  var finished = ["Completed", "Failed", "Canceled"];
  function poll() {
    fetch("/api/runs/" + encodeURIComponent(runId) + "/files/azureml-logs/70_driver_log.txt?offset=" + offset,
          {credentials: "same-origin"})
      .then(function (r) {
        if (!r.ok) { setTimeout(poll, 2000); return; }
        var next = r.headers.get("X-Next-Offset");
        var status = r.headers.get("X-Run-Status");
        return r.text().then(function (text) {
          if (text) { log.textContent += text; log.scrollTop = log.scrollHeight; }
          if (next) { offset = parseInt(next, 10); }
          if (status) { var s = document.getElementById("status"); s.textContent = status; s.className = "status " + status; }
          if (finished.indexOf(status) >= 0) { setTimeout(function () { location.reload(); }, 1500); }
          else { setTimeout(poll, 2000); }
        });
      })
      .catch(function () { setTimeout(poll, 5000); });
  }
  setTimeout(poll, 2000);
})();
