// facenet-platform web page: browse and name people, fix their faces, search the collection by
// a face, identify a photo. Plain JS, no dependencies, no external assets; talks to ./v1/.
// The API key is asked for once and kept in sessionStorage (this tab only); thumbnails are
// fetched with it (they are personal data) and shown through object URLs.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "facenet_api_key";
const PAGE = 60;

// -- API ---------------------------------------------------------------------------------------

function apiKey() { return sessionStorage.getItem(KEY_STORE) || ""; }

function headers(extra) {
  const key = apiKey();
  return Object.assign(key ? { "X-API-Key": key } : {}, extra || {});
}

class ApiError extends Error {
  constructor(message, status, code) { super(message); this.status = status; this.code = code; }
}

async function api(method, path, { body, json, query } = {}) {
  let url = path;
  if (query) {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (Array.isArray(v)) v.forEach((x) => params.append(k, x));
      else if (v !== undefined && v !== null && v !== "") params.append(k, v);
    }
    const text = params.toString();
    if (text) url += "?" + text;
  }
  const init = { method, headers: headers() };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  const response = await fetch(url, init);
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) {
    const message = (data && data.error) || `HTTP ${response.status}`;
    if (response.status === 401) askForKey(message);
    throw new ApiError(message, response.status, data && data.code);
  }
  return data;
}

const enc = encodeURIComponent;

// -- status line -------------------------------------------------------------------------------

function setStatus(text, state) {
  const el = $("status");
  el.textContent = text;
  el.dataset.state = state || "idle";
}

async function action(label, fn) {
  setStatus(label + "…", "working");
  try {
    const result = await fn();
    return result;
  } catch (error) {
    setStatus(error.message, "error");
    return undefined;
  }
}

// -- thumbnails (fetched with the key, shown as object URLs, loaded when visible) ------------

const thumbCache = new Map();   // url -> Promise<objectURL>
const queue = [];
let active = 0;
const MAX_ACTIVE = 6;

function pump() {
  while (active < MAX_ACTIVE && queue.length) {
    const job = queue.shift();
    active++;
    fetch(job.url, { headers: headers() })
      .then((r) => (r.ok ? r.blob() : Promise.reject(new ApiError(`HTTP ${r.status}`, r.status))))
      .then((blob) => job.resolve(URL.createObjectURL(blob)), job.reject)
      .finally(() => { active--; pump(); });
  }
}

function thumb(url) {
  if (!thumbCache.has(url)) {
    const p = new Promise((resolve, reject) => { queue.push({ url, resolve, reject }); pump(); });
    p.catch(() => thumbCache.delete(url));
    thumbCache.set(url, p);
  }
  return thumbCache.get(url);
}

const observer = "IntersectionObserver" in window ? new IntersectionObserver((entries) => {
  for (const entry of entries) {
    if (entry.isIntersecting) { observer.unobserve(entry.target); show(entry.target); }
  }
}, { rootMargin: "300px" }) : null;

function show(img) {
  thumb(img.dataset.src).then((src) => { img.src = src; img.dataset.loaded = "1"; })
    .catch(() => { img.dataset.loaded = "error"; });
}

function lazyImage(url, alt) {
  const img = document.createElement("img");
  img.alt = alt || "";
  img.dataset.src = url;
  img.decoding = "async";
  if (observer) observer.observe(img); else show(img);
  return img;
}

const faceUrl = (fid, size) => `v1/faces/${enc(fid)}/thumbnail?size=${size || 128}`;
const photoUrl = (pid, size) => `v1/photos/${enc(pid)}/thumbnail?size=${size || 512}`;

// -- dialogs -----------------------------------------------------------------------------------

function openDialog(dialog) {
  if (!dialog.open) dialog.showModal();
}

