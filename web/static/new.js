/* New search page: the runtime list follows the device, the achievable
   latency range follows dataset + device + space (measured on the spot by a
   profile-only job when the device's table lacks it), a target is suggested
   and placed on the range, the job's duration is estimated from the device's
   recent jobs, and one button submits (a search, or a comparison of devices). */
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const form = $("new-search"), dataset = $("dataset"), device = $("device"), runtime = $("runtime"), space = $("space");
  const target = $("target"), info = $("range-info"), warning = $("target-warning"), bar = $("range-bar");
  const measureBox = $("measure-box"), measureButton = $("measure"), measureStatus = $("measure-status");
  const suggestion = $("suggestion"), position = $("target-position"), estimate = $("estimate");
  let range = null;
  let targetTouched = false;  // the user typed a target: suggestions no longer overwrite it
  const newKey = () => (window.crypto && crypto.randomUUID) ? crypto.randomUUID() : String(Math.random()).slice(2) + Date.now();
  let idempotencyKey = newKey();

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
    // Drawn in the bar's own pixels (1 unit = 1 px), so that its text stays 12 px on a phone too.
    const W = Math.max(bar.clientWidth, 240);
    const x = (v) => 30 + (W - 60) * (Math.log(v) - Math.log(lo)) / (Math.log(hi) - Math.log(lo));
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} 40`);
    const add = (tag, attrs, text) => {
      const n = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
      if (text) n.textContent = text;
      svg.append(n);
    };
    add("line", { x1: 10, x2: W - 10, y1: 14, y2: 14, stroke: "#9aa3ad", "stroke-width": 2 });
    add("rect", { x: x(range.fastest_ms), y: 8, width: Math.max(2, x(range.slowest_ms) - x(range.fastest_ms)), height: 12, fill: "#2e7d32", rx: 3 });
    add("text", { x: x(range.fastest_ms), y: 36, "font-size": 12, "text-anchor": "end" }, AutoML.fmtMs(range.fastest_ms));
    add("text", { x: x(range.slowest_ms), y: 36, "font-size": 12, "text-anchor": "start" }, AutoML.fmtMs(range.slowest_ms));
    if (t > 0) {
      add("line", { x1: x(t), x2: x(t), y1: 2, y2: 26, stroke: "#b3261e", "stroke-width": 3 });
      add("text", { x: x(t) + 5, y: 8, "font-size": 12, fill: "#b3261e" }, "target");
    }
    bar.append(svg);
  }

  // The middle of the range, to 3 significant digits: every network faster than it is allowed.
  const suggested = () => Number(((range.fastest_ms + range.slowest_ms) / 2).toPrecision(3));

  function showPosition(t) {
    position.textContent = "";
    if (!range || !range.profiled || !(t > 0)) return;
    if (t >= range.fastest_ms && t <= range.slowest_ms) {
      const share = Math.round(100 * (t - range.fastest_ms) / Math.max(range.slowest_ms - range.fastest_ms, 1e-12));
      position.textContent = `Your target ${AutoML.fmtMs(t)} lies inside the range, ${share}% of the way from the fastest network to the slowest: the search looks for the most accurate network at or under it.`;
    }
  }

  function checkTarget() {
    const t = parseFloat(target.value);
    warning.hidden = true;
    warning.textContent = "";
    drawBar();
    showPosition(t);
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
        : `This device is ${answer.message}. Measure it now to choose a target from the range.`;
      info.dataset.fastestMs = answer.profiled ? answer.fastest_ms : "";
      info.dataset.slowestMs = answer.profiled ? answer.slowest_ms : "";
      measureBox.hidden = answer.profiled || measuring;
      suggestion.hidden = !answer.profiled;
      if (answer.profiled) {
        $("suggestion-text").textContent = `Suggested target: ${AutoML.fmtMs(suggested())}, the middle of the range. `;
        if (!targetTouched) target.value = String(suggested());
      }
    } catch (err) {
      if (ticket !== pendingRange) return;
      info.textContent = "The achievable range is not available: " + err.message;
      measureBox.hidden = true;
      suggestion.hidden = true;
    }
    checkTarget();
  }

  // "Measure it": a profile-only job (stop_after: profile) fills the device's table; its progress shows here.
  let measuring = false;
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  async function measureRange() {
    const data = { dataset: dataset.value, device: device.value, space: space.value, stop_after: "profile",
                   latency_target_ms: parseFloat(target.value) > 0 ? parseFloat(target.value) : 1, params: {} };
    if (runtime.value) data.runtime = runtime.value;
    const calibration = $("param-calibration_networks").value;
    if (calibration !== "") data.params.calibration_networks = Number(calibration);
    measuring = true;
    measureButton.disabled = true;
    measureStatus.replaceChildren("Starting the measurement…");
    try {
      let job = await AutoML.api("POST", "/api/v1/jobs", data, { "Idempotency-Key": newKey() });
      const bar = AutoML.el("progress", { max: "1", value: "0" });
      bar.setAttribute("aria-label", "Measurement progress");
      const words = document.createElement("span");
      const link = AutoML.el("a", { href: `/jobs/${job.id}`, text: "details" });
      measureStatus.replaceChildren(bar, " ", words, " (", link, ")");
      const started = Date.now();
      while (!job.done) {
        words.textContent = `Measuring on ${job.device_name}: ${Math.round(job.progress * 100)}%` + (job.stage ? ` (${job.stage})` : " (waiting for a worker)");
        bar.value = job.progress;
        await sleep(1000);
        job = await AutoML.api("GET", `/api/v1/jobs/${job.id}`);
      }
      if (job.state === "succeeded") {
        const measured = job.result.profile.achievable_ms;
        measureStatus.textContent = `Measured in ${Math.round((Date.now() - started) / 1000)} s: ${AutoML.fmtMs(measured[0])} to ${AutoML.fmtMs(measured[1])}.`;
      } else {
        measureStatus.replaceChildren(`The measurement ${job.state}: ${job.error || ""} `, AutoML.el("a", { href: `/jobs/${job.id}`, text: "see the job" }));
      }
    } catch (err) {
      measureStatus.textContent = "The measurement could not start: " + err.message;
    }
    measuring = false;
    measureButton.disabled = false;
    await loadRange();
  }

  // The job's expected duration, from the device's recent jobs (GET /devices/{name}/duration-estimate).
  let pendingEstimate = 0;
  async function loadEstimate() {
    if (!dataset.value || !device.value) { estimate.textContent = ""; return; }
    const ticket = ++pendingEstimate;
    // Only recent jobs of the same strategy and baselines setting are counted (their cost per epoch differs).
    const params = new URLSearchParams({ dataset: dataset.value, strategy: chosenStrategy(),
                                         baselines: String(Boolean(baselines && baselines.checked)) });
    form.querySelectorAll('input[name^="budget."]').forEach((input) => {
      if (input.value !== "") params.set(input.name.slice("budget.".length), input.value);
    });
    try {
      const answer = await AutoML.api("GET", `/api/v1/devices/${encodeURIComponent(device.value)}/duration-estimate?${params}`);
      if (ticket !== pendingEstimate) return;
      estimate.textContent = answer.seconds === null
        ? `Duration: ${answer.message} yet.`
        : `Expected duration: ${answer.message}.`;
    } catch (err) {
      if (ticket !== pendingEstimate) return;
      estimate.textContent = "No duration estimate: " + err.message;
    }
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

  function chosenStrategy() {
    const checked = form.querySelector('input[name="strategy"]:checked');
    return checked ? checked.value : "gradient";
  }
  const baselines = $("param-baselines");

  function body() {
    const data = { dataset: dataset.value, device: device.value, space: space.value,
                   latency_target_ms: parseFloat(target.value), budget: {}, params: {} };
    if (runtime.value) data.runtime = runtime.value;
    const pipeline = form.querySelector('input[name="pipeline"]:checked');
    if (pipeline) data.pipeline = pipeline.value;
    data.strategy = chosenStrategy();
    form.querySelectorAll('input[name^="budget."], input[name^="params."]').forEach((input) => {
      if (input.name.split(".").length !== 2) return;
      const [group, key] = input.name.split(".");
      if (input.type === "checkbox") { data[group][key] = input.checked; return; }
      if (input.value === "") return;
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
      idempotencyKey = newKey();
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

  // A comparison: the same dataset, space, target and budget searched for each chosen device.
  $("start-comparison").addEventListener("click", async () => {
    const devices = [...form.querySelectorAll('input[name="compare-device"]:checked')].map((c) => c.value);
    const error = $("compare-error");
    error.hidden = true;
    if (devices.length < 2) {
      error.hidden = false;
      error.textContent = "Choose two or more devices to compare.";
      return;
    }
    const data = body();
    const params = Object.fromEntries(Object.entries(data.params).filter(([, v]) => typeof v !== "object"));
    const button = $("start-comparison");
    button.disabled = true;
    try {
      const comparison = await AutoML.api("POST", "/api/v1/comparisons", {
        dataset: data.dataset, devices, space: data.space, strategy: data.strategy,
        latency_target_ms: data.latency_target_ms, budget: data.budget, params });
      window.location.href = `/comparisons/${comparison.id}`;
    } catch (err) {
      button.disabled = false;
      error.hidden = false;
      error.textContent = "The comparison was not started. " + err.message;
    }
  });

  device.addEventListener("change", () => { fillRuntimes(); loadRange(); loadEstimate(); });
  dataset.addEventListener("change", () => { loadRange(); loadEstimate(); });
  [runtime, space].forEach((n) => n.addEventListener("change", loadRange));
  form.querySelectorAll('input[name^="budget."]').forEach((n) => n.addEventListener("change", loadEstimate));
  form.querySelectorAll('input[name="strategy"]').forEach((n) => n.addEventListener("change", loadEstimate));
  if (baselines) baselines.addEventListener("change", loadEstimate);
  target.addEventListener("input", () => { targetTouched = true; checkTarget(); });
  measureButton.addEventListener("click", measureRange);
  $("use-suggested").addEventListener("click", () => { target.value = String(suggested()); checkTarget(); target.focus(); });
  window.addEventListener("resize", drawBar);
  fillRuntimes();
  loadRange();
  loadEstimate();
})();
