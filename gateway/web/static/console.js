// gateway console: the only script. It ticks checkboxes, and moves a
// training job's progress bar (asking the console for the job's state).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  function selectAll(id, boxes) {
    var all = document.getElementById(id);
    if (!all) { return; }
    all.addEventListener("change", function () {
      var found = document.querySelectorAll(boxes);
      for (var i = 0; i < found.length; i++) { found[i].checked = all.checked; }
    });
  }
  selectAll("select-all", "form#bulk input[name=id]");
  selectAll("select-all-labels", "input[name=id][form=bulk-review]");

  var jobs = document.querySelectorAll("details.job[data-status=running]");
  Array.prototype.forEach.call(jobs, function (job) {
    var bar = job.querySelector("progress"), label = job.querySelector(".progress .label");
    var timer = setInterval(function () {
      fetch("/feedback/jobs/" + job.dataset.job, {credentials: "same-origin"})
        .then(function (answer) { return answer.json(); })
        .then(function (state) {
          if (state.progress && bar) {
            bar.max = state.progress.total;
            bar.value = state.progress.done;
            label.textContent = state.progress.label + ": " + state.progress.done + " of " +
              state.progress.total;
          }
          if (state.status !== "running") { clearInterval(timer); window.location.reload(); }
        })
        .catch(function () { clearInterval(timer); });
    }, 2000);
  });
});