function confirmAction(title, text, okLabel) {
  const dialog = $("confirm-dialog");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel || "Yes";
  dialog.returnValue = "";
  openDialog(dialog);
  $("confirm-cancel").focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

let keyWaiters = [];

function askForKey(message) {
  const dialog = $("key-dialog");
  if (message) dialog.querySelector(".meta").textContent =
    `${message}. The key is kept in this tab only (sessionStorage).`;
  if (!dialog.open) {  // never wipe what someone is typing
    $("apikey").value = apiKey();
    openDialog(dialog);
    $("apikey").focus();
  }
  return new Promise((resolve) => keyWaiters.push(resolve));
}

// A person picker: by name (search) or by face (covers of the biggest people).
function pickPerson(title, { allowNew = false, exclude = [] } = {}) {
  const dialog = $("pick-dialog");
  $("pick-title").textContent = title;
  const list = $("pick-list");
  const query = $("pick-query");
  query.value = "";
  dialog.returnValue = "";
  let chosen = null;
  async function fill() {
    const q = query.value.trim();
    const result = await api("GET", "v1/people", { query: { filter: "visible", q, limit: 40 } })
      .catch(() => ({ people: [] }));
    list.replaceChildren();
    if (allowNew) {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button"; b.dataset.person = "new"; b.textContent = "+ A new person";
      b.addEventListener("click", () => { chosen = "new"; dialog.close("picked"); });
      li.append(b); list.append(li);
    }
    for (const p of result.people.filter((p) => !exclude.includes(p.id))) {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button"; b.dataset.person = p.id;
      if (p.cover) b.append(lazyImage(faceUrl(p.cover, 64), ""));
      const label = document.createElement("span");
      label.textContent = `${p.name || "unnamed"} · ${p.faces} faces`;
      b.append(label);
      b.addEventListener("click", () => { chosen = p; dialog.close("picked"); });
      li.append(b); list.append(li);
    }
  }
  query.oninput = debounce(fill, 200);
  fill();
  openDialog(dialog);
  query.focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "picked" ? chosen : null),
                            { once: true });
  });
}

function debounce(fn, ms) {
  let t = null;
  return (...args) => { clearTimeout(t); t = setTimeout(() => fn(...args), ms); };
}

function viewPhoto(pid) {
  const img = $("photo-large");
  img.removeAttribute("src");
  thumb(photoUrl(pid, 1024)).then((src) => { img.src = src; });
  openDialog($("photo-dialog"));
}

// -- people grid -------------------------------------------------------------------------------

const grid = { unnamed: 0, named: 0, hidden: 0 };

function label(p) { return p.name || "unnamed"; }

function personCard(p) {
  const li = document.createElement("li");
  li.className = "person-card" + (p.hidden ? " hidden-person" : "");
  li.dataset.personId = p.id;
  const link = document.createElement("a");
  link.className = "face-link";
  link.href = `#/person/${enc(p.id)}`;
  link.setAttribute("aria-label", `${label(p)}: ${p.faces} faces, ${p.photos} photos`);
  if (p.cover) link.append(lazyImage(faceUrl(p.cover, 256), label(p)));
  const body = document.createElement("div");
  body.className = "body";
  const input = document.createElement("input");
  input.className = "name-input";
  input.placeholder = "unnamed";
  input.value = p.name || "";
  input.setAttribute("aria-label", `Name of ${p.id} (type a name, then Enter)`);
  input.maxLength = 200;
  input.addEventListener("keydown", async (event) => {
    if (event.key === "Escape") { input.value = p.name || ""; input.blur(); }
    if (event.key !== "Enter") return;
    event.preventDefault();
    const name = input.value.trim();
    if (!name || name === p.name) return;
    const done = await rename(p.id, name);
    if (done) { p.name = name; li.dataset.named = "1"; }
  });
  const meta = document.createElement("div");
  meta.className = "meta counts";
  meta.textContent = `${p.faces} faces · ${p.photos} photos`;
  body.append(input, meta);
  li.append(link, body);
  return li;
}

