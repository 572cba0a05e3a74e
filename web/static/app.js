/* Shared helpers of the pages: API calls with the session's CSRF token,
   errors in plain words, number and time formats. No dependencies. */
"use strict";
const AutoML = (() => {
  const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  const FIELD_WORDS = {
    file: "the file", name: "the name", dataset: "the dataset", device: "the device", runtime: "the runtime",
    space: "the search space", latency_target_ms: "the latency target", pipeline: "the pipeline",
  };

  /** A problem document (RFC 9457) as a sentence a non-expert can act on. */
  function problemMessage(problem, status) {
    if (!problem || typeof problem !== "object") {
      return status ? `The server answered with an error (${status}). Please try again.` : "The server could not be reached. Check your connection and try again.";
    }
    if (status === 413 || problem.status === 413) {
      return "This file is too large for this server. " + (problem.detail || "");
    }
    if (status === 401) return "Your login has expired. Please log in again.";
    const detail = (problem.detail || problem.title || "something was wrong").replace(/^body field /, "");
    const field = problem.field && FIELD_WORDS[problem.field] ? ` (${FIELD_WORDS[problem.field]})` : "";
    return detail.charAt(0).toUpperCase() + detail.slice(1) + (detail.endsWith(".") ? "" : ".") + (field && !detail.includes(problem.field) ? field : "");
  }

  class ApiError extends Error {
    constructor(status, problem) {
      super(problemMessage(problem, status));
      this.status = status;
      this.problem = problem || {};
    }
  }

  async function api(method, path, body, headers) {
    const init = { method, credentials: "same-origin", headers: { "Accept": "application/json", "X-CSRF-Token": csrf(), ...(headers || {}) } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, null);
    }
    if (response.status === 401) {
      window.location.href = "/login?next=" + encodeURIComponent(window.location.pathname + window.location.search);
    }
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (err) { data = null; }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  function fmtMs(value) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    return (Math.abs(value) >= 100 ? value.toFixed(0) : Number(value.toPrecision(3)).toString()) + " ms";
  }
  const fmtPct = (v) => (v === null || v === undefined ? "–" : (v * 100).toFixed(1) + "%");
  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined) return "";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }
  function ago(iso) {
    const then = new Date(iso.endsWith("Z") || /[+-]\d\d:\d\d$/.test(iso) ? iso : iso + "Z");
    const s = (Date.now() - then.getTime()) / 1000;
    if (s < 5) return "just now";
    if (s < 90) return `${Math.round(s)} s ago`;
    if (s < 5400) return `${Math.round(s / 60)} min ago`;
    if (s < 129600) return `${Math.round(s / 3600)} h ago`;
    return then.toLocaleDateString();
  }
  function relativeTimes(root) {
    (root || document).querySelectorAll("time.relative").forEach((t) => {
      t.title = t.title || t.textContent;
      t.textContent = ago(t.getAttribute("datetime"));
    });
  }
  const el = (tag, attrs, ...children) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = v; else node.setAttribute(k, v === true ? "" : v);
    }
    for (const child of children) node.append(child);
    return node;
  };
  // A box that scrolls (a wide table or chart on a phone) must be reachable by keyboard to be scrolled:
  // every such box in main gets tabindex 0, whenever the page (re)draws or resizes.
  function keyboardScrollable() {
    document.querySelectorAll("main *").forEach((node) => {
      if (node.hasAttribute("tabindex") || node.matches("a, button, input, select, textarea, summary")) return;
      const style = getComputedStyle(node);
      const scrolls = (/(auto|scroll)/.test(style.overflowX) && node.scrollWidth > node.clientWidth + 1) ||
        (/(auto|scroll)/.test(style.overflowY) && node.scrollHeight > node.clientHeight + 1);
      if (scrolls) node.setAttribute("tabindex", "0");
    });
  }
  let pendingScan = false;
  const scan = () => {
    if (pendingScan) return;
    pendingScan = true;
    requestAnimationFrame(() => { pendingScan = false; keyboardScrollable(); });
  };
  document.addEventListener("DOMContentLoaded", () => {
    relativeTimes();
    scan();
    const main = document.querySelector("main");
    if (main) new MutationObserver(scan).observe(main, { childList: true, subtree: true });
  });
  window.addEventListener("resize", scan);
  return { api, ApiError, problemMessage, fmtMs, fmtPct, fmtDuration, ago, relativeTimes, el, csrf };
})();
