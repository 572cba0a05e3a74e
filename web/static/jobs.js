/* Jobs page: rows of unfinished jobs follow their job through the API. */
"use strict";
(() => {
  const words = { queued: "waiting to start", running: "running", succeeded: "done", failed: "failed", cancelled: "cancelled" };
  async function refresh(row) {
    try {
      const job = await AutoML.api("GET", `/api/v1/jobs/${row.dataset.job}`);
      const state = row.querySelector('[data-field="state"]');
      state.textContent = words[job.state];
      state.className = `badge badge-${job.state}`;
      row.querySelector('[data-field="stage"]').textContent = job.done ? "" : (job.stage || "");
      const pct = Math.round(job.progress * 100);
      row.querySelector('[data-field="progress"]').value = pct;
      row.querySelector('[data-field="percent"]').textContent = pct + "%";
      const report = job.result.report || {};
      const acc = (report.accuracy || {}).test ?? (job.result.train || {}).test_accuracy;
      const ms = (report.latency || {}).measured_ms ?? (job.result.verify || {}).measured_ms;
      if (acc !== undefined) row.querySelector('[data-field="accuracy"]').textContent = AutoML.fmtPct(acc);
      if (ms !== undefined) row.querySelector('[data-field="measured"]').textContent = AutoML.fmtMs(ms);
      if (job.done) delete row.dataset.live;
    } catch (err) { /* a missed poll is retried on the next tick */ }
  }
  setInterval(() => document.querySelectorAll("tr[data-live]").forEach(refresh), 3000);
})();
