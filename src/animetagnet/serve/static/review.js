// AnimeTagNet review page: a folder's captions beside the model's tags; filters, one-image view, keyboard, bulk edits.
// Plain JS, no build step and no network beyond this server. Images are addressed by id only.
"use strict";

const PAGE = 60;
const state = {ids: [], total: 0, offset: 0, items: [], gridCursor: 0, pos: -1, item: null, cursor: 0,
               completions: [], compCursor: -1};

async function api(path, options = {}) {
  const opts = {...options};
  if (opts.json !== undefined) {
    opts.method = opts.method || "POST";
    opts.headers = {"Content-Type": "application/json"};
    opts.body = JSON.stringify(opts.json);
    delete opts.json;
  }
  const resp = await fetch(path, opts);
  let body = null;
  try { body = await resp.json(); } catch (_) { /* not JSON */ }
  if (!resp.ok) {
    const err = new Error(body && body.error ? body.error.message : `the server answered ${resp.status}`);
    err.status = resp.status;
    err.code = body && body.error ? body.error.code : null;
    err.details = body && body.error ? body.error.details : null;
    throw err;
  }
  return body;
}

function say(text, kind = "info") {
  $("message").replaceChildren(text ? el("p", {class: kind === "error" ? "banner" : "note", text}) : "");
}

function filterParams() {
  const p = new URLSearchParams();
  if ($("f-tag").value.trim()) p.set("tag", $("f-tag").value.trim());
  if ($("f-missing").value.trim()) p.set("missing", $("f-missing").value.trim());
  if ($("f-disagree").checked) p.set("disagree", "true");
  if ($("f-low").checked) p.set("low", $("f-low-value").value);
  if ($("f-problems").checked) p.set("problems", "true");
  return p;
}

function filterBody() {
  const f = {};
  for (const [k, v] of filterParams()) f[k] = (v === "true") ? true : (k === "low" ? parseFloat(v) : v);
  return f;
}

// --- the grid --------------------------------------------------------------------
async function loadGrid() {
  const p = filterParams();
  p.set("sort", $("f-sort").value);
  if ($("f-desc").checked) p.set("descending", "true");
  p.set("offset", state.offset);
  p.set("limit", PAGE);
  let body;
  try { body = await api(`/v1/review/items?${p}`); } catch (err) { say(err.message, "error"); return; }
  state.ids = body.ids; state.total = body.total; state.items = body.items;
  state.gridCursor = Math.min(state.gridCursor, Math.max(0, body.items.length - 1));
  renderGrid();
  $("bulk-count").textContent = String(body.total);
  loadFreq();
  loadStatus();
}

function tile(it, i) {
  const img = el("img", {src: `/v1/review/items/${it.id}/thumb`, alt: it.name, loading: "lazy"});
  const chips = el("div", {class: "chips"});
  for (const t of it.tags.slice(0, 10)) chips.append(el("span", {class: "chip", "data-tag": t, text: t}));
  if (it.tags.length > 10) chips.append(el("span", {class: "chip more", text: `+${it.tags.length - 10}`}));
  const badges = el("div", {class: "badges"});
  if (it.disagreement) badges.append(el("span", {class: "badge disagree", title: "tags where model and caption differ",
                                                  text: `Δ ${it.disagreement}`}));
  if (it.problem) badges.append(el("span", {class: "badge problem", title: it.problem, text: it.problem}));
  const meta = el("div", {class: "meta"}, el("div", {class: "fname", title: it.name, text: it.name}), badges, chips);
  const t = el("div", {class: `tile${i === state.gridCursor ? " cursor" : ""}`, "data-id": String(it.id), tabindex: "-1"},
               img, meta);
  t.addEventListener("click", () => openItem(state.offset + i));
  return t;
}

function renderGrid() {
  const grid = $("grid");
  grid.replaceChildren();
  if (!state.items.length) grid.append(el("p", {class: "none", text: "No image matches these filters."}));
  state.items.forEach((it, i) => grid.append(tile(it, i)));
  const pages = Math.max(1, Math.ceil(state.total / PAGE));
  $("page").textContent = `page ${Math.floor(state.offset / PAGE) + 1} of ${pages} · ${state.total} image(s)`;
  $("prev-page").disabled = state.offset === 0;
  $("next-page").disabled = state.offset + PAGE >= state.total;
}

