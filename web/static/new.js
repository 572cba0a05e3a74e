/* New search page: the runtime list follows the device, the achievable
   latency range follows dataset + device + space, and one button submits. */
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const form = $("new-search"), dataset = $("dataset"), device = $("device"), runtime = $("runtime"), space = $("space");
  const target = $("target"), info = $("range-info"), warning = $("target-warning"), bar = $("range-bar");
  let range = null;
  let idempotencyKey = (window.crypto && crypto.randomUUID) ? crypto.randomUUID() : String(Math.random()).slice(2) + Date.now();

  function fillRuntimes() {
    const option = device.selectedOptions[0];
    const names = option && option.dataset.runtimes ? option.dataset.runtimes.split(",") : [];
    const previous = runtime.value;
    runtime.replaceChildren(...names.map((n) => AutoML.el("option", { value: n, text: n })));
    if (names.includes(previous)) runtime.value = previous;
    else if (names.includes("onnxruntime")) runtime.value = "onnxruntime";
  }

  function drawBar() {
    bar.replaceChildren();
    if (!range || !range.profiled) return;
    const t = parseFloat(target.value);
    const lo = Math.min(range.fastest_ms, t > 0 ? t : range.fastest_ms) / 1.6;
    const hi = Math.max(range.slowest_ms, t > 0 ? t : range.slowest_ms) * 1.6;
    const x = (v) => 10 + 580 * (Math.log(v) - Math.log(lo)) / (Math.log(hi) - Math.log(lo));
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 600 40");
    const add = (tag, attrs, text) => {
      const n = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
      if (text) n.textContent = text;
      svg.append(n);
    };
    add("line", { x1: 10, x2: 590, y1: 14, y2: 14, stroke: "#9aa3ad", "stroke-width": 2 });
    add("rect", { x: x(range.fastest_ms), y: 8, width: Math.max(2, x(range.slowest_ms) - x(range.fastest_ms)), height: 12, fill: "#2e7d32", rx: 3 });
    add("text", { x: x(range.fastest_ms), y: 36, "font-size": 11, "text-anchor": "middle" }, AutoML.fmtMs(range.fastest_ms));
    add("text", { x: x(range.slowest_ms), y: 36, "font-size": 11, "text-anchor": "middle" }, AutoML.fmtMs(range.slowest_ms));
    if (t > 0) {
      add("line", { x1: x(t), x2: x(t), y1: 2, y2: 26, stroke: "#b3261e", "stroke-width": 3 });
      add("text", { x: x(t) + 5, y: 8, "font-size": 11, fill: "#b3261e" }, "target");
    }
    bar.append(svg);
  }

  function checkTarget() {
    const t = parseFloat(target.value);
    warning.hidden = true;
    warning.textContent = "";
    drawBar();
    if (!(t > 0)) {
      warning.hidden = false;
      warning.textContent = "Enter a latency target above 0 milliseconds.";
      return;
    }
    if (!range || !range.profiled) return;
    if (t < range.fastest_ms) {
      warning.hidden = false;
      warning.textContent = `Out of range: even the fastest network takes ${AutoML.fmtMs(range.fastest_ms)} on this device, so the job would stop after measuring. Choose at least ${AutoML.fmtMs(range.fastest_ms)}, a faster device or a smaller search space.`;
    } else if (t > range.slowest_ms) {
      warning.hidden = false;
      warning.textContent = `Every network of this space is faster than ${AutoML.fmtMs(t)} here (the slowest takes ${AutoML.fmtMs(range.slowest_ms)}), so the search will look for accuracy alone. A lower target gives a faster model.`;
    }
  }

  let pendingRange = 0;
  async function loadRange() {
    range = null;
    checkTarget();
    if (!dataset.value || !device.value) return;
    const ticket = ++pendingRange;
    info.textContent = "Looking up this device's latency table…";
    const params = new URLSearchParams({ dataset: dataset.value, space: space.value });
    if (runtime.value) params.set("runtime", runtime.value);
    try {
      const answer = await AutoML.api("GET", `/api/v1/devices/${encodeURIComponent(device.value)}/achievable-range?${params}`);
      if (ticket !== pendingRange) return;
      range = answer;
      info.textContent = answer.profiled
        ? `Achievable on ${answer.device} (${answer.runtime}) at ${answer.input_shape[0]}×${answer.input_shape[1]} px: from ${AutoML.fmtMs(answer.fastest_ms)} (fastest network) to ${AutoML.fmtMs(answer.slowest_ms)} (slowest).`
        : `This device is ${answer.message}.`;
    } catch (err) {
      if (ticket !== pendingRange) return;
      info.textContent = "The achievable range is not available: " + err.message;
    }
    checkTarget();
  }

  function clearErrors() {
    form.querySelectorAll("[data-error-for]").forEach((p) => { p.hidden = true; p.textContent = ""; });
    form.querySelectorAll("[aria-invalid]").forEach((n) => n.removeAttribute("aria-invalid"));
    $("form-error").hidden = true;
  }

  function showProblem(err) {
    const problem = err.problem || {};
    const errors = problem.errors && problem.errors.length ? problem.errors : [{ field: problem.field, detail: null }];
    let first = null;
    for (const e of errors) {
      const field = (e.field || "").replace(/^body\./, "");
      const slot = form.querySelector(`[data-error-for="${CSS.escape(field)}"]`);
      if (!slot) continue;
      slot.hidden = false;
      slot.textContent = e.detail ? AutoML.problemMessage({ detail: e.detail }) : err.message;
      const control = form.querySelector(`[name="${CSS.escape(field)}"]`) || form.querySelector(`[name="${CSS.escape(field === "latency_target_ms" ? "latency_target_ms" : field)}"]`);
      if (control) { control.setAttribute("aria-invalid", "true"); first = first || control; }
    }
    const summary = $("form-error");
    summary.hidden = false;
    summary.textContent = "The search was not started. " + err.message;
    (first || summary).focus();
  }

  function body() {
    const data = { dataset: dataset.value, device: device.value, space: space.value,
                   latency_target_ms: parseFloat(target.value), budget: {}, params: {} };
    if (runtime.value) data.runtime = runtime.value;
    const pipeline = form.querySelector('input[name="pipeline"]:checked');
    if (pipeline) data.pipeline = pipeline.value;
    form.querySelectorAll('input[name^="budget."], input[name^="params."]').forEach((input) => {
      if (input.value === "" || input.name.split(".").length !== 2) return;
      const [group, key] = input.name.split(".");
      data[group][key] = Number(input.value);
    });
    // The chosen pipeline's settings, as params.<key>.<setting> (rendered from GET /api/v1/pipelines' schemas).
    const settings = pipeline && form.querySelector(`.pipeline-settings[data-pipeline="${CSS.escape(pipeline.value)}"]`);
    if (settings) {
      settings.querySelectorAll("[data-kind]").forEach((control) => {
        const [, group, key] = control.name.split(".");
        const kind = control.dataset.kind;
        if (kind !== "checkbox" && control.value === "") return;
        const value = kind === "checkbox" ? control.checked
          : (kind === "integer" || kind === "number") ? Number(control.value) : control.value;
        (data.params[group] = data.params[group] || {})[key] = value;
      });
    }
    return data;
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    clearErrors();
    const button = $("start");
    button.disabled = true;
    button.textContent = "Starting…";
    try {
      const job = await AutoML.api("POST", "/api/v1/jobs", body(), { "Idempotency-Key": idempotencyKey });
      window.location.href = `/jobs/${job.id}`;
    } catch (err) {
      idempotencyKey = (window.crypto && crypto.randomUUID) ? crypto.randomUUID() : String(Math.random()).slice(2) + Date.now();
      button.disabled = false;
      button.textContent = "Find my model";
      showProblem(err);
    }
  });

  function showPipelineSettings() {
    const chosen = form.querySelector('input[name="pipeline"]:checked');
    form.querySelectorAll(".pipeline-settings").forEach((box) => {
      box.hidden = !chosen || box.dataset.pipeline !== chosen.value;
    });
  }
  form.querySelectorAll('input[name="pipeline"]').forEach((r) => r.addEventListener("change", showPipelineSettings));
  showPipelineSettings();

  device.addEventListener("change", () => { fillRuntimes(); loadRange(); });
  [dataset, runtime, space].forEach((n) => n.addEventListener("change", loadRange));
  target.addEventListener("input", checkTarget);
  fillRuntimes();
  loadRange();
})();
