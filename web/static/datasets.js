/* Datasets page: drag-and-drop upload with a progress bar (XHR, so that the
   upload's progress is visible), the API's validation error next to the file,
   and deletion with a confirmation. */
"use strict";
(() => {
  const zone = document.getElementById("drop-zone");
  const input = document.getElementById("file-input");
  const nameInput = document.getElementById("dataset-name");
  const list = document.getElementById("uploads");
  const { el } = AutoML;

  // The gist of each kind of refusal, before the API's exact detail.
  const PLAIN = {
    "file": "It is not a .zip of image folders nor an .npz file.",
    "archive.path": "For safety, archives with links or paths pointing outside the archive are refused.",
    "archive.ratio": "Unpacked, the archive would be far too large.",
    "archive.entries": "The archive holds too many files.",
    "archive": "The archive is damaged.",
    "image": "An image inside could not be read.",
    "classes": "Images must sit in at least two class folders, none of them empty.",
    "x": "The images array (x) in the .npz file is not usable.",
    "y": "The labels array (y) in the .npz file is not usable.",
    "name": "The dataset name is not usable.",
  };

  function upload(file) {
    const progress = el("progress", { max: "100", value: "0", "aria-label": `Upload of ${file.name}` });
    const status = el("p", { class: "status-line", text: "Uploading…" });
    const item = el("li", { "data-file": file.name }, el("span", { class: "file", text: file.name }), " ",
      el("span", { class: "muted", text: `${(file.size / 1024).toFixed(1)} KiB` }), el("br"), progress, status);
    list.prepend(item);
    const form = new FormData();
    form.append("file", file);
    if (nameInput.value.trim()) form.append("name", nameInput.value.trim());
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/v1/datasets");
    xhr.setRequestHeader("X-CSRF-Token", AutoML.csrf());
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) progress.value = Math.round((e.loaded / e.total) * 100);
      if (e.loaded === e.total) status.textContent = "Checking every image…";
    });
    xhr.addEventListener("load", () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (err) { body = null; }
      progress.value = 100;
      if (xhr.status === 201) {
        item.classList.add("accepted");
        status.className = "ok";
        status.textContent = `Accepted as “${body.name}”: ${body.num_samples} images in ${body.num_classes} classes (${body.class_counts ? Object.keys(body.class_counts).slice(0, 6).join(", ") : ""}).`;
        nameInput.value = "";
        refreshList();
      } else {
        if (xhr.status === 401) { window.location.href = "/login?next=/datasets"; return; }
        item.classList.add("rejected");
        progress.hidden = true;
        status.className = "error";
        status.setAttribute("role", "alert");
        const gist = body && PLAIN[body.field] ? PLAIN[body.field] + " " : "";
        status.textContent = "This file was not accepted. " + gist + "Details: " + AutoML.problemMessage(body, xhr.status);
      }
    });
    xhr.addEventListener("error", () => {
      status.className = "error";
      status.textContent = "The upload was interrupted: the server could not be reached. Try again.";
    });
    xhr.send(form);
  }

  function uploadAll(files) { Array.from(files || []).forEach(upload); }

  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); }
  });
  ["dragenter", "dragover"].forEach((type) => zone.addEventListener(type, (e) => {
    e.preventDefault();
    zone.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => zone.addEventListener(type, () => zone.classList.remove("over")));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    uploadAll(e.dataTransfer && e.dataTransfer.files);
  });
  input.addEventListener("change", () => { uploadAll(input.files); input.value = ""; });

  async function refreshList() {
    const response = await fetch(window.location.pathname, { credentials: "same-origin" });
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = doc.querySelector(".dataset-grid");
    if (fresh) document.querySelector(".dataset-grid").replaceWith(fresh);
  }

  const dialog = document.getElementById("confirm-delete");
  let pending = null;
  document.addEventListener("click", (e) => {
    const button = e.target.closest("button[data-delete]");
    if (!button) return;
    pending = button;
    dialog.querySelector("[data-name]").textContent = button.dataset.name;
    dialog.returnValue = "";
    dialog.showModal();
  });
  dialog.addEventListener("close", async () => {
    const button = pending;
    pending = null;
    if (!button || dialog.returnValue !== "delete") { if (button) button.focus(); return; }
    const card = button.closest("article");
    const error = card.querySelector("[data-error]");
    try {
      await AutoML.api("DELETE", `/api/v1/datasets/${button.dataset.delete}`);
      const heading = document.getElementById("list-title");
      card.remove();
      heading.setAttribute("tabindex", "-1");
      heading.focus();
    } catch (err) {
      error.hidden = false;
      error.textContent = "Not deleted. " + err.message;
    }
  });
})();