function moveGridCursor(delta) {
  const n = state.items.length;
  if (!n) return;
  state.gridCursor = Math.max(0, Math.min(n - 1, state.gridCursor + delta));
  document.querySelectorAll("#grid .tile").forEach((t, i) => t.classList.toggle("cursor", i === state.gridCursor));
  const cur = document.querySelectorAll("#grid .tile")[state.gridCursor];
  if (cur && cur.scrollIntoView) cur.scrollIntoView({block: "nearest"});
}

async function loadFreq() {
  let body;
  try { body = await api("/v1/review/tags?limit=300"); } catch (_) { return; }
  const rows = body.tags.map((t) => {
    const a = el("a", {href: "#", class: `cat-${t.category || "general"}`, "data-tag": t.tag, title: `filter: has ${t.tag}`,
                       text: t.tag});
    a.addEventListener("click", (e) => { e.preventDefault(); $("f-tag").value = t.tag; state.offset = 0; loadGrid(); });
    return el("tr", {"data-tag": t.tag}, el("td", {}, a), el("td", {class: "count", text: String(t.count)}),
              el("td", {class: "count", text: String(t.model_count)}));
  });
  $("freq").replaceChildren(...rows);
}

async function loadStatus() {
  let s;
  try { s = await api("/v1/review/status"); } catch (_) { return; }
  const sugg = s.suggestions.running ? ` · model suggestions ${s.suggestions.done}/${s.suggestions.total}` :
    (s.suggestions.error ? ` · suggestions failed: ${s.suggestions.error}` : "");
  $("status").textContent = `${s.folder}: ${s.images} images · ${s.model || "no model"}${sugg}`;
  $("undo").disabled = !s.undo;
  $("redo").disabled = !s.redo;
  if (s.suggestions.running) setTimeout(loadStatus, 1500);
}

// --- one image ---------------------------------------------------------------------
function viewerOpen() { return !$("viewer").hidden; }

async function openItem(pos) {
  if (pos < 0 || pos >= state.ids.length) return;
  state.pos = pos;
  let item;
  try { item = await api(`/v1/review/items/${state.ids[pos]}`); } catch (err) { say(err.message, "error"); return; }
  state.cursor = 0;
  $("conflict").replaceChildren();
  showItem(item);
  $("grid-view").hidden = true;
  $("viewer").hidden = false;
}

function closeViewer() {
  $("viewer").hidden = true;
  $("grid-view").hidden = false;
  state.item = null;
  if (state.pos >= 0) {
    state.offset = Math.floor(state.pos / PAGE) * PAGE;
    state.gridCursor = state.pos - state.offset;
  }
  loadGrid();
}

// The reviewer's decisions: tags the model selects that the caption lacks, then caption tags the model does not select.
function disagreements(item) {
  // Already decided ones (a rejected suggestion, an accepted caption tag) are skipped.
  const modelOnly = item.model.filter((m) => m.mark === "model" && m.verdict !== "reject")
    .map((m) => ({tag: m.tag, where: "model", m}));
  const captionOnly = item.caption.filter((c) => c.mark === "caption" && c.verdict !== "accept")
    .map((c) => ({tag: c.tag, where: "caption", c}));
  return modelOnly.concat(captionOnly);
}

function pct(c) { return c === null || c === undefined ? "—" : `${(c * 100).toFixed(0)}%`; }

