/* The device farm: relative heartbeat times, and retiring a device after a
   confirmation that says what happens to its jobs and latency tables. */
"use strict";
(() => {
  AutoML.relativeTimes();

  const dialog = document.getElementById("confirm-retire");
  let pending = null;
  document.addEventListener("click", (e) => {
    const button = e.target.closest("button[data-retire]");
    if (!button) return;
    pending = button;
    const jobs = Number(button.dataset.jobs || 0);
    dialog.querySelector("[data-name]").textContent = button.dataset.retire;
    dialog.querySelector("[data-jobs]").textContent = String(jobs);
    dialog.querySelector("[data-jobs-warning]").hidden = jobs === 0;
    dialog.returnValue = "";
    dialog.showModal();
  });
  dialog.addEventListener("close", async () => {
    const button = pending;
    pending = null;
    if (!button || dialog.returnValue !== "retire") { if (button) button.focus(); return; }
    const row = button.closest("tr");
    const error = row.querySelector("[data-error]");
    // The user was told the jobs would be cancelled, so force is sent when there were some;
    // jobs queued since the page loaded still make the server refuse (409), and that is shown.
    const force = Number(button.dataset.jobs || 0) > 0;
    try {
      await AutoML.api("DELETE", `/api/v1/devices/${encodeURIComponent(button.dataset.retire)}?force=${force}`);
      const heading = document.querySelector("h1");
      row.remove();
      heading.setAttribute("tabindex", "-1");
      heading.focus();
    } catch (err) {
      error.hidden = false;
      error.textContent = "Not retired. " + err.message;
    }
  });
})();