async function rename(pid, name) {
  const ok = await action(`Naming ${pid}`, () => api("POST", `v1/people/${enc(pid)}/name`,
                                                     { json: { name } }));
  if (ok === undefined) return false;
  setStatus(ok.event ? `${ok.event.summary}.` : `${name}: unchanged.`, "done");
  return true;
}

async function loadGrid(which, append) {
  const list = $(`${which}-grid`);
  const q = $("people-query").value.trim();
  if (!append) { grid[which] = 0; list.replaceChildren(); }
  const result = await api("GET", "v1/people", {
    query: { filter: which, offset: grid[which], limit: PAGE, q } });
  grid[which] += result.people.length;
  $(`${which}-count`).textContent = `(${result.total})`;
  for (const p of result.people) list.append(personCard(p));
  const more = $(`${which}-more`);
  if (more) more.hidden = grid[which] >= result.total;
}

async function showPeople() {
  const jobs = [loadGrid("unnamed"), loadGrid("named")];
  $("hidden-section").hidden = !$("show-hidden").checked;
  if ($("show-hidden").checked) jobs.push(loadGrid("hidden"));
  try {
    await Promise.all(jobs);
    if ($("status").dataset.state === "working") setStatus("", "idle");
  } catch (error) {
    setStatus(error.message, "error");
  }
}

// -- one person --------------------------------------------------------------------------------

const person = { id: null, data: null, faces: [], selected: new Set(), photos: 0 };
let keepStatus = false;

function faceTile(face) {
  const li = document.createElement("li");
  const b = document.createElement("button");
  b.type = "button";
  b.className = "face-tile";
  b.dataset.faceId = face.face_id;
  b.setAttribute("aria-pressed", person.selected.has(face.face_id) ? "true" : "false");
  b.setAttribute("aria-label", `face ${face.face_id}, quality ${face.quality.toFixed(2)}` +
                 (face.pinned ? ", pinned" : ""));
  b.append(lazyImage(faceUrl(face.face_id, 128), ""));
  const q = document.createElement("span");
  q.className = "quality";
  q.textContent = face.quality.toFixed(2) + (face.pinned ? " · pinned" : "");
  b.append(q);
  b.addEventListener("click", () => {
    if (person.selected.has(face.face_id)) person.selected.delete(face.face_id);
    else person.selected.add(face.face_id);
    b.setAttribute("aria-pressed", person.selected.has(face.face_id) ? "true" : "false");
    updateSelection();
  });
  li.append(b);
  return li;
}

function updateSelection() {
  const n = person.selected.size;
  $("selection-count").textContent = n ? `${n} face(s) selected` : "Select faces to correct them.";
  $("reject-button").disabled = n === 0;
  $("move-button").disabled = n === 0;
}

function photoTile(photo, caption) {
  const li = document.createElement("li");
  const b = document.createElement("button");
  b.type = "button";
  b.className = "photo-tile";
  b.dataset.photoId = photo.photo_id;
  b.setAttribute("aria-label", `photo ${photo.photo_id}` + (caption ? `: ${caption}` : ""));
  b.append(lazyImage(photoUrl(photo.photo_id, 512), ""));
  if (caption) {
    const span = document.createElement("span");
    span.className = "label";
    span.textContent = caption;
    b.append(span);
  }
  b.addEventListener("click", () => viewPhoto(photo.photo_id));
  li.append(b);
  return li;
}