function showItem(item) {
  state.item = item;
  const list = disagreements(item);
  state.cursor = Math.max(0, Math.min(state.cursor, list.length - 1));
  const current = list[state.cursor];
  $("v-image").src = `/v1/review/items/${item.id}/image`;
  $("v-image").alt = item.name;
  $("v-name").textContent = item.name;
  $("position").textContent = `${state.pos + 1} / ${state.ids.length}`;
  const problem = $("v-problem");
  problem.hidden = !item.problem;
  problem.textContent = item.problem || "";
  $("v-caption-count").textContent = `${item.caption.length} tag(s)`;
  const cap = $("v-caption");
  cap.replaceChildren();
  item.caption.forEach((c, i) => {
    const li = el("li", {class: `rtag ${c.mark}${current && current.where === "caption" && current.tag === c.tag ? " cursor" : ""}`,
                         "data-tag": c.tag, "data-mark": c.mark},
                  el("span", {class: `name cat-${c.category || "general"}`, text: c.text}),
                  el("span", {class: "pct", title: "model confidence", text: pct(c.confidence)}),
                  el("span", {class: "mark", text: c.mark === "both" ? "both" : "caption only"}));
    const up = el("button", {type: "button", class: "secondary small", title: "move up", text: "↑"});
    up.disabled = i === 0;
    up.addEventListener("click", () => edit({op: "move", tag: c.tag, index: i - 1}));
    const down = el("button", {type: "button", class: "secondary small", title: "move down", text: "↓"});
    down.disabled = i === item.caption.length - 1;
    down.addEventListener("click", () => edit({op: "move", tag: c.tag, index: i + 1}));
    const rm = el("button", {type: "button", class: "secondary small remove", title: `remove ${c.tag}`, text: "×"});
    rm.addEventListener("click", () => edit({op: "remove", tag: c.tag}));
    li.append(up, down, rm);
    cap.append(li);
  });
  const mod = $("v-model");
  mod.replaceChildren();
  $("v-model-info").textContent = item.suggestions_ready ? (item.rating ? `rating ${item.rating}` : "") :
    "suggestions not computed yet";
  for (const m of item.model) {
    const isCur = current && current.where === "model" && current.tag === m.tag;
    const li = el("li", {class: `rtag ${m.mark}${isCur ? " cursor" : ""}${m.verdict ? " " + m.verdict : ""}`,
                         "data-tag": m.tag, "data-mark": m.mark},
                  el("span", {class: `name cat-${m.category}`, text: m.tag}),
                  el("span", {class: "bar"}, el("span", {style: `width:${(m.confidence * 100).toFixed(1)}%`})),
                  el("span", {class: "pct", text: pct(m.confidence)}),
                  el("span", {class: "mark", text: m.mark === "both" ? "both" : (m.mark === "model" ? "model only" :
                    `below ${m.threshold.toFixed(2)}`)}));
    if (m.mark !== "both") {
      const acc = el("button", {type: "button", class: "small accept", title: `accept ${m.tag} (a)`, text: "✓"});
      acc.addEventListener("click", () => edit({op: "accept", tag: m.tag}));
      li.append(acc);
    }
    if (m.mark === "model") {
      const rej = el("button", {type: "button", class: "secondary small reject", title: `reject ${m.tag} (x)`, text: "✗"});
      rej.addEventListener("click", () => edit({op: "reject", tag: m.tag}));
      li.append(rej);
    }
    mod.append(li);
  }
}

function showConflict(err) {
  const d = err.details || {};
  const box = el("div", {class: "banner conflict"}, el("strong", {text: err.message}));
  if (d.your_tags) box.append(el("p", {text: `Your version: ${d.your_tags.join(", ") || "(empty)"}`}));
  if (d.disk_tags) box.append(el("p", {text: `On disk now: ${d.disk_tags.join(", ") || "(empty)"}`}));
  if (d.your_tags) {
    const again = el("button", {type: "button", class: "secondary", text: "Use my version anyway"});
    again.addEventListener("click", () => edit({op: "set", tags: d.your_tags}));
    box.append(again);
  }
  $("conflict").replaceChildren(box);
}

async function edit(change) {
  const item = state.item;
  if (!item) return;
  try {
    const fresh = await api(`/v1/review/items/${item.id}/edit`, {json: {version: item.version, ...change}});
    $("conflict").replaceChildren();
    showItem(fresh);
  } catch (err) {
    if (err.code === "changed_on_disk" || err.code === "stale") {
      showConflict(err);
      try { showItem(await api(`/v1/review/items/${item.id}`)); } catch (_) { /* shown above */ }
    } else {
      $("conflict").replaceChildren(el("div", {class: "banner", text: err.message}));
    }
  }
  loadStatus();
}

