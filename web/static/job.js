/* Job page: the stage timeline, charts, architecture and event log follow the
   job live through the API's event stream (Server-Sent Events), falling back
   to polling the paged events when a stream cannot be held open. */
"use strict";
(() => {
  const data = JSON.parse(document.getElementById("job-data").textContent);
  const jobId = data.job.id;
  const base = `/api/v1/jobs/${jobId}`;
  const { el, fmtMs, fmtPct, fmtDuration } = AutoML;
  const STATE_WORDS = { queued: "waiting to start", running: "running", succeeded: "done", failed: "failed", cancelled: "cancelled" };
  const STAGE_WORDS = {
    validate: "Checks every image and fixes the training / test split.",
    adopt: "Takes the trained network of the job being fine-tuned.",
    schedule: "Finds which operators to run side by side (IOS), timing candidate stages on the device.",
    profile: "Measures how fast each building block runs on the device.",
    search: "Tries building blocks, keeping those that are accurate and fast on this device.",
    tune: "Adjusts how strongly speed counts against accuracy.",
    train: "Trains the chosen network from scratch.",
    audit: "Tries to rebuild training images from what the pipeline sends, with and without defenses.",
    export: "Writes the model as ONNX and TFLite files.",
    verify: "Times the exported file on the device itself.",
    baselines: "Trains and times random search's best network and a uniform network at the same latency, to compare.",
    "device-finetune": "Runs the sparse update's fine-tuning steps on the device (ONNX Runtime training) and compares them with PyTorch's.",
    report: "Sums up accuracy, speed, size and cost.",
  };

  let job = data.job;
  let lastId = 0;
  const stages = data.stages.map((s) => ({ ...s, status: "waiting", progress: 0, eta: null, detail: "" }));
  const byName = Object.fromEntries(stages.map((s) => [s.name, s]));
  const searchMetrics = [], trainMetrics = [];
  let achievable = null;

  // -- timeline ---------------------------------------------------------------
  const timeline = document.getElementById("timeline");
  stages.forEach((s) => {
    s.node = el("li", { "data-stage": s.name, class: "waiting" },
      el("div", { class: "name", text: s.name }),
      el("div", { class: "what", text: STAGE_WORDS[s.name] || s.title }),
      el("progress", { max: "100", value: "0", "aria-label": `Progress of stage ${s.name}` }),
      el("div", { class: "status-text", text: "waiting" }),
      el("div", { class: "detail" }));
    timeline.append(s.node);
  });
  function renderStage(s) {
    s.node.className = s.status;
    s.node.querySelector("progress").value = Math.round((s.status === "done" ? 1 : s.progress) * 100);
    let text = { waiting: "waiting", running: `running · ${Math.round(s.progress * 100)}%`, done: "done", failed: "failed", cancelled: "cancelled", skipped: "not run" }[s.status];
    if (s.status === "running" && s.eta) text += ` · about ${fmtDuration(s.eta)} left`;
    s.node.querySelector(".status-text").textContent = text;
    s.node.querySelector(".detail").textContent = s.status === "done" ? "" : s.detail;
  }
  function startStage(name) {
    for (const s of stages) {
      if (s.name === name) break;
      if (s.status === "running" || s.status === "waiting") { s.status = "done"; renderStage(s); }
    }
    const s = byName[name];
    if (s) { s.status = "running"; renderStage(s); }
  }

  // -- event log ------------------------------------------------------------------
  const log = document.getElementById("log");
  function logEvent(e) {
    const time = new Date(e.created_at.endsWith("Z") || /[+-]\d\d:\d\d$/.test(e.created_at) ? e.created_at : e.created_at + "Z");
    const row = el("tr", { class: `kind-${e.kind}${e.message.startsWith("job failed") ? " failed" : ""}` },
      el("td", { text: time.toLocaleTimeString() }), el("td", { text: e.stage || "" }), el("td", { text: e.message }));
    const wrap = log.closest(".log-wrap");
    const atBottom = wrap.scrollHeight - wrap.scrollTop - wrap.clientHeight < 30;
    log.append(row);
    if (atBottom) wrap.scrollTop = wrap.scrollHeight;
  }

  // -- events -------------------------------------------------------------------------
  function handle(e) {
    if (e.id <= lastId) return;
    lastId = e.id;
    logEvent(e);
    const d = e.data || {};
    if (e.kind === "state") {
      const started = /^stage (\S+) started$/.exec(e.message);
      if (started) startStage(started[1]);
      else if (e.message.startsWith("job succeeded")) { stages.forEach((s) => { s.status = "done"; renderStage(s); }); }
      else if (e.message.startsWith("job failed") || e.message === "job cancelled") {
        const status = e.message === "job cancelled" ? "cancelled" : "failed";
        const s = byName[e.stage];
        if (s) { s.status = status; s.detail = d.error || ""; renderStage(s); }
        stages.filter((x) => x.status === "waiting").forEach((x) => { x.status = "skipped"; renderStage(x); });
      }
      scheduleRefresh();
    } else if (e.kind === "progress" && byName[e.stage]) {
      const s = byName[e.stage];
      if (s.status === "waiting") startStage(e.stage);
      s.progress = d.stage_progress ?? s.progress;
      s.eta = d.eta_s ?? null;
      s.detail = e.message;
      renderStage(s);
    } else if (e.kind === "metric") {
      if (e.stage === "search" && d.block_probs) searchMetrics.push(d);
      else if (e.stage === "train" && d.train_accuracy !== undefined) trainMetrics.push(d);
      if (e.stage === "train") pipelineMetrics.push(d);
      else if (e.stage === "profile" && d.achievable_ms) achievable = d.achievable_ms;
      scheduleCharts();
    }
  }

  // -- charts -----------------------------------------------------------------------------
  let chartTimer = null;
  function scheduleCharts() { if (!chartTimer) chartTimer = setTimeout(() => { chartTimer = null; drawCharts(); }, 300); }
  function currentBlocks() {
    const r = job.result || {};
    const chosen = (r.tune && r.tune.arch) || (r.search && r.search.arch) || (r.adopt && r.adopt.arch);
    if (chosen) return { blocks: chosen.blocks, final: true };
    const last = searchMetrics[searchMetrics.length - 1];
    return last && last.derived_blocks ? { blocks: last.derived_blocks, final: false } : null;
  }
  // -- the training pipeline's own figures (per round, per epoch, memory, scheme) -----------
  const pipelineMetrics = [];
  const kB = (bytes) => bytes / 1024;
  function pipelineCharts(titleA, seriesA, optsA, titleB, seriesB, optsB) {
    document.getElementById("pipeline-a-title").textContent = titleA;
    document.getElementById("pipeline-b-title").textContent = titleB;
    const a = document.getElementById("chart-pipeline-a"), b = document.getElementById("chart-pipeline-b");
    Charts.line(a, seriesA, optsA);
    a.setAttribute("aria-label", `${titleA}: ${seriesA.map((s) => s.name).join(", ")}`);
    if (typeof seriesB === "function") seriesB(b); else Charts.line(b, seriesB, optsB);
    b.setAttribute("aria-label", titleB);
  }
  const PIPELINE_VIEWS = {
    fedgkt(report) {
      const rounds = pipelineMetrics.filter((m) => m.phase === "fedgkt");
      const fedavg = pipelineMetrics.filter((m) => m.phase === "fedavg");
      const flat = (value) => rounds.map((m) => [m.round, value]);
      const acc = [
        { name: "edge models (mean of clients)", color: Charts.PALETTE[2], points: rounds.filter((m) => m.edge_accuracy != null).map((m) => [m.round, m.edge_accuracy]) },
        { name: "server model on edge features", color: Charts.PALETTE[3], points: rounds.filter((m) => m.server_accuracy != null).map((m) => [m.round, m.server_accuracy]) },
        ...fedavg.map((m, i) => ({ name: `FedAvg baseline: ${m.model === "server_size" ? "server-size model on the edge" : "searched model"}`,
          color: Charts.PALETTE[5 + i], dashed: true, points: flat(m.accuracy) })),
      ];
      const bytes = [
        { name: "sent up (all clients)", color: Charts.PALETTE[0], points: rounds.map((m) => [m.round, kB(m.bytes_up)]) },
        { name: "sent down (all clients)", color: Charts.PALETTE[1], points: rounds.map((m) => [m.round, kB(m.bytes_down)]) },
      ];
      pipelineCharts("Accuracy per round", acc, { xLabel: "round", yLabel: "accuracy", yMin: 0, yMax: 1, yFormat: (v) => Math.round(v * 100) + "%" },
        "Bytes exchanged per round", bytes, { xLabel: "round", yLabel: "kB" });
      if (report) return `${report.clients} clients (${report.partition}); the edge model costs ${niceRatio(report.macs_ratio)} fewer MACs and ${niceRatio(report.params_ratio)} fewer parameters than the server-size model.`;
      return `${rounds.length} round(s) so far.`;
    },
    "delayed-sgd"(report) {
      const epochs = pipelineMetrics.filter((m) => m.bytes_sent_per_step !== undefined);
      pipelineCharts("Bytes each worker sends per step", [{ name: "bytes per step", color: Charts.PALETTE[0], points: epochs.map((m) => [m.epoch, kB(m.bytes_sent_per_step)]) }],
        { xLabel: "epoch", yLabel: "kB" },
        "Share of time waiting on communication", [{ name: "waiting", color: Charts.PALETTE[1], points: epochs.map((m) => [m.epoch, m.comm_wait_share]) }],
        { xLabel: "epoch", yLabel: "share", yMin: 0, yMax: 1, yFormat: (v) => Math.round(v * 100) + "%" });
      if (report) return `${report.workers} workers, delay ${report.delay}, period ${report.period}, compression ${report.compression ?? "none"}.`;
      return `${epochs.length} epoch(s) so far.`;
    },
    "sparse-update"(report) {
      const epochs = pipelineMetrics.filter((m) => m.epoch !== undefined && m.train_loss !== undefined);
      const memory = report && report.memory ? Object.entries(report.memory) : [];
      pipelineCharts("Fine-tuning loss", [{ name: "training loss", color: Charts.PALETTE[0], points: epochs.map((m) => [m.epoch, m.train_loss]) }],
        { xLabel: "epoch", yLabel: "loss" },
        "Training memory of one step", (node) => {
          if (!memory.length) { node.replaceChildren(el("p", { class: "muted", text: "Measured when fine-tuning ends." })); return; }
          Charts.bars(node, memory.map(([name, m], i) => ({ label: name.replaceAll("_", " "), value: kB(m.measured_bytes), color: Charts.PALETTE[i % Charts.PALETTE.length] })), { unit: " kB" });
        });
      const detail = document.getElementById("pipeline-detail");
      if (report && report.scheme && report.scheme.layers) {
        const rows = report.scheme.layers.filter((r) => r.update !== "frozen");
        detail.replaceChildren(el("h3", { text: "Updated layers (all others frozen)" }), el("table", {},
          el("thead", {}, el("tr", {}, el("th", { text: "layer" }), el("th", { text: "update" }), el("th", { text: "channels updated" }))),
          el("tbody", {}, ...rows.map((r) => el("tr", {}, el("td", { text: r.layer }), el("td", { text: r.update }),
            el("td", { text: r.update === "weight" ? `${r.channels_updated} of ${r.channels}` : "bias only" }))))));
      }
      if (report) return `Scheme ${report.scheme.kind}: ${report.scheme.layers.filter((r) => r.update !== "frozen").length} of ${report.scheme.layers.length} layers updated, plus the classifier.`;
      return "Choosing what to update under the memory budget…";
    },
  };
  const niceRatio = (v) => (v == null ? "?" : `${Math.round(v * 10) / 10}x`);
  function drawPipeline() {
    const view = PIPELINE_VIEWS[job.pipeline];
    if (!view) return;
    const train = (job.result || {}).train;
    const report = train ? train[job.pipeline] : null;
    document.getElementById("pipeline-card").hidden = false;
    document.getElementById("pipeline-title").textContent = `Training pipeline: ${job.pipeline}`;
    document.getElementById("pipeline-summary").textContent = view(report);
  }

  function drawCharts() {
    drawPipeline();
    const nSearch = searchMetrics.length;
    const accuracy = [
      { name: "search: training images", color: Charts.PALETTE[0], points: searchMetrics.filter((m) => m.train_accuracy != null).map((m, i) => [i + 1, m.train_accuracy]), dashed: true },
      { name: "search: held-out images", color: Charts.PALETTE[1], points: searchMetrics.filter((m) => m.holdout_accuracy != null).map((m, i) => [i + 1, m.holdout_accuracy]), dashed: true },
      { name: "training: training images", color: Charts.PALETTE[2], points: trainMetrics.map((m, i) => [nSearch + i + 1, m.train_accuracy]) },
      { name: "training: held-out images", color: Charts.PALETTE[3], points: trainMetrics.filter((m) => m.holdout_accuracy != null).map((m, i) => [nSearch + i + 1, m.holdout_accuracy]) },
    ];
    const accNode = document.getElementById("chart-accuracy");
    Charts.line(accNode, accuracy, { xLabel: "epoch (search, then training)", yLabel: "accuracy", yMin: 0, yMax: 1, yFormat: (v) => Math.round(v * 100) + "%" });
    const lastAcc = trainMetrics.length ? trainMetrics[trainMetrics.length - 1].holdout_accuracy : (nSearch ? searchMetrics[nSearch - 1].holdout_accuracy : null);
    accNode.setAttribute("aria-label", `Accuracy per epoch: ${nSearch} search epochs, ${trainMetrics.length} training epochs` + (lastAcc != null ? `, latest held-out accuracy ${fmtPct(lastAcc)}` : ""));

    const latNode = document.getElementById("chart-latency");
    const latPoints = searchMetrics.filter((m) => m.expected_latency_ms != null).map((m, i) => [i + 1, m.expected_latency_ms]);
    Charts.line(latNode, [{ name: "expected latency of the search's network", color: Charts.PALETTE[4], points: latPoints }],
      { xLabel: "search epoch", yLabel: "expected latency (ms)",
        hline: job.latency_target_ms == null ? undefined : { y: job.latency_target_ms, label: `target ${fmtMs(job.latency_target_ms)}` } });
    if (latPoints.length) latNode.setAttribute("aria-label", `Expected latency per search epoch, last ${fmtMs(latPoints[latPoints.length - 1][1])}, target ${fmtMs(job.latency_target_ms)}`);

    const layout = data.layout;
    const chosen = currentBlocks();
    if (layout && nSearch) {
      const rows = [], highlight = new Set();
      layout.cells.forEach((cell, i) => cell.candidates.forEach((block) => {
        if (chosen && chosen.blocks[i] === block) highlight.add(rows.length);
        rows.push({ cell: i, label: `layer ${i + 1} · ${blockWords(block)}` });
      }));
      const columns = searchMetrics.map((m) => m.block_probs.flat());
      const heat = document.getElementById("chart-heatmap");
      Charts.heatmap(heat, rows, columns, { highlight });
      heat.setAttribute("aria-label", `Architecture probabilities over ${nSearch} search epochs for ${layout.cells.length} layers`);
    }
    if (layout && chosen) {
      const diagram = document.getElementById("arch-diagram");
      Charts.arch(diagram, layout, chosen.blocks);
      if (!chosen.final) diagram.prepend(el("p", { class: "muted", text: "Most likely network so far (the search is still running):" }));
    }
  }
  const blockWords = (block) => {
    const b = Charts.parseBlock(block);
    return b.kind === "mb" ? `MB${b.expansion} ${b.kernel}×${b.kernel}` : "skip";
  };

  // -- job state, outcome, downloads -------------------------------------------------------
  let refreshTimer = null;
  function scheduleRefresh() { if (!refreshTimer) refreshTimer = setTimeout(() => { refreshTimer = null; refreshJob(); }, 400); }
  async function refreshJob() {
    try { job = await AutoML.api("GET", base); } catch (err) { return; }
    const badge = document.getElementById("job-state");
    const missed = job.state === "succeeded" && job.result.target_met === false;
    badge.textContent = missed ? `${STATE_WORDS[job.state]}: latency target missed` : STATE_WORDS[job.state];
    badge.className = `badge badge-${missed ? "missed" : job.state}`;
    document.getElementById("cancel").hidden = job.done;
    document.getElementById("rerun").hidden = !job.done;
    const error = document.getElementById("job-error");
    if (job.error) {
      error.hidden = false;
      error.textContent = `The job stopped${job.stage ? ` during “${job.stage}”` : ""}: ${job.error}`;
    }
    if (job.result.profile && job.result.profile.achievable_ms) achievable = job.result.profile.achievable_ms;
    drawCharts();
    if (job.result.report) showReport(job.result.report);
    else if (job.result.verify) showLatency(null);
    if (job.result.schedule) showSchedule(job.result.schedule);
    if (job.result.audit) showPrivacy(job.result.audit);
    if (job.result.baselines) showBaselines(job.result.baselines);
  }

  // -- baselines: the searched network beside random search and a uniform network --------------
  function showBaselines(b) {
    document.getElementById("baselines-card").hidden = false;
    const rows = b.rows || [];
    const measured = rows.filter((r) => r.measured_ms != null && r.test_accuracy != null);
    const skipped = rows.filter((r) => r.skipped);
    // A baseline that measured over the target was replaced by a faster one (jobs/baselines._retry_misses).
    const retried = rows.filter((r) => (r.tries || []).length);
    const over = rows.filter((r) => r.retry_ended);
    document.getElementById("baselines-summary").textContent =
      `Each network was kept within the same predicted latency (${fmtMs(b.predicted_at_most_ms)}, under your target of ` +
      `${fmtMs(b.target_ms)}), trained with the same budget by the ${b.train_budget.pipeline} pipeline, tested on the same ` +
      "images and measured on the same device. Random search tried networks of the space for about as long as the search ran; " +
      "the uniform network uses one block type in every layer, as a hand-designed MobileNetV2 does." +
      (skipped.length ? ` Not run: ${skipped.map((r) => `${r.label} (${r.skipped})`).join("; ")}.` : "") +
      (retried.length ? " Replaced by a faster network after measuring over your target: " + retried.map((r) =>
        `${r.label} (earlier: ${r.tries.map((t) => fmtMs(t.measured_ms)).join(", ")})`).join("; ") + "." : "") +
      (over.length ? ` Still over your target: ${over.map((r) => r.retry_ended).join("; ")}.` : "");
    const chart = document.getElementById("chart-baselines");
    Charts.scatter(chart, measured.map((r) => ({ device: r.label, accuracy: r.test_accuracy, measured_ms: r.measured_ms,
      title: `${r.label}: ${fmtPct(r.test_accuracy)} at ${fmtMs(r.measured_ms)} measured (${fmtMs(r.predicted_ms)} predicted)` })),
      { marker: { value: b.target_ms, label: `your target ${fmtMs(b.target_ms)}` }, empty: "No network measured yet." });
    chart.setAttribute("aria-label", "Test accuracy against measured latency: " + measured.map((r) =>
      `${r.label} ${fmtPct(r.test_accuracy)} at ${fmtMs(r.measured_ms)}`).join("; ") + `; target ${fmtMs(b.target_ms)}`);
    const sec = (v) => (v == null ? "–" : `${Number(v).toFixed(1)} s`);
    document.getElementById("baselines-rows").replaceChildren(...rows.map((r) => el("tr", { "data-baseline": r.method },
      el("th", { scope: "row", text: r.label }),
      el("td", { text: r.test_accuracy == null ? "–" : fmtPct(r.test_accuracy) }),
      el("td", { text: r.predicted_ms == null ? "–" : fmtMs(r.predicted_ms) }),
      el("td", { text: r.measured_ms == null ? (r.measurement_error || r.skipped || "–") : fmtMs(r.measured_ms) }),
      el("td", { text: sec(r.search_cost_s) }),
      el("td", { text: sec(r.train_seconds) }))));
  }

  // -- privacy audit: originals beside rebuilds, and one row per attacked setting -------------
  function showPrivacy(a) {
    document.getElementById("privacy-card").hidden = false;
    const first = a.rows[0] || {};
    const labels = a.labels_sent_in_clear ? " Labels travel in the clear with every upload." : "";
    document.getElementById("privacy-summary").textContent =
      `From ${a.traffic === "features" ? "the features H a client sends" : "a worker's gradient"}: ` +
      `PSNR ${first.psnr_db} dB, SSIM ${first.ssim} on ${first.images} images (recognisable at PSNR ≥ ${a.recognisable_psnr_db} dB).` +
      labels + (a.not_run.length ? ` Not run within the time limit: ${a.not_run.join(", ")}.` : "");
    if (a.grid) {
      document.getElementById("privacy-grid").src = a.grid;
      document.getElementById("privacy-grid-rows").textContent = `Lines: ${a.grid_rows.join(" · ")}`;
    }
    const num = (v, d = 2) => (v == null ? "–" : Number(v).toFixed(d));
    document.getElementById("privacy-rows").replaceChildren(...a.rows.map((r) => el("tr", {},
      el("td", { text: r.name }), el("td", { text: num(r.psnr_db, 1) }), el("td", { text: num(r.ssim) }),
      el("td", { text: r.recognisable == null ? "–" : fmtPct(r.recognisable) }),
      el("td", { text: r.labels_recovered == null ? "–" : fmtPct(r.labels_recovered) }),
      el("td", { text: r.accuracy_cost == null ? "–" : `${(r.accuracy_cost * 100).toFixed(1)} points` }))));
  }

  // -- deployment schedule (IOS): stages as columns, groups as lanes, merges marked ------------
  function showSchedule(s) {
    document.getElementById("schedule-card").hidden = false;
    const lat = s.latency_ms || {};
    const speed = s.speedup ? `${s.speedup.toFixed(2)}× the sequential speed` : "";
    document.getElementById("schedule-summary").textContent =
      `${s.num_stages} stages for ${s.ops} operators (${s.merges} merged, up to ${s.max_groups} side by side); ${speed}. ` +
      `Deployed: ${s.deployed}${s.note ? ` (${s.note})` : ""}. Stages measured on the device: ${s.stages_measured}, ` +
      `reused from earlier schedules: ${s.stages_reused}, device time ${s.device_seconds.toFixed(1)} s.` +
      (s.advice ? ` Note: ${s.advice}.` : "");
    const short = (name) => name.replace(/_output_0$/, "").split("/").filter(Boolean).slice(-2).join("/");
    const grid = document.getElementById("schedule-stages");
    grid.replaceChildren(...s.stages.map((stage, i) => el("div", { class: `schedule-stage schedule-${stage.kind}`, title: `stage ${i + 1}: ${stage.kind}` },
      el("div", { class: "muted", text: `${i + 1}${stage.kind === "merge" ? " ⊕ merged" : ""}` }),
      ...stage.groups.map((group) => el("div", { class: "schedule-lane", text: group.map(short).join(" → ") })))));
    grid.style.display = "flex";
    grid.style.overflowX = "auto";
    grid.style.gap = "4px";
    const names = [["sequential", "sequential"], ["greedy", "greedy"], ["ort_sequential", "ONNX Runtime sequential"],
      ["ort_parallel", "ONNX Runtime parallel"], ["ios", "IOS"]];
    Charts.bars(document.getElementById("chart-schedule"), names.filter(([k]) => lat[k] != null).map(([k, label], i) =>
      ({ label, value: lat[k], color: Charts.PALETTE[i % Charts.PALETTE.length] })), { unit: " ms" });
  }

  /** One sentence on the clock's figure beside the paced one (latency_db/pace.py). */
  function paceSentence(measured, clock) {
    if (clock == null || measured == null) return "";
    const ratio = clock / measured;
    const how = Math.abs(ratio - 1) < 0.02 ? "at about the same speed as"
      : ratio < 1 ? `${(1 / ratio).toFixed(2)}× faster than` : `${ratio.toFixed(2)}× slower than`;
    return `The clock measured ${fmtMs(clock)}; the figure at the device's pace (${fmtMs(measured)}) is that time rescaled to ` +
      `the speed the device had when it was first profiled, using a fixed reference workload timed beside every measurement, ` +
      `so that it compares with the latency table's prediction and your target: during this measurement the device ran ${how} then.`;
  }

  function showLatency(report) {
    const target = job.latency_target_ms;
    const v = job.result.verify || {};
    const predicted = report ? report.latency.predicted_ms : v.predicted_ms;
    const measured = report ? report.latency.measured_ms : v.measured_ms;
    const clock = report ? report.latency.raw_measured_ms : v.raw_measured_ms;
    const range = report ? report.latency.achievable_ms : achievable;
    const box = document.getElementById("latency-compare");
    box.replaceChildren();
    if (measured == null) return;
    const rows = [["Your target", target], ["Predicted by the latency table", predicted],
      ["Measured on the device, at its profiled pace", measured, "paced"], ["Measured on the device, by the clock", clock, "clock"]];
    const table = el("table", { class: "latency-table" }, el("tbody", {}, ...rows.filter(([, value]) => value != null).map(([label, value, key]) =>
      el("tr", key ? { "data-latency": key } : {}, el("th", { scope: "row", text: label }), el("td", { text: fmtMs(value) })))));
    if (range) table.tBodies[0].append(el("tr", {}, el("th", { scope: "row", text: "Possible on this device (fastest – slowest network)" }), el("td", { text: `${fmtMs(range[0])} – ${fmtMs(range[1])}` })));
    box.append(table);
    const sentence = paceSentence(measured, clock);
    if (sentence) box.append(el("p", { id: "pace-note", class: "help", text: sentence }));
    const chart = el("div", { class: "chart", role: "img", "aria-label": `Target ${fmtMs(target)}, predicted ${fmtMs(predicted)}, measured ${fmtMs(measured)} at the device's profiled pace` +
      (clock != null ? `, ${fmtMs(clock)} by the clock` : "") });
    box.append(chart);
    Charts.bars(chart, [
      { label: "predicted by the table", value: predicted, color: Charts.PALETTE[0] },
      { label: "measured, at its pace", value: measured, color: Charts.PALETTE[2] },
      ...(clock != null ? [{ label: "measured, by the clock", value: clock, color: Charts.PALETTE[6] }] : []),
    ], { marker: { value: target, label: `your target ${fmtMs(target)}` },
         band: range ? { from: range[0], to: range[1], label: "green: possible on this device" } : null });
    const ratio = predicted ? measured / predicted : null;
    if (ratio) box.append(el("p", { class: "help", text: `The device measured ${ratio.toFixed(2)}× the prediction. ` +
      (Math.abs(ratio - 1) <= 0.1 ? "The latency table predicted it well." : "Whole-network effects (memory, fused operations, the runtime's overhead) make the real time differ from the sum of the parts; each measured job improves the calibration.") }));
  }

  function showReport(report) {
    showLatency(report);
    const acc = report.accuracy.test, lat = report.latency;
    const met = report.target_met ?? lat.meets_target;
    const outcome = document.getElementById("outcome");
    const body = document.getElementById("outcome-body");
    outcome.hidden = false;
    const blocks = report.arch.blocks;
    const used = blocks.filter((b) => b !== "zero");
    const kernels = used.map((b) => Charts.parseBlock(b).kernel);
    const skipped = blocks.length - used.length;
    body.replaceChildren(
      el("div", { class: "big-numbers" },
        el("div", {}, el("strong", { text: fmtPct(acc) }), "right on new test images"),
        el("div", {}, el("strong", { text: fmtMs(lat.measured_ms) }), `per image on ${report.device} at its profiled pace` +
          (lat.raw_measured_ms != null ? ` (${fmtMs(lat.raw_measured_ms)} by the clock)` : "")),
        el("div", {}, el("strong", { text: `${(report.model.onnx_bytes / 1024).toFixed(0)} KiB` }), `${report.model.parameters.toLocaleString()} parameters`)),
      el("p", { text: `${met ? "It meets your target" : "It misses your target"} of ${fmtMs(report.latency_target_ms)}. ` +
        `Before searching, the service measured every building block on ${report.device}: networks of this space take from ` +
        `${fmtMs(lat.achievable_ms[0])} to ${fmtMs(lat.achievable_ms[1])} there. The search then chose, for each of the ${blocks.length} layers, ` +
        `the block that helps accuracy most while keeping the predicted time under the target: it predicted ${fmtMs(lat.predicted_ms)}, ` +
        `and the finished file measured ${fmtMs(lat.measured_ms)} on the device.` }),
      ...(met ? [] : [el("p", { class: "error box", id: "target-missed", role: "alert",
        text: `Latency target missed. ${report.target_missed || `The network measured ${fmtMs(lat.measured_ms)}, over your target of ${fmtMs(report.latency_target_ms)}.`}` })]),
      ...(report.fit ? [el("p", { id: "fit-tries", text: `Before training, the service timed the chosen network on ${report.device}: ` +
        `${report.fit.tries.map((t) => fmtMs(t.measured_ms)).join(", then ")}` +
        (report.fit.tries.length > 1 ? ` (it moved to a ${report.fit.tries[1].predicted_ms > report.fit.tries[0].predicted_ms ? "slower, more accurate" : "faster"} network ` +
          "derived from the same search, so that the network uses your latency budget without going over it)" : "") +
        `. It kept the one it expects at ${fmtMs(report.fit.estimated_ms ?? report.fit.measured_ms)}: ${report.fit.inside_window ? "inside" : "outside"} the window of ` +
        `${fmtMs(report.fit.window_ms[0])} – ${fmtMs(report.fit.window_ms[1])} (87–96% of your target, by the device’s speed over the networks it timed).` })] : []),
      ...((lat.tries || []).length > 1 ? [el("p", { id: "target-tries", text: `Networks tried: ${lat.tries.map((t) =>
        `${fmtMs(t.measured_ms)} (${t.meets_target ? "met" : "missed"})`).join(", ")}. When a network measured over the target, ` +
        "the job derived the next-faster network from the search and trained, exported and measured it again." })] : []),
      ...(lat.predicted_interval_ms ? [el("p", { class: "help", text: `The prediction's interval: ${fmtMs(lat.predicted_interval_ms[0])} – ` +
        `${fmtMs(lat.predicted_interval_ms[1])} (the predictor's 95th-percentile error on networks it was not fitted on).` })] : []),
      el("p", { text: `What it chose: ${used.length} layers with kernels of ${[...new Set(kernels)].sort().map((k) => `${k}×${k}`).join(", ")}` +
        (skipped ? `, and ${skipped} layer${skipped > 1 ? "s" : ""} skipped to save time` : "") +
        ". Larger kernels and expansions see more and learn more but cost time; see the diagram below." }),
    );
    const list = document.getElementById("downloads");
    const labels = { onnx: "ONNX model (onnxruntime)", tflite: "TFLite model (LiteRT, Android)", arch: "Architecture (JSON)", weights: "PyTorch weights", report: "Report (JSON)" };
    list.replaceChildren(...Object.keys(labels).filter((k) => report.downloads[k]).map((kind) =>
      el("li", {}, el("a", { href: `${base}/artifacts/${kind}`, download: "", "data-download": kind, text: labels[kind] }))));
    const bundle = document.getElementById("bundle");
    bundle.href = `${base}/artifacts/bundle`;
    bundle.hidden = false;
    document.getElementById("bundle-help").hidden = false;
    drawCharts();
  }

  // -- buttons ------------------------------------------------------------------------------
  const message = document.getElementById("action-message");
  function say(text, isError) { message.hidden = false; message.textContent = text; message.className = isError ? "error box" : "notice"; }
  document.getElementById("cancel").addEventListener("click", async () => {
    try {
      await AutoML.api("POST", `${base}/cancel`);
      say("Cancellation requested: the job stops at its next checkpoint and keeps what it finished.");
    } catch (err) { say("Could not cancel: " + err.message, true); }
  });
  document.getElementById("rerun").addEventListener("click", async () => {
    try {
      const fresh = await AutoML.api("POST", `${base}/rerun`);
      window.location.href = `/jobs/${fresh.id}`;
    } catch (err) { say("Could not start it again: " + err.message, true); }
  });

  // -- following the job ---------------------------------------------------------------------
  async function loadAll() {
    let token = null;
    do {
      const page = await AutoML.api("GET", `${base}/events?page_size=500${token ? `&page_token=${encodeURIComponent(token)}` : ""}`);
      page.events.forEach(handle);
      token = page.next_page_token;
    } while (token);
  }
  const pageToken = (id) => btoa(JSON.stringify([id])).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  async function poll() {
    try {
      const page = await AutoML.api("GET", `${base}/events?page_size=500${lastId ? `&page_token=${pageToken(lastId)}` : ""}`);
      page.events.forEach(handle);
      if (job.done && !page.events.length) return;
    } catch (err) { /* retried below */ }
    setTimeout(poll, 2000);
  }
  function follow() {
    if (!window.EventSource) { poll(); return; }
    const stream = new EventSource(`${base}/events/stream?after=${lastId}`);
    let failures = 0;
    const onEvent = (m) => { failures = 0; handle(JSON.parse(m.data)); };
    ["state", "progress", "metric", "log", "warning"].forEach((kind) => stream.addEventListener(kind, onEvent));
    stream.addEventListener("end", () => { stream.close(); refreshJob(); });
    stream.addEventListener("error", () => {
      failures += 1;
      if (stream.readyState === EventSource.CLOSED || failures > 3) { stream.close(); poll(); }
    });
  }
  (async () => {
    try { await loadAll(); } catch (err) { say("The job's timeline could not be loaded: " + err.message, true); }
    await refreshJob();
    if (!job.done) follow();
  })();
})();
