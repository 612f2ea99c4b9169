// The playground: choose or load a model, give it an image, a tensor or features, and show
// the classes, the stage timings and the cache status of the reply. Talks only to the
// gateway that served the page; a licensed model's requests are signed by the browser's
// wallet (signing.js).

import { signRequest } from "/playground/signing.js";

const $ = (id) => document.getElementById(id);

const state = {
  models: new Map(), // model_id -> description (GET /api/models/{id})
  current: null, // the chosen model's description
  image: null, // { bytes: Uint8Array, type: string }
  busy: false,
};

function show(id, visible) {
  $(id).hidden = !visible;
}

function setStatus(id, text, kind = "") {
  const el = $(id);
  el.textContent = text;
  el.className = kind;
}

/** The error message of a reply ({success: false, error, message}), or its status line. */
async function replyError(response) {
  try {
    const body = await response.json();
    const message = body.message || body.error || JSON.stringify(body);
    return `${response.status} ${body.error || response.statusText}: ${message}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

// --- models ------------------------------------------------------------------------------

async function refreshModels(select) {
  const response = await fetch("/api/models", { headers: { Accept: "application/json" } });
  if (!response.ok) {
    setStatus("load-status", await replyError(response), "error");
    return;
  }
  const body = await response.json();
  const list = $("model-select");
  const keep = select || list.value;
  list.replaceChildren();
  state.models.clear();
  const empty = new Option(body.models.length ? "(choose a model)" : "(none loaded)", "");
  list.add(empty);
  for (const model of body.models) {
    state.models.set(model.model_id, model);
    const label = `${model.name} ${model.version} (${model.model_id})${model.licensed ? " · licensed" : ""}`;
    list.add(new Option(label, model.model_id));
  }
  list.value = state.models.has(keep) ? keep : "";
  await chooseModel(list.value);
}

async function chooseModel(modelId) {
  state.current = null;
  state.image = null;
  for (const id of ["model-info", "image-section", "tensor-section", "features-section"]) {
    show(id, false);
  }
  show("wallet-status", false);
  $("run-button").disabled = true;
  if (!modelId) return;
  const response = await fetch(`/api/models/${encodeURIComponent(modelId)}`);
  if (!response.ok) {
    setStatus("result-status", await replyError(response), "error");
    return;
  }
  const model = await response.json();
  state.current = model;
  const input = model.inputs[0] || { name: "?", dtype: "?", shape: [] };
  $("info-name").textContent = `${model.name} ${model.version}`;
  $("info-input").textContent = `${input.name} ${input.dtype} [${input.shape.join(", ")}]`;
  $("info-pre").textContent = model.preprocessing;
  $("info-post").textContent = model.postprocessing;
  $("info-licensed").textContent = model.licensed ? `yes (token ${model.tokenId})` : "no";
  show("model-info", true);
  const kind = inputKind(model);
  show(`${kind}-section`, true);
  if (kind === "tensor") {
    $("tensor-input").value = JSON.stringify(zeros(input.shape));
  }
  $("run-button").disabled = kind === "image";
  showWalletStatus(model);
}

/** Which input the model takes: an image, a tensor or named features (its preprocessing). */
function inputKind(model) {
  if (model.preprocessing === "tabular") return "features";
  if (model.preprocessing === "image") return "image";
  return "tensor";
}

/** A nested list of zeros of `shape`; a dynamic dimension counts as 1. */
function zeros(shape) {
  const dims = shape.map((d) => (Number.isInteger(d) && d > 0 ? d : 1));
  const total = dims.reduce((a, b) => a * b, 1);
  if (total > 4096) return [];
  const build = (level) =>
    level === dims.length - 1
      ? new Array(dims[level]).fill(0)
      : Array.from({ length: dims[level] }, () => build(level + 1));
  return dims.length ? build(0) : 0;
}

function wallet() {
  const provider = globalThis.ethereum;
  return provider && typeof provider.request === "function" ? provider : null;
}

function showWalletStatus(model) {
  if (!model.licensed) return;
  if (wallet()) {
    setStatus(
      "wallet-status",
      `This model is licensed (token ${model.tokenId}): each request is signed by your wallet.`,
      "info",
    );
  } else {
    setStatus(
      "wallet-status",
      `This model is licensed (token ${model.tokenId}): its requests must be signed by the ` +
        "wallet of a license holder, and no wallet (window.ethereum) was found in this " +
        "browser. Install a wallet extension, or sign requests with `cidserve sign`.",
      "error",
    );
  }
  show("wallet-status", true);
}

async function loadModel(event) {
  event.preventDefault();
  const cid = $("load-cid").value.trim();
  const token = $("load-token").value.trim();
  if (!cid) {
    setStatus("load-status", "Enter a metadata CID or a NAME@latest reference.", "error");
    return;
  }
  // NAME@latest, NAME@VERSION or NAME@LABEL: a reference to the operator's catalogue.
  const request = cid.includes("@") ? { model: cid, warmup: true } : { metadataCid: cid, warmup: true };
  if (token) {
    if (!/^[0-9]+$/.test(token)) {
      setStatus("load-status", "The token id is a whole number.", "error");
      return;
    }
    request.tokenId = Number(token);
  }
  const headers = { "Content-Type": "application/json" };
  const operator = $("admin-token").value.trim();
  if (operator) headers.Authorization = `Bearer ${operator}`;
  setStatus("load-status", "Loading…");
  $("load-button").disabled = true;
  try {
    const response = await fetch("/api/models/load", {
      method: "POST",
      headers,
      body: JSON.stringify(request),
    });
    if (!response.ok) {
      setStatus("load-status", await replyError(response), "error");
      return;
    }
    const body = await response.json();
    setStatus("load-status", `${body.message}: ${body.model_id} (${body.load_time_ms} ms)`, "ok");
    await refreshModels(body.model_id);
  } catch (error) {
    setStatus("load-status", `Load failed: ${error.message}`, "error");
  } finally {
    $("load-button").disabled = false;
  }
}

// --- input -----------------------------------------------------------------------------

async function takeImage(file) {
  if (!file || !state.current) return;
  if (!file.type.startsWith("image/")) {
    setStatus("result-status", `${file.name} is not an image (${file.type || "unknown type"}).`, "error");
    return;
  }
  state.image = { bytes: new Uint8Array(await file.arrayBuffer()), type: file.type };
  const preview = $("image-preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("run-button").disabled = false;
  await run();
}

function topK() {
  const value = Number($("top-k").value);
  return Number.isInteger(value) && value >= 0 ? value : 5;
}

/** The request for the chosen model and input: [url, content type, body bytes]. */
function buildRequest(model) {
  const kind = inputKind(model);
  if (kind === "image") {
    if (!state.image) throw new Error("Choose an image first.");
    const url = `/api/models/${encodeURIComponent(model.model_id)}/predict?top_k=${topK()}`;
    return [url, state.image.type, state.image.bytes];
  }
  const field = kind === "features" ? "features-input" : "tensor-input";
  let content;
  try {
    content = JSON.parse($(field).value);
  } catch (error) {
    throw new Error(`The ${kind} input is not valid JSON: ${error.message}`);
  }
  const request = {
    model_id: model.model_id,
    input_data: { format: kind, content },
    options: { top_k: topK() },
  };
  const body = new TextEncoder().encode(JSON.stringify(request));
  return ["/api/inference/execute", "application/json", body];
}

async function run() {
  const model = state.current;
  if (!model || state.busy) return;
  state.busy = true;
  $("run-button").disabled = true;
  clearResult();
  try {
    const [url, contentType, body] = buildRequest(model);
    const headers = { "Content-Type": contentType, Accept: "application/json" };
    if (model.licensed) {
      const provider = wallet();
      if (!provider) {
        showWalletStatus(model);
        setStatus("result-status", "Not sent: this licensed model needs a signed request (no wallet found).", "error");
        return;
      }
      setStatus("result-status", "Waiting for the wallet's signature…");
      Object.assign(headers, await signRequest(provider, { method: "POST", url, headers, body }));
    }
    setStatus("result-status", "Running…");
    const response = await fetch(url, { method: "POST", headers, body });
    if (!response.ok) {
      setStatus("result-status", await replyError(response), "error");
      return;
    }
    showResult(await response.json(), response.headers);
  } catch (error) {
    setStatus("result-status", error.message, "error");
  } finally {
    state.busy = false;
    $("run-button").disabled = !state.current || (inputKind(state.current) === "image" && !state.image);
  }
}

// --- result ----------------------------------------------------------------------------

function clearResult() {
  setStatus("result-status", "");
  $("predictions").replaceChildren();
  $("timings-body").replaceChildren();
  for (const id of ["timings", "cache-line", "raw-details"]) show(id, false);
}

function showResult(reply, headers) {
  setStatus("result-status", `Done: ${reply.model_id}`, "ok");
  const list = $("predictions");
  for (const prediction of reply.predictions || []) {
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.className = "class-name";
    const score = Number(prediction.confidence ?? prediction.score);
    name.textContent = prediction.class ?? prediction.label ?? JSON.stringify(prediction);
    item.append(name);
    if (Number.isFinite(score)) {
      const bar = document.createElement("meter");
      bar.min = 0;
      bar.max = 1;
      bar.value = Math.min(1, Math.max(0, score));
      const value = document.createElement("span");
      value.className = "confidence";
      value.textContent = `${(score * 100).toFixed(1)}%`;
      item.append(bar, value);
    }
    list.append(item);
  }
  const body = $("timings-body");
  for (const [stage, ms] of Object.entries(reply.metrics || {})) {
    const row = document.createElement("tr");
    row.dataset.stage = stage;
    const name = document.createElement("th");
    name.scope = "row";
    name.textContent = stage.replace(/_time_ms$/, "");
    const value = document.createElement("td");
    value.textContent = Number(ms).toFixed(2);
    row.append(name, value);
    body.append(row);
  }
  show("timings", body.children.length > 0);
  $("cache-status").textContent = headers.get("X-Cache") || reply.cache || "unknown";
  $("request-id").textContent = headers.get("X-Request-ID") || "";
  show("cache-line", true);
  $("raw-reply").textContent = JSON.stringify(reply, null, 2);
  show("raw-details", true);
}

// --- wiring ----------------------------------------------------------------------------

function start() {
  $("refresh-models").addEventListener("click", () => refreshModels());
  $("model-select").addEventListener("change", (event) => chooseModel(event.target.value));
  $("load-form").addEventListener("submit", loadModel);
  $("image-input").addEventListener("change", (event) => takeImage(event.target.files[0]));
  $("run-button").addEventListener("click", run);
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    takeImage(event.dataTransfer.files[0]);
  });
  refreshModels().catch((error) => setStatus("load-status", error.message, "error"));
}

start();
