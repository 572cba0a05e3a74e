/* Small inline-SVG charts drawn without any library: line charts, the
   architecture-probability heatmap, the accuracy/latency scatter and the
   architecture diagram (the way the ProxylessNAS paper draws its networks). */
"use strict";
const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#0b57d0", "#d93025", "#188038", "#e37400", "#8e24aa", "#00796b", "#5f6368", "#c2185b"];
  const KERNEL_COLOURS = { 3: "#2e7d32", 5: "#1565c0", 7: "#8e24aa" };

  function svg(width, height) {
    const node = document.createElementNS(NS, "svg");
    node.setAttribute("viewBox", `0 0 ${width} ${height}`);
    node.setAttribute("focusable", "false");
    return node;
  }
  function add(parent, tag, attrs, text) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    parent.append(node);
    return node;
  }
  const niceNumber = (v) => Number(v.toPrecision(3)).toString();

  function legend(container, items) {
    const box = document.createElement("div");
    box.className = "legend";
    for (const item of items) {
      const span = document.createElement("span");
      span.style.setProperty("--c", item.color);
      span.textContent = item.name;
      box.append(span);
    }
    container.append(box);
  }

  /** series: [{name, color, points: [[x, y], ...], dashed}]; opts: {xLabel, yLabel, yMin, yMax, hline, yFormat} */
  function line(container, series, opts) {
    opts = opts || {};
    container.replaceChildren();
    const all = series.flatMap((s) => s.points);
    if (!all.length) { container.append(Object.assign(document.createElement("p"), { className: "muted", textContent: "No data yet." })); return; }
    const W = 520, H = 240, L = 66, R = 14, T = 12, B = 38;
    const xs = all.map((p) => p[0]);
    let ys = all.map((p) => p[1]);
    if (opts.hline) ys = ys.concat([opts.hline.y]);
    const xMin = Math.min(...xs), xMax = Math.max(...xs, xMin + 1);
    let yMin = opts.yMin ?? Math.min(...ys), yMax = opts.yMax ?? Math.max(...ys);
    // Quantities that cannot be negative (latencies, accuracies, bytes, losses) keep their axis at >= 0:
    // the padding below the lowest value stops at zero.
    const floor = ys.every((v) => v >= 0) ? 0 : -Infinity;
    if (yMax - yMin < 1e-12) { yMax += Math.abs(yMax) * 0.1 + 1e-6; yMin = Math.max(floor, yMin - Math.abs(yMin) * 0.1 - 1e-6); }
    const pad = opts.yMin === undefined ? (yMax - yMin) * 0.08 : 0;
    yMin = Math.max(floor, yMin - pad);
    const yTop = yMax + (opts.yMax === undefined ? (yMax - yMin) * 0.08 : 0);
    const x = (v) => L + (W - L - R) * (v - xMin) / (xMax - xMin);
    const y = (v) => T + (H - T - B) * (1 - (v - yMin) / (yTop - yMin));
    const root = svg(W, H);
    const fmt = opts.yFormat || niceNumber;
    for (let i = 0; i <= 4; i++) {
      const v = yMin + (yTop - yMin) * i / 4;
      add(root, "line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" });
      add(root, "text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, fmt(v));
    }
    const xticks = Math.min(8, Math.round(xMax - xMin));
    for (let i = 0; i <= xticks; i++) {
      const v = xMin + (xMax - xMin) * i / Math.max(xticks, 1);
      add(root, "text", { x: x(v), y: H - B + 16, "text-anchor": "middle" }, Math.round(v));
    }
    add(root, "line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" });
    add(root, "line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" });
    if (opts.xLabel) add(root, "text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }, opts.xLabel);
    if (opts.yLabel) add(root, "text", { x: 12, y: (T + H - B) / 2, transform: `rotate(-90 12 ${(T + H - B) / 2})`, "text-anchor": "middle" }, opts.yLabel);
    if (opts.hline) {
      add(root, "line", { x1: L, x2: W - R, y1: y(opts.hline.y), y2: y(opts.hline.y), stroke: opts.hline.color || "#b3261e", "stroke-width": 2, "stroke-dasharray": "6 4" });
      add(root, "text", { x: W - R - 4, y: y(opts.hline.y) - 5, "text-anchor": "end", fill: opts.hline.color || "#b3261e" }, opts.hline.label);
    }
    for (const s of series) {
      if (!s.points.length) continue;
      add(root, "polyline", { points: s.points.map((p) => `${x(p[0])},${y(p[1])}`).join(" "), fill: "none", stroke: s.color,
        "stroke-width": 2.2, "stroke-dasharray": s.dashed ? "5 3" : "none" });
      for (const p of s.points) add(root, "circle", { cx: x(p[0]), cy: y(p[1]), r: 2.6, fill: s.color });
    }
    container.append(root);
    legend(container, series.filter((s) => s.points.length));
  }

  /** rows: [{label, cell}]; columns: [[p_row0, p_row1, ...] per epoch]; highlight: row indexes of the chosen blocks */
  function heatmap(container, rows, columns, opts) {
    opts = opts || {};
    container.replaceChildren();
    if (!columns.length) { container.append(Object.assign(document.createElement("p"), { className: "muted", textContent: "No search epoch yet." })); return; }
    const cellW = Math.max(8, Math.min(28, Math.floor(560 / columns.length))), cellH = 13, L = 150, T = 18;
    const W = L + cellW * columns.length + 10, H = T + cellH * rows.length + 26;
    const root = svg(W, H);
    root.style.maxWidth = `${W * 1.4}px`;
    root.style.minWidth = `${W * 1.1}px`;  // never shrunk below readable text: a phone scrolls it (.heatmap)
    rows.forEach((row, r) => {
      const yy = T + r * cellH;
      if (r > 0 && rows[r - 1].cell !== row.cell) add(root, "line", { x1: 0, x2: W, y1: yy, y2: yy, stroke: "#59626c", "stroke-width": 1 });
      add(root, "text", { x: L - 6, y: yy + cellH - 3, "text-anchor": "end", "font-size": 10,
        "font-weight": opts.highlight && opts.highlight.has(r) ? 700 : 400 }, row.label);
    });
    columns.forEach((values, c) => {
      values.forEach((p, r) => {
        const light = Math.round(97 - 72 * Math.max(0, Math.min(1, p)));
        const rect = add(root, "rect", { x: L + c * cellW, y: T + r * cellH, width: cellW - 1, height: cellH - 1, fill: `hsl(220 75% ${light}%)` });
        add(rect, "title", {}, `${rows[r].label}, epoch ${c + 1}: ${(p * 100).toFixed(0)}%`);
      });
    });
    const step = Math.max(1, Math.ceil(columns.length / 12));
    for (let c = 0; c < columns.length; c += step) add(root, "text", { x: L + c * cellW + cellW / 2, y: T - 5, "text-anchor": "middle", "font-size": 10 }, c + 1);
    add(root, "text", { x: L, y: H - 6, "font-size": 11 }, "search epoch →");
    container.append(root);
  }

  /** points: [{device, accuracy, measured_ms, job}] */
  /** Accuracy against measured latency (log scale): points [{device, accuracy, measured_ms, job?, title?}], one
      colour per ``device`` (a series name); a point with ``job`` links to that job's page. opts.marker {value, label}
      draws a dashed vertical line (the latency target); opts.empty is the text shown without points. */
  function scatter(container, points, opts) {
    opts = opts || {};
    container.replaceChildren();
    if (!points.length) { container.append(Object.assign(document.createElement("p"), { className: "muted", textContent: opts.empty || "No finished job yet." })); return; }
    const devices = [...new Set(points.map((p) => p.device))];
    const W = 620, H = 320, L = 60, R = 34, T = 14, B = 42;
    const ms = points.map((p) => p.measured_ms).concat(opts.marker ? [opts.marker.value] : []), acc = points.map((p) => p.accuracy);
    const lo = Math.min(...ms) / 1.3, hi = Math.max(...ms) * 1.3;
    const aLo = Math.max(0, Math.min(...acc) - 0.05), aHi = Math.min(1, Math.max(...acc) + 0.05);
    const x = (v) => L + (W - L - R) * (Math.log(v) - Math.log(lo)) / (Math.log(hi) - Math.log(lo));
    const y = (v) => T + (H - T - B) * (1 - (v - aLo) / Math.max(aHi - aLo, 1e-6));
    const root = svg(W, H);
    for (let i = 0; i <= 4; i++) {
      const v = aLo + (aHi - aLo) * i / 4;
      add(root, "line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" });
      add(root, "text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, (v * 100).toFixed(0) + "%");
    }
    for (let i = 0; i <= 5; i++) {
      const v = Math.exp(Math.log(lo) + (Math.log(hi) - Math.log(lo)) * i / 5);
      add(root, "text", { x: x(v), y: H - B + 16, "text-anchor": "middle" }, niceNumber(v));
    }
    add(root, "line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" });
    add(root, "line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" });
    add(root, "text", { x: (L + W) / 2, y: H - 6, "text-anchor": "middle" }, "measured latency (ms, log scale)");
    add(root, "text", { x: 12, y: (T + H - B) / 2, transform: `rotate(-90 12 ${(T + H - B) / 2})`, "text-anchor": "middle" }, "test accuracy");
    if (opts.marker) {
      const mx = x(opts.marker.value);
      add(root, "line", { x1: mx, x2: mx, y1: T, y2: H - B, stroke: "#b3261e", "stroke-width": 2, "stroke-dasharray": "5 3", "data-marker": "target" });
      add(root, "text", { x: mx - 4, y: T + 10, "text-anchor": "end", fill: "#b3261e" }, opts.marker.label);
    }
    for (const p of points) {
      const color = PALETTE[devices.indexOf(p.device) % PALETTE.length];
      const parent = p.job ? add(root, "a", { href: `/jobs/${p.job}` }) : root;
      const dot = add(parent, "circle", { cx: x(p.measured_ms), cy: y(p.accuracy), r: 6, fill: color, stroke: "#fff", "stroke-width": 1.5 });
      add(dot, "title", {}, p.title || `${p.device}: ${(p.accuracy * 100).toFixed(1)}% at ${niceNumber(p.measured_ms)} ms` +
        (p.job ? ` (job ${p.job.slice(0, 8)})` : ""));
    }
    container.append(root);
    legend(container, devices.map((d, i) => ({ name: d, color: PALETTE[i % PALETTE.length] })));
  }

  /** Horizontal bars: items [{label, value, color}], a dashed marker line at opts.marker {value, label}
      and an optional band opts.band {from, to, label} drawn behind (the achievable range). */
  function bars(container, items, opts) {
    opts = opts || {};
    container.replaceChildren();
    const W = 560, L = 170, R = 80, rowH = 26, T = 26;
    const H = T + items.length * rowH + 34;
    const values = items.map((i) => i.value).concat(opts.marker ? [opts.marker.value] : [], opts.band ? [opts.band.to] : []);
    const max = Math.max(...values) * 1.1;
    const x = (v) => L + (W - L - R) * v / max;
    const root = svg(W, H);
    root.classList.add("bars");
    if (opts.band) {
      add(root, "rect", { x: x(opts.band.from), y: T - 4, width: Math.max(2, x(opts.band.to) - x(opts.band.from)), height: items.length * rowH + 4, fill: "#e6f4ea" });
      add(root, "text", { x: x(opts.band.from), y: H - 6 }, opts.band.label);
    }
    items.forEach((item, i) => {
      const y = T + i * rowH;
      add(root, "text", { x: L - 8, y: y + 15, "text-anchor": "end" }, item.label);
      add(root, "rect", { x: L, y, width: Math.max(1, x(item.value) - L), height: rowH - 8, fill: item.color, rx: 3 });
      add(root, "text", { x: x(item.value) + 6, y: y + 15 }, niceNumber(item.value) + (opts.unit ?? " ms"));
    });
    if (opts.marker) {
      add(root, "line", { x1: x(opts.marker.value), x2: x(opts.marker.value), y1: T - 6, y2: T + items.length * rowH, stroke: "#b3261e", "stroke-width": 2, "stroke-dasharray": "5 3" });
      add(root, "text", { x: x(opts.marker.value), y: 12, "text-anchor": "middle", fill: "#b3261e" }, opts.marker.label);
    }
    add(root, "line", { x1: L, x2: L, y1: T - 6, y2: T + items.length * rowH, class: "axis" });
    container.append(root);
  }

  const parseBlock = (block) => {
    const m = /^mb(\d+)_k(\d+)$/.exec(block);
    return m ? { kind: "mb", expansion: +m[1], kernel: +m[2] } : { kind: block };
  };

  /** layout: the space at the job's input (fixed layers, cells); blocks: one block string per cell */
  function arch(container, layout, blocks) {
    container.replaceChildren();
    const fixed = Object.fromEntries(layout.fixed.map((f) => [f.name, f]));
    const items = [
      { label: `Conv ${fixed.first_conv.kernel}×${fixed.first_conv.kernel}`, h: 70, color: "#5f6368", out: fixed.first_conv },
      { label: "MB1 3×3", h: 66, color: "#5f6368", out: fixed.first_block },
      ...layout.cells.map((cell, i) => {
        const b = parseBlock(blocks[i]);
        if (b.kind !== "mb") return { label: "skip", h: 40, zero: true, out: cell, cell: i };
        return { label: `MB${b.expansion} ${b.kernel}×${b.kernel}`, h: 36 + 12 * b.expansion, color: KERNEL_COLOURS[b.kernel] || "#444", out: cell, cell: i };
      }),
      { label: "Conv 1×1", h: 70, color: "#5f6368", out: fixed.feature_mix },
      { label: "Pool FC", h: 50, color: "#5f6368", out: fixed.classifier },
    ];
    const boxW = 30, gap = 12, L = 46, mid = 80;
    const W = L + items.length * (boxW + gap) + 40, H = 190;
    const root = svg(W, H);
    root.style.minWidth = `${W * 1.2}px`;  // readable text on a phone: the .arch box scrolls
    add(root, "text", { x: 4, y: mid + 4, "font-size": 11 }, `${layout.resolution}×${layout.resolution}`);
    add(root, "line", { x1: L - 8, x2: W - 30, y1: mid, y2: mid, stroke: "#9aa3ad", "stroke-width": 2 });
    items.forEach((item, i) => {
      const x0 = L + i * (boxW + gap);
      const group = add(root, "g", {});
      add(group, "title", {}, item.zero ? `layer ${item.cell + 1}: skipped (identity)` : `${item.label}: ${item.out.in_ch}→${item.out.out_ch} channels, stride ${item.out.stride}, output ${item.out.output_hw}×${item.out.output_hw}`);
      if (item.zero) {
        add(group, "rect", { x: x0, y: mid - item.h / 2, width: boxW, height: item.h, fill: "#fff", stroke: "#5f6368", "stroke-dasharray": "4 3", rx: 4 });
      } else {
        add(group, "rect", { x: x0, y: mid - item.h / 2, width: boxW, height: item.h, fill: item.color, rx: 4 });
      }
      const cx = x0 + boxW / 2;
      add(group, "text", { x: cx, y: mid + 4, transform: `rotate(-90 ${cx} ${mid})`, "text-anchor": "middle", "font-size": 10.5,
        fill: item.zero ? "#333" : "#fff", "font-weight": 600 }, item.label);
      if (item.out && item.out.stride === 2) add(root, "text", { x: cx, y: mid + 66, "text-anchor": "middle", "font-size": 10, fill: "#333" }, "↓2");
      if (item.out && (i === items.length - 1 || item.out.output_hw !== (items[i + 1].out || {}).input_hw || item.out.stride === 2)) {
        add(root, "text", { x: cx, y: mid + 80, "text-anchor": "middle", "font-size": 9.5, fill: "#4d5661" }, `${item.out.output_hw}²×${item.out.out_ch}`);
      }
    });
    add(root, "text", { x: W - 26, y: mid + 4, "font-size": 11 }, `${layout.num_classes}`);
    container.append(root);
    const described = items.map((it) => it.label).join(", ");
    container.setAttribute("aria-label", `Architecture, input to output: ${described}`);
  }

  return { line, bars, heatmap, scatter, arch, parseBlock, PALETTE };
})();
