// facenet-platform web page: pick or drop a photo, see a box and a name on each face, enroll a
// face under a name. Plain JS, no dependencies; talks to the JSON API under ./v1/.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { file: null, bitmap: null, faces: [] };
const KEY_STORE = "facenet_api_key";

function headers() {
  const key = $("apikey").value.trim();
  return key ? { "X-API-Key": key } : {};
}

function setStatus(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.dataset.state = kind;
}

async function api(method, path, body) {
  const response = await fetch(path, { method, body, headers: headers() });
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    const message = (data && data.error) || `HTTP ${response.status}`;
    const error = new Error(response.status === 401 ? `${message} (enter the API key above)` : message);
    error.status = response.status;
    throw error;
  }
  return data;
}

function photoForm(blob, filename) {
  const form = new FormData();
  form.append("file", blob, filename);
  return form;
}

// -- drawing ---------------------------------------------------------------------------------

function labelColor(decision) {
  return decision === "unknown" ? "#f59e0b" : "#22c55e";
}

function draw() {
  const canvas = $("canvas");
  const bitmap = state.bitmap;
  if (!bitmap) return;
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0);
  // Line width and text in screen pixels, whatever the photo's size (the canvas is scaled by CSS).
  const shown = Math.min(640, canvas.parentElement.clientWidth || 640);
  const scale = bitmap.width / shown;
  ctx.lineWidth = 2.5 * scale;
  ctx.font = `${Math.round(15 * scale)}px system-ui, sans-serif`;
  ctx.textBaseline = "bottom";
  state.faces.forEach((face, i) => {
    const [x1, y1, x2, y2] = face.box;
    const color = labelColor(face.decision);
    ctx.strokeStyle = color;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const text = `${i + 1}. ${face.decision}`;
    const pad = 4 * scale;
    const width = ctx.measureText(text).width + 2 * pad;
    const height = 20 * scale;
    const top = y1 - height < 0 ? y2 + height : y1;
    ctx.fillStyle = color;
    const left = x1 - ctx.lineWidth / 2;
    ctx.fillRect(left, top - height, width, height);
    ctx.fillStyle = "#111";
    ctx.fillText(text, left + pad, top - 4 * scale);
  });
  canvas.classList.add("shown");
}

// -- faces list --------------------------------------------------------------------------------

function renderFaces() {
  const list = $("faces");
  list.replaceChildren();
  $("faces-empty").textContent = state.bitmap && state.faces.length === 0 ? "No face found." : "";
  state.faces.forEach((face, i) => {
    const li = document.createElement("li");
    li.className = "face";
    li.dataset.decision = face.decision;
    const name = document.createElement("span");
    name.className = "decision" + (face.decision === "unknown" ? " unknown" : "");
    name.textContent = face.decision;
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = face.matches.length
      ? "nearest: " + face.matches.slice(0, 3).map((m) => `${m.name} ${m.distance.toFixed(3)}`).join(", ")
      : "gallery is empty";
    const form = document.createElement("form");
    form.className = "enroll";
    const input = document.createElement("input");
    input.className = "enroll-name";
    input.placeholder = "name";
    input.required = true;
    input.value = face.decision === "unknown" ? "" : face.decision;
    const button = document.createElement("button");
    button.type = "submit";
    button.textContent = "Enroll this face";
    form.append(input, button);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      enrollFace(i, input.value.trim());
    });
    li.append(`${i + 1}. `, name, meta, form);
    list.append(li);
  });
}

// -- actions -----------------------------------------------------------------------------------

async function identify() {
  if (!state.file) return;
  setStatus("Looking for faces…", "working");
  try {
    const result = await api("POST", "v1/identify", photoForm(state.file, state.file.name || "photo"));
    state.faces = result.faces;
    draw();
    renderFaces();
    const known = result.faces.filter((f) => f.decision !== "unknown").length;
    setStatus(`${result.faces.length} face(s), ${known} recognised.`, "done");
  } catch (error) {
    state.faces = [];
    draw();
    renderFaces();
    setStatus(error.message, "error");
  }
}

function faceCrop(face) {
  // The face with a wide margin, so that the detector finds it again as the main face.
  const bitmap = state.bitmap;
  const [x1, y1, x2, y2] = face.box;
  const w = x2 - x1, h = y2 - y1;
  const left = Math.max(0, Math.floor(x1 - 0.6 * w)), top = Math.max(0, Math.floor(y1 - 0.6 * h));
  const right = Math.min(bitmap.width, Math.ceil(x2 + 0.6 * w));
  const bottom = Math.min(bitmap.height, Math.ceil(y2 + 0.6 * h));
  const canvas = document.createElement("canvas");
  canvas.width = right - left;
  canvas.height = bottom - top;
  canvas.getContext("2d").drawImage(bitmap, left, top, canvas.width, canvas.height,
                                    0, 0, canvas.width, canvas.height);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.95));
}

async function enrollFace(index, name) {
  if (!name) return;
  setStatus(`Enrolling face ${index + 1} as ${name}…`, "working");
  try {
    const blob = state.faces.length > 1 ? await faceCrop(state.faces[index]) : state.file;
    const result = await api("POST", `v1/identities/${encodeURIComponent(name)}/faces`,
                             photoForm(blob, `face-${index + 1}.jpg`));
    await loadIdentities();
    await identify();
    if ($("status").dataset.state === "done") {
      setStatus(`${name}: ${result.faces} face(s) enrolled` +
                (result.added ? "" : " (this photo was already enrolled)") + ". " +
                $("status").textContent, "done");
    }
  } catch (error) {
    setStatus(error.message, "error");
  }
}

async function loadIdentities() {
  const list = $("identities");
  try {
    const result = await api("GET", "v1/identities");
    list.replaceChildren();
    $("identities-count").textContent = `(${result.count})`;
    for (const person of result.identities) {
      const li = document.createElement("li");
      li.dataset.name = person.name;
      const remove = document.createElement("button");
      remove.textContent = "remove";
      remove.title = `forget ${person.name}`;
      remove.addEventListener("click", async () => {
        if (!confirm(`Forget ${person.name}?`)) return;
        try {
          await api("DELETE", `v1/identities/${encodeURIComponent(person.name)}`);
          await loadIdentities();
          await identify();
        } catch (error) { setStatus(error.message, "error"); }
      });
      li.append(`${person.name} `, Object.assign(document.createElement("span"),
        { className: "meta", textContent: `${person.faces} face(s)` }), remove);
      list.append(li);
    }
  } catch (error) {
    $("identities-count").textContent = error.status === 401 ? "(API key needed)" : "";
  }
}

async function choose(file) {
  if (!file) return;
  state.file = file;
  state.faces = [];
  try {
    state.bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch (error) {
    state.bitmap = null;
    $("canvas").classList.remove("shown");
    // Still ask the service: it says precisely what is wrong with the file.
  }
  draw();
  await identify();
}

// -- wiring ------------------------------------------------------------------------------------

window.addEventListener("DOMContentLoaded", () => {
  const keyInput = $("apikey");
  keyInput.value = localStorage.getItem(KEY_STORE) || "";
  keyInput.addEventListener("change", () => {
    localStorage.setItem(KEY_STORE, keyInput.value.trim());
    loadIdentities();
  });
  $("file").addEventListener("change", (event) => choose(event.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("click", (event) => { if (event.target === drop) $("file").click(); });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    choose(event.dataTransfer.files[0]);
  });
  loadIdentities();
});
