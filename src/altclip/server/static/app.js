"use strict";
// The search page: text or image search over the server's index, and zero-shot classification.
// Every call sends the token when one is given; the token box shows when the API answers 401.
// Thumbnails are fetched with the token and shown as blob URLs.

const $ = (id) => document.getElementById(id);

function headers() {
  const token = $("token").value || localStorage.getItem("altclip-token") || "";
  return token ? { Authorization: "Bearer " + token } : {};
}

async function call(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).detail || message; } catch (_) { /* not JSON */ }
    throw new Error(`${response.status}: ${message}`);
  }
  return response;
}

function status(id, text, isError = false) {
  $(id).textContent = text;
  $(id).classList.toggle("error", isError);
}

async function showResults(results) {
  const grid = $("results");
  grid.replaceChildren();
  for (const hit of results) {
    const figure = document.createElement("figure");
    figure.className = "hit";
    const img = document.createElement("img");
    img.alt = hit.name;
    const caption = document.createElement("figcaption");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = hit.name;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(3);
    caption.append(name, score);
    figure.append(img, caption);
    grid.append(figure);
    call(`/v1/thumbnails/${hit.id}`)
      .then((r) => r.blob())
      .then((blob) => { img.src = URL.createObjectURL(blob); })
      .catch(() => { img.alt = hit.name + " (no thumbnail)"; });
  }
}

async function search(body) {
  status("search-status", "Searching…");
  try {
    const response = await call("/v1/search", body);
    const { results } = await response.json();
    status("search-status", results.length ? `${results.length} results` : "No results");
    await showResults(results);
  } catch (error) {
    status("search-status", error.message, true);
  }
}

function searchText(event) {
  event.preventDefault();
  const query = $("query").value.trim();
  if (!query) { status("search-status", "Type something to search for", true); return; }
  search({ method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ query, top_k: 24 }) });
}

function searchImage(file) {
  if (!file) return;
  const form = new FormData();
  form.append("image", file);
  form.append("top_k", "24");
  search({ method: "POST", body: form });
}

async function classify(event) {
  event.preventDefault();
  const file = $("classify-file").files[0];
  const labels = $("labels").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (!file || !labels.length) { status("classify-status", "Choose an image and type some labels", true); return; }
  const form = new FormData();
  form.append("image", file);
  form.append("labels", JSON.stringify(labels));
  status("classify-status", "Classifying…");
  try {
    const response = await call("/v1/classify", { method: "POST", body: form });
    const result = await response.json();
    const list = $("labels-out");
    list.replaceChildren();
    for (const { label, score } of result.labels) {
      const item = document.createElement("li");
      item.className = "label";
      const text = document.createElement("span");
      text.textContent = `${label} — ${(100 * score).toFixed(1)}%`;
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.style.width = `${Math.max(1, 100 * score)}%`;
      item.append(text, bar);
      list.append(item);
    }
    status("classify-status", "");
  } catch (error) {
    status("classify-status", error.message, true);
  }
}

async function showInfo() {
  try {
    const response = await fetch("/v1/info", { headers: headers() });
    if (response.status === 401) {
      $("token-box").hidden = false;
      $("info").textContent = "This server needs a token";
      return;
    }
    const info = await response.json();
    $("token-box").hidden = !info.auth;
    $("info").textContent = `${info.model} · ${info.index ? info.index.images + " photos indexed" : "no index"}`;
    $("search-panel").classList.toggle("disabled", !info.index);
  } catch (error) {
    $("info").textContent = "The server did not answer: " + error.message;
  }
}

async function init() {
  $("token").value = localStorage.getItem("altclip-token") || "";
  await showInfo();
  $("token").addEventListener("change", () => {
    localStorage.setItem("altclip-token", $("token").value);
    showInfo();
  });
  $("search-form").addEventListener("submit", searchText);
  $("classify-form").addEventListener("submit", classify);
  $("search-file").addEventListener("change", (e) => searchImage(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); searchImage(e.dataTransfer.files[0]); });
}

init();