async function loadPerson(pid, { keepSelection = false } = {}) {
  const data = await api("GET", `v1/people/${enc(pid)}`, { query: { limit: 200 } });
  person.id = data.id;
  person.data = data;
  if (!keepSelection) person.selected.clear();
  $("person-name").value = data.name || "";
  $("person-name").dataset.current = data.name || "";
  $("person-meta").textContent = `${data.id} · ${data.faces} faces · ${data.photos} photos` +
    (data.hidden ? " · hidden" : "") + (data.rejected_faces ? ` · ${data.rejected_faces} rejected` : "");
  $("hide-button").textContent = data.hidden ? "Unhide" : "Hide";
  const cover = $("person-cover");
  cover.removeAttribute("src");
  if (data.cover) thumb(faceUrl(data.cover, 256)).then((src) => { cover.src = src; });
  cover.alt = label(data);
  const list = $("faces-grid");
  list.replaceChildren();
  person.faces = data.face_page.faces;
  for (const f of person.faces) list.append(faceTile(f));
  $("faces-count").textContent = `(${data.face_page.total})`;
  $("faces-more").hidden = data.face_page.faces.length >= data.face_page.total;
  updateSelection();
  person.photos = 0;
  $("photos-grid").replaceChildren();
  await loadPhotos(false);
}

async function loadPhotos(append) {
  if (!append) { person.photos = 0; $("photos-grid").replaceChildren(); }
  const data = await api("GET", `v1/people/${enc(person.id)}/photos`,
                         { query: { offset: person.photos, limit: PAGE } });
  person.photos += data.photos.length;
  for (const p of data.photos) $("photos-grid").append(photoTile(p));
  $("photos-count").textContent = `(${data.total})`;
  $("photos-more").hidden = person.photos >= data.total;
}

async function showPerson(pid) {
  try {
    await loadPerson(pid);
    if ($("status").dataset.state === "working") setStatus("", "idle");
  } catch (error) {
    setStatus(error.message, "error");
  }
}

async function afterDecision(result, fallbackText) {
  if (result === undefined) return;
  setStatus(result.event ? `${result.event.summary}.` : fallbackText, "done");
  if (person.id) {
    try { await loadPerson(person.id); } catch (error) {
      // the person is gone (merged away): go to the grid, keeping the message
      keepStatus = true;
      location.hash = "#/people";
    }
  }
}

async function rejectSelected() {
  const faces = [...person.selected];
  const ok = await confirmAction("Not this person?",
    `${faces.length} face(s) will leave ${label(person.data)} and never come back to them.`,
    "Remove from this person");
  if (!ok) return;
  const result = await action("Removing faces",
    () => api("POST", "v1/faces/reject", { json: { faces } }));
  await afterDecision(result, "Nothing changed.");
}

async function moveSelected() {
  const faces = [...person.selected];
  const target = await pickPerson(`Move ${faces.length} face(s) to…`,
                                  { allowNew: true, exclude: [person.id] });
  if (!target) return;
  const to = target === "new" ? "new" : target.id;
  const name = target === "new" ? "a new person" : label(target);
  const ok = await confirmAction("Move faces?", `${faces.length} face(s) will move to ${name}.`,
                                 "Move");
  if (!ok) return;
  const result = await action("Moving faces",
    () => api("POST", "v1/faces/move", { json: { faces, to } }));
  await afterDecision(result, "Nothing changed.");
}

async function mergeWith() {
  const other = await pickPerson(`Merge ${label(person.data)} with…`, { exclude: [person.id] });
  if (!other) return;
  const ok = await confirmAction("Merge these people?",
    `${label(other)} (${other.faces} faces) will become part of ${label(person.data)} ` +
    `(${person.data.faces} faces). Undo can split them again.`, "Merge");
  if (!ok) return;
  const result = await action("Merging",
    () => api("POST", `v1/people/${enc(person.id)}/merge`, { json: { people: [other.id] } }));
  await afterDecision(result, "Nothing changed.");
}

async function toggleHidden() {
  const hide = !person.data.hidden;
  if (hide) {
    const ok = await confirmAction("Hide this person?",
      `${label(person.data)} will no longer be shown or answered by identify.`, "Hide");
    if (!ok) return;
  }
  const result = await action(hide ? "Hiding" : "Showing",
    () => api("POST", `v1/people/${enc(person.id)}/${hide ? "hide" : "unhide"}`));
  await afterDecision(result, "Nothing changed.");
}