function decide(op) {
  const list = state.item ? disagreements(state.item) : [];
  const cur = list[state.cursor];
  if (!cur) return;
  edit({op, tag: cur.tag});
}

function moveCursor(delta) {
  const list = state.item ? disagreements(state.item) : [];
  if (!list.length) return;
  state.cursor = Math.max(0, Math.min(list.length - 1, state.cursor + delta));
  showItem(state.item);
}

function moveTag(delta) {
  const list = state.item ? disagreements(state.item) : [];
  const cur = list[state.cursor];
  if (!cur || cur.where !== "caption") return;
  const i = state.item.caption.findIndex((c) => c.tag === cur.tag);
  if (i + delta >= 0 && i + delta < state.item.caption.length) edit({op: "move", tag: cur.tag, index: i + delta});
}

async function undoRedo(which) {
  try {
    const r = await api(`/v1/review/${which}`, {method: "POST"});
    const bad = (r.conflicts || []).length + (r.skipped || []).length;
    say(`${which === "undo" ? "Undone" : "Redone"}: ${r.summary}` + (bad ? ` (${bad} image(s) not changed: see history)` : ""));
  } catch (err) {
    say(err.message, err.status === 409 ? "info" : "error");
  }
  if (viewerOpen() && state.item) {
    try { showItem(await api(`/v1/review/items/${state.item.id}`)); } catch (_) { /* gone */ }
    loadStatus();
  } else {
    loadGrid();
  }
}

// --- autocomplete ---------------------------------------------------------------------
let compTimer = null;
function scheduleComplete() {
  clearTimeout(compTimer);
  compTimer = setTimeout(complete, 80);
}

async function complete() {
  const q = $("add-tag").value.trim();
  if (!q) { renderCompletions([]); return; }
  try {
    const body = await api(`/v1/review/complete?${new URLSearchParams({q, limit: 12})}`);
    if ($("add-tag").value.trim() === q) renderCompletions(body.completions);
  } catch (_) { renderCompletions([]); }
}

function renderCompletions(list) {
  state.completions = list;
  state.compCursor = list.length ? 0 : -1;
  const ul = $("completions");
  ul.replaceChildren(...list.map((c, i) => {
    const li = el("li", {role: "option", class: `${i === 0 ? "cursor " : ""}cat-${c.category}`, "data-tag": c.tag},
                  el("span", {text: c.tag}),
                  el("span", {class: "hint", text: (c.in_model ? "model" : "") + (c.count ? ` ${c.count.toLocaleString()}` : "")}));
    li.addEventListener("mousedown", (e) => { e.preventDefault(); addTag(c.tag); });
    return li;
  }));
  $("add-tag").setAttribute("aria-expanded", list.length ? "true" : "false");
}

function moveCompletion(delta) {
  const n = state.completions.length;
  if (!n) return;
  state.compCursor = (state.compCursor + delta + n) % n;
  document.querySelectorAll("#completions li").forEach((li, i) => li.classList.toggle("cursor", i === state.compCursor));
}

function addTag(tag) {
  $("add-tag").value = "";
  renderCompletions([]);
  if (tag && tag.trim()) edit({op: "add", tag: tag.trim()});
}

