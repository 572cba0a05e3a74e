/* A comparison's page: its searches, the live specialisation matrix and the
   accuracy-vs-latency chart per device, polled from GET /api/v1/comparisons/{id}
   every 2 s until it is done. */
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const el = AutoML.el;
  const name = (t) => `${t.device} (${t.runtime})`;

  function render(c) {
    $("comparison-jobs").replaceChildren(...c.jobs.map((j) => el("tr", { "data-job": j.id },
      el("td", {}, el("a", { href: `/jobs/${j.id}`, text: j.device })), el("td", { text: j.runtime }),
      el("td", {}, el("span", { class: `badge badge-${j.state}`, text: j.state })),
      el("td", { text: j.error ? `${j.stage || ""}: ${j.error}` : (j.stage || "–") }))));
    const head = el("tr", {}, el("th", { scope: "col", text: "Specialised for ↓ / measured on →" }),
      ...c.targets.map((t) => el("th", { scope: "col", text: name(t) })), el("th", { scope: "col", text: "Test accuracy" }));
    const rows = c.matrix.map((row, i) => el("tr", {}, el("th", { scope: "row", text: name(c.targets[i]) }),
      ...row.map((v, j) => el("td", { class: i === j ? "diag" : null, text: v === null ? "–" : AutoML.fmtMs(v) })),
      el("td", { text: AutoML.fmtPct(c.accuracy[i]) })));
    $("comparison-matrix").replaceChildren(el("thead", {}, head), el("tbody", {}, ...rows));
    const points = [];
    c.matrix.forEach((row, i) => row.forEach((v, j) => {
      const job = c.jobs.find((x) => x.device === c.targets[i].device && x.runtime === c.targets[i].runtime);
      if (v !== null && c.accuracy[i] !== null && job) {
        points.push({ job: job.id, device: `on ${name(c.targets[j])}`, accuracy: c.accuracy[i], measured_ms: v });
      }
    }));
    Charts.scatter($("comparison-chart"), points);
    $("comparison-state").textContent = c.done ? "Done." : "Still running: this page updates itself.";
  }

  let comparison = JSON.parse($("comparison-data").textContent);
  render(comparison);
  async function poll() {
    while (!comparison.done) {
      await new Promise((resolve) => setTimeout(resolve, 2000));
      try {
        comparison = await AutoML.api("GET", `/api/v1/comparisons/${comparison.id}`);
        render(comparison);
      } catch (err) {
        $("comparison-state").textContent = "Could not refresh: " + err.message;
      }
    }
  }
  poll();
})();