async function undoLast() {
  const result = await action("Undoing", () => api("POST", "v1/people/undo", { json: {} }));
  await afterDecision(result, "Nothing to undo.");
}

// -- search by face ----------------------------------------------------------------------------

const search = { file: null, bitmap: null, faces: [], face: null };

function drawBoxes(canvas, bitmap, faces, labelOf, colorOf) {
  if (!bitmap) { canvas.classList.remove("shown"); return; }
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0);
  const shown = Math.min(bitmap.width, canvas.parentElement.clientWidth || bitmap.width);
  const scale = bitmap.width / Math.max(shown, 1);
  ctx.lineWidth = 2.5 * scale;
  ctx.font = `${Math.round(15 * scale)}px system-ui, sans-serif`;
  ctx.textBaseline = "bottom";
  faces.forEach((face, i) => {
    const [x1, y1, x2, y2] = face.box;
    const color = colorOf(face, i);
    ctx.strokeStyle = color;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const text = labelOf(face, i);
    const pad = 4 * scale, height = 20 * scale;
    const width = ctx.measureText(text).width + 2 * pad;
    const top = y1 - height < 0 ? y2 + height : y1;
    ctx.fillStyle = color;
    ctx.fillRect(x1 - ctx.lineWidth / 2, top - height, width, height);
    ctx.fillStyle = "#111";
    ctx.fillText(text, x1 - ctx.lineWidth / 2 + pad, top - 4 * scale);
  });
  canvas.classList.add("shown");
}

async function readBitmap(file) {
  try { return await createImageBitmap(file, { imageOrientation: "from-image" }); }
  catch (error) { return null; }
}

async function runSearch(faceIndex) {
  if (!search.file) return;
  const form = new FormData();
  form.append("file", search.file, search.file.name || "photo.jpg");
  const result = await action("Searching the collection", () => api("POST", "v1/search/face", {
    body: form, query: { face: faceIndex, top_k: 100 } }));
  if (result === undefined) return;
  search.faces = result.faces;
  search.face = result.face;
  $("search-query").hidden = false;
  drawBoxes($("search-canvas"), search.bitmap, search.faces, (f, i) => `${i + 1}`,
            (f, i) => (i === search.face ? "#2563eb" : "#f59e0b"));
  const picks = $("search-faces");
  picks.replaceChildren();
  search.faces.forEach((f, i) => {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = `Face ${i + 1}`;
    b.dataset.face = String(i);
    b.setAttribute("aria-pressed", i === search.face ? "true" : "false");
    b.addEventListener("click", () => runSearch(i));
    li.append(b);
    picks.append(li);
  });
  const list = $("search-results");
  list.replaceChildren();
  $("search-results-title").hidden = false;
  $("search-count").textContent = `(${result.photos.length})`;
  for (const hit of result.photos) {
    list.append(photoTile(hit, `${hit.name || (hit.person ? "unnamed " + hit.person : "nobody")}` +
                               ` · ${hit.distance.toFixed(2)}`));
  }
  setStatus(`${result.photos.length} photo(s) contain face ${result.face + 1}.`, "done");
}

async function chooseSearch(file) {
  if (!file) return;
  search.file = file;
  search.bitmap = await readBitmap(file);
  await runSearch(null);
}

// -- identify ----------------------------------------------------------------------------------

const ident = { file: null, bitmap: null, faces: [] };

