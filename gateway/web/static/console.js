// gateway console: the only script, and it only ticks checkboxes.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var all = document.getElementById("select-all");
  if (!all) { return; }
  all.addEventListener("change", function () {
    var boxes = document.querySelectorAll("form#bulk input[name=id]");
    for (var i = 0; i < boxes.length; i++) { boxes[i].checked = all.checked; }
  });
});