// --- keys ----------------------------------------------------------------------------
function onKey(e) {
  const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement && document.activeElement.tagName);
  if (document.activeElement === $("add-tag")) {
    if (e.key === "ArrowDown") { e.preventDefault(); moveCompletion(1); }
    else if (e.key === "ArrowUp") { e.preventDefault(); moveCompletion(-1); }
    else if (e.key === "Tab" && state.compCursor >= 0) { e.preventDefault(); $("add-tag").value = state.completions[state.compCursor].tag; }
    else if (e.key === "Enter") {
      e.preventDefault();
      const typed = $("add-tag").value.trim();
      const pick = state.compCursor >= 0 && state.completions[state.compCursor];
      addTag(pick && pick.tag.startsWith(typed.replace(/ /g, "_").toLowerCase()) ? pick.tag : typed);
    } else if (e.key === "Escape") { $("add-tag").value = ""; renderCompletions([]); $("add-tag").blur(); }
    return;
  }
  if (typing) return;
  const ctrl = e.ctrlKey || e.metaKey;
  if (ctrl && (e.key === "z" || e.key === "Z")) { e.preventDefault(); undoRedo(e.shiftKey ? "redo" : "undo"); return; }
  if (ctrl && e.key === "y") { e.preventDefault(); undoRedo("redo"); return; }
  if (ctrl || e.altKey && !["ArrowUp", "ArrowDown"].includes(e.key)) return;
  if (e.key === "u") { undoRedo("undo"); return; }
  if (e.key === "U") { undoRedo("redo"); return; }
  if (e.key === "?") { $("help").showModal(); return; }
  if (!viewerOpen()) {
    if (e.key === "j" || e.key === "ArrowRight") { e.preventDefault(); moveGridCursor(1); }
    else if (e.key === "k" || e.key === "ArrowLeft") { e.preventDefault(); moveGridCursor(-1); }
    else if (e.key === "Enter" || e.key === "o") { e.preventDefault(); openItem(state.offset + state.gridCursor); }
    return;
  }
  if (e.altKey && e.key === "ArrowUp") { e.preventDefault(); moveTag(-1); }
  else if (e.altKey && e.key === "ArrowDown") { e.preventDefault(); moveTag(1); }
  else if (e.key === "j" || e.key === "ArrowRight") { e.preventDefault(); openItem(state.pos + 1); }
  else if (e.key === "k" || e.key === "ArrowLeft") { e.preventDefault(); openItem(state.pos - 1); }
  else if (e.key === "ArrowDown") { e.preventDefault(); moveCursor(1); }
  else if (e.key === "ArrowUp") { e.preventDefault(); moveCursor(-1); }
  else if (e.key === "a") decide("accept");
  else if (e.key === "x") decide("reject");
  else if (e.key === "c") confirmAndNext();
  else if (e.key === "/") { e.preventDefault(); $("add-tag").focus(); }
  else if (e.key === "Escape") closeViewer();
}

async function confirmAndNext() {
  await edit({op: "confirm"});
  if (state.pos + 1 < state.ids.length) openItem(state.pos + 1);
}

async function bulk(e) {
  e.preventDefault();
  const body = {op: $("bulk-op").value, tag: $("bulk-tag").value.trim(), filter: filterBody()};
  if ($("bulk-new").value.trim()) body.new = $("bulk-new").value.trim();
  try {
    const r = await api("/v1/review/bulk", {json: body});
    const extra = r.conflicts.length ? `; ${r.conflicts.length} changed on disk (reloaded, not written)` : "";
    const skipped = r.skipped.length ? `; ${r.skipped.length} unreadable caption(s) skipped` : "";
    $("bulk-result").textContent = `${body.op} ${body.tag}: ${r.changed} image(s) changed${extra}${skipped} (undo with u)`;
  } catch (err) {
    $("bulk-result").textContent = err.message;
  }
  loadGrid();
}

function setup() {
  $("filters").addEventListener("submit", (e) => { e.preventDefault(); state.offset = 0; state.gridCursor = 0; loadGrid(); });
  for (const id of ["f-disagree", "f-low", "f-problems", "f-sort", "f-desc"]) {
    $(id).addEventListener("change", () => { state.offset = 0; state.gridCursor = 0; loadGrid(); });
  }
  $("bulk").addEventListener("submit", bulk);
  $("undo").addEventListener("click", () => undoRedo("undo"));
  $("redo").addEventListener("click", () => undoRedo("redo"));
  $("prev-page").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); loadGrid(); });
  $("next-page").addEventListener("click", () => { state.offset += PAGE; loadGrid(); });
  $("back").addEventListener("click", closeViewer);
  $("prev").addEventListener("click", () => openItem(state.pos - 1));
  $("next").addEventListener("click", () => openItem(state.pos + 1));
  $("confirm").addEventListener("click", confirmAndNext);
  $("add-tag").addEventListener("input", scheduleComplete);
  $("add-tag").addEventListener("blur", () => setTimeout(() => renderCompletions([]), 150));
  document.addEventListener("keydown", onKey);
  loadGrid();
}

setup();