function renderIdentified() {
  const list = $("faces");
  list.replaceChildren();
  ident.faces.forEach((face, i) => {
    const li = document.createElement("li");
    li.className = "face";
    li.dataset.decision = face.decision;
    const name = document.createElement("span");
    name.className = "decision" + (face.decision === "unknown" ? " unknown" : "");
    name.textContent = face.decision;
    li.append(name);
    if (face.person) {
      const link = document.createElement("a");
      link.href = `#/person/${enc(face.person)}`;
      link.textContent = " (see person)";
      li.append(link);
    }
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = face.reason ? `reason: ${face.reason}` : "";
    // Enroll this face under a name (admin key): it names the person at once.
    const form = document.createElement("form");
    form.className = "enroll";
    const input = document.createElement("input");
    input.className = "enroll-name";
    input.placeholder = "name";
    input.required = true;
    input.maxLength = 200;
    input.setAttribute("aria-label", `Enroll face ${i + 1} as`);
    input.value = face.decision === "unknown" ? "" : face.decision;
    const button = document.createElement("button");
    button.type = "submit";
    button.textContent = "Enroll this face";
    form.append(input, button);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      enrollFace(i, input.value.trim());
    });
    li.append(meta, form);
    list.append(li);
  });
}

function faceCrop(face) {
  // The face with a wide margin, so that the detector finds it again as the main face.
  const bitmap = ident.bitmap;
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
  const blob = ident.faces.length > 1 && ident.bitmap ? await faceCrop(ident.faces[index])
                                                       : ident.file;
  const form = new FormData();
  form.append("file", blob, `face-${index + 1}.jpg`);
  const result = await action(`Enrolling face ${index + 1} as ${name}`,
    () => api("POST", `v1/identities/${enc(name)}/faces`, { body: form }));
  if (result === undefined) return;
  await identify();
  await loadIdentities();
  if ($("status").dataset.state === "done") {
    setStatus(`${name}: ${result.faces} face(s) enrolled` +
              (result.added ? "" : " (this photo was already enrolled)") + ". " +
              $("status").textContent, "done");
  }
}

async function loadIdentities() {
  const list = $("identities");
  let result;
  try { result = await api("GET", "v1/identities"); } catch (error) { return; }
  list.replaceChildren();
  $("identities-count").textContent = `(${result.count})`;
  for (const who of result.identities) {
    const li = document.createElement("li");
    li.dataset.name = who.name;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "quiet small";
    remove.textContent = "forget enrolled photos";
    remove.setAttribute("aria-label", `forget the enrolled photos of ${who.name}`);
    remove.addEventListener("click", async () => {
      const ok = await confirmAction(`Forget the enrolled photos of ${who.name}?`,
        `The photos enrolled under ${who.name} are deleted from the gallery; the person and ` +
        "their collection faces stay (hide the person to stop identify answering them).",
        "Forget");
      if (!ok) return;
      const done = await action(`Forgetting ${who.name}`,
        () => api("DELETE", `v1/identities/${enc(who.name)}`));
      if (done !== undefined) { setStatus(`${who.name} forgotten.`, "done"); loadIdentities(); }
    });
    li.append(`${who.name} `, Object.assign(document.createElement("span"),
      { className: "meta", textContent: `${who.faces} face(s) ` }), remove);
    list.append(li);
  }
}

async function identify() {
  if (!ident.file) return;
  const form = new FormData();
  form.append("file", ident.file, ident.file.name || "photo.jpg");
  const result = await action("Looking for faces", () => api("POST", "v1/identify",
                                                              { body: form }));
  if (result === undefined) { ident.faces = []; renderIdentified(); return; }
  ident.faces = result.faces;
  drawBoxes($("canvas"), ident.bitmap, ident.faces, (f, i) => `${i + 1}. ${f.decision}`,
            (f) => (f.decision === "unknown" ? "#f59e0b" : "#22c55e"));
  renderIdentified();
  const known = result.faces.filter((f) => f.decision !== "unknown").length;
  setStatus(`${result.faces.length} face(s), ${known} recognised.`, "done");
}

async function chooseIdentify(file) {
  if (!file) return;
  ident.file = file;
  ident.bitmap = await readBitmap(file);
  await identify();
}

// -- routing and wiring ------------------------------------------------------------------------

function route(load = true) {
  const hash = location.hash || "#/people";
  const [, view, arg] = hash.match(/^#\/([a-z]+)\/?(.*)$/) || [null, "people", ""];
  for (const name of ["people", "person", "search", "identify"]) {
    $(`${name}-view`).hidden = name !== view;
  }
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === (view === "person" ? "people" : view)) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (!["people", "person", "search", "identify"].includes(view)) {
    location.hash = "#/people";
    return;
  }
  if (!load) return;
  if (view === "person" && arg) showPerson(decodeURIComponent(arg));
  else if (view === "people") showPeople();
  else if (view === "identify") loadIdentities();
}

function wireDrop(dropId, inputId, onFile) {
  const drop = $(dropId);
  const input = $(inputId);
  input.addEventListener("change", (event) => onFile(event.target.files[0]));
  drop.addEventListener("click", (event) => { if (event.target === drop) input.click(); });
  drop.addEventListener("keydown", (event) => {
    if ((event.key === "Enter" || event.key === " ") && event.target === drop) {
      event.preventDefault(); input.click();
    }
  });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    onFile(event.dataTransfer.files[0]);
  });
}

window.addEventListener("DOMContentLoaded", () => {
  $("key-button").addEventListener("click", () => askForKey());
  $("key-form").addEventListener("submit", () => {
    sessionStorage.setItem(KEY_STORE, $("apikey").value.trim());
    thumbCache.clear();
    const waiters = keyWaiters; keyWaiters = [];
    waiters.forEach((w) => w());
    setStatus("Key saved for this tab.", "done");
    route();
  });
  for (const b of document.querySelectorAll("[data-close]")) {
    b.addEventListener("click", () => b.closest("dialog").close("cancel"));
  }
  $("people-query").addEventListener("input", debounce(showPeople, 250));
  $("show-hidden").addEventListener("change", showPeople);
  $("unnamed-more").addEventListener("click", () => loadGrid("unnamed", true));
  $("named-more").addEventListener("click", () => loadGrid("named", true));
  $("rename-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = $("person-name").value.trim();
    if (!name || name === $("person-name").dataset.current) return;
    if (await rename(person.id, name)) await loadPerson(person.id);
  });
  $("merge-button").addEventListener("click", mergeWith);
  $("hide-button").addEventListener("click", toggleHidden);
  $("undo-button").addEventListener("click", undoLast);
  $("reject-button").addEventListener("click", rejectSelected);
  $("move-button").addEventListener("click", moveSelected);
  $("select-all").addEventListener("click", () => {
    const all = person.faces.every((f) => person.selected.has(f.face_id));
    person.faces.forEach((f) => (all ? person.selected.delete(f.face_id) : person.selected.add(f.face_id)));
    for (const b of document.querySelectorAll("#faces-grid .face-tile")) {
      b.setAttribute("aria-pressed", person.selected.has(b.dataset.faceId) ? "true" : "false");
    }
    updateSelection();
  });
  $("faces-more").addEventListener("click", async () => {
    const data = await api("GET", `v1/people/${enc(person.id)}`,
                           { query: { offset: person.faces.length, limit: 200 } });
    person.faces.push(...data.face_page.faces);
    for (const f of data.face_page.faces) $("faces-grid").append(faceTile(f));
    $("faces-more").hidden = person.faces.length >= data.face_page.total;
  });
  $("photos-more").addEventListener("click", () => loadPhotos(true));
  wireDrop("search-drop", "search-file", chooseSearch);
  wireDrop("drop", "file", chooseIdentify);
  window.addEventListener("hashchange", () => {
    if (!keepStatus) setStatus("", "idle");  // a message belongs to the view it was made on
    keepStatus = false;
    route();
  });
  // Without a key nothing can be shown: ask first (saving it shows the page).
  route(Boolean(apiKey()));
  if (!apiKey()) askForKey("Enter the API key the service was started with");
});
