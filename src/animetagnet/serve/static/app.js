// AnimeTagNet tagging page: upload, show tags by category, filter live with sliders, copy captions.
// Plain JS, no build step and no network beyond this server.
"use strict";

const FLOOR = 0.05;  // the server returns every tag scoring at least this; the sliders filter client-side
const CATEGORY_ORDER = ["character", "copyright", "artist", "general", "meta"];
const cards = [];     // {name, url, result, el} in upload order
let captionSeq = 0;
let captionTimer = null;

function threshold(category) {
  return parseFloat($(category === "character" ? "thr-character" : "thr-general").value);
}

function formatParams() {
  const p = new URLSearchParams();
  if ($("opt-spaces").checked) p.set("spaces", "true");
  if ($("opt-escape").checked) p.set("escape_parens", "true");
  if ($("opt-rating").checked) p.set("include_rating", "true");
  if ($("opt-confidence").checked) p.set("with_confidence", "true");
  return p;
}

async function errorMessage(resp) {
  try {
    const body = await resp.json();
    if (body && body.error) return body.error.message;
  } catch (_) { /* not JSON */ }
  return `the server answered ${resp.status} ${resp.statusText}`;
}

function filtered(result) {
  const tags = {};
  for (const [cat, items] of Object.entries(result.scores || {})) {
    const thr = threshold(cat);
    tags[cat] = Object.fromEntries(Object.entries(items).filter(([, c]) => c >= thr));
  }
  return tags;
}

function renderCard(card) {
  const r = card.result;
  const body = card.el.querySelector(".body");
  body.replaceChildren();
  body.append(el("h3", {text: card.name}));
  const ratings = el("div", {class: "ratings"});
  for (const [name, conf] of Object.entries(r.ratings || {})) {
    ratings.append(el("div", {class: `rating ${name}${name === r.rating ? " top" : ""}`, "data-rating": name,
                              text: `${name} ${(conf * 100).toFixed(0)}%`}));
  }
  body.append(ratings);
  const tags = filtered(r);
  const groups = el("div", {class: "groups"});
  const cats = Object.keys(tags).sort((a, b) => CATEGORY_ORDER.indexOf(a) - CATEGORY_ORDER.indexOf(b));
  for (const cat of cats) {
    const entries = Object.entries(tags[cat]);
    if (!entries.length && cat !== "general" && cat !== "character") continue;
    const g = el("div", {class: `group ${cat}`}, el("h4", {text: `${cat} (${entries.length})`}));
    if (!entries.length) g.append(el("div", {class: "none", text: `none at ≥ ${threshold(cat).toFixed(2)}`}));
    for (const [name, conf] of entries) {
      const bar = el("div", {class: "bar"}, el("span", {style: `width:${(conf * 100).toFixed(1)}%`}));
      g.append(el("div", {class: "tag", "data-tag": name, "data-category": cat},
                  el("span", {class: "name", title: name, text: name}), bar,
                  el("span", {class: "pct", text: `${(conf * 100).toFixed(0)}%`})));
    }
    groups.append(g);
  }
  body.append(groups);
  const area = el("textarea", {class: "caption-text", readonly: "", rows: "2", "aria-label": `caption of ${card.name}`});
  area.value = card.caption || "";
  const copied = el("span", {class: "copied"});
  const button = el("button", {class: "copy", type: "button", text: "Copy caption"});
  button.addEventListener("click", () => copyCaption(area, copied));
  body.append(el("div", {class: "caption"}, area, button, copied));
}

async function copyCaption(area, note) {
  try {
    await navigator.clipboard.writeText(area.value);
  } catch (_) {  // no clipboard API (e.g. plain http on another host): select and copy
    area.select();
    document.execCommand("copy");
  }
  note.textContent = "Copied";
  setTimeout(() => { note.textContent = ""; }, 1500);
}

function scheduleCaptions() {
  clearTimeout(captionTimer);
  captionTimer = setTimeout(updateCaptions, 60);
}

async function updateCaptions() {
  const ready = cards.filter((c) => c.result);
  if (!ready.length) return;
  const seq = ++captionSeq;
  const items = ready.map((c) => ({rating: c.result.rating, ratings: c.result.ratings, tags: filtered(c.result)}));
  const resp = await fetch(`/v1/caption?${formatParams()}`, {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({items}),
  });
  if (seq !== captionSeq) return;  // a newer slider position already asked
  if (!resp.ok) { setStatus(`Caption failed: ${await errorMessage(resp)}`); return; }
  const {captions} = await resp.json();
  ready.forEach((c, i) => {
    c.caption = captions[i];
    const area = c.el.querySelector(".caption-text");
    if (area) area.value = c.caption;
  });
}

function rerender() {
  for (const c of cards) if (c.result) renderCard(c);
  scheduleCaptions();
}

function setStatus(text) { $("status").textContent = text; }

async function tagFile(file) {
  const card = {name: file.name, url: URL.createObjectURL(file), result: null, caption: ""};
  card.el = el("article", {class: "card panel pending"}, el("img", {class: "thumb", src: card.url, alt: file.name}),
               el("div", {class: "body"}, el("h3", {text: file.name}), el("p", {text: "tagging…"})));
  $("results").prepend(card.el);
  const form = new FormData();
  form.append("files", file, file.name);
  let resp;
  try {
    resp = await fetch(`/v1/tag?min_confidence=${FLOOR}`, {method: "POST", body: form});
  } catch (err) {
    return showError(card, `could not reach the server (${err.message})`);
  }
  if (!resp.ok) return showError(card, await errorMessage(resp));
  const data = await resp.json();
  card.result = data.results[0];
  card.el.classList.remove("pending");
  cards.push(card);
  renderCard(card);
}

function showError(card, message) {
  card.el.className = "card panel error";
  card.el.replaceChildren(el("h3", {text: `${card.name}: not tagged`}), el("p", {class: "message", text: message}));
  URL.revokeObjectURL(card.url);
}

async function handleFiles(list) {
  const files = Array.from(list);
  if (!files.length) return;
  setStatus(`Tagging ${files.length} image${files.length > 1 ? "s" : ""}…`);
  await Promise.all(files.map(tagFile));  // sent together: the server batches them
  setStatus(`${cards.length} image${cards.length === 1 ? "" : "s"} tagged. Move the sliders to filter; captions follow.`);
  await updateCaptions();
}

async function loadModel() {
  try {
    const resp = await fetch("/v1/model");
    if (!resp.ok) throw new Error(await errorMessage(resp));
    const m = await resp.json();
    $("model").textContent = `${m.name} · ${m.tags.toLocaleString()} tags · ${m.device}`;
    for (const cat of ["general", "character"]) {
      const v = m.default_thresholds[cat];
      if (v !== undefined) { $(`thr-${cat}`).value = Math.max(FLOOR, v); $(`out-${cat}`).value = (+$(`thr-${cat}`).value).toFixed(2); }
    }
  } catch (err) {
    $("model").textContent = "model unavailable";
    setStatus(`The service is not ready: ${err.message}`);
  }
}

function setup() {
  const drop = $("drop");
  $("files").addEventListener("change", (e) => { handleFiles(e.target.files); e.target.value = ""; });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); handleFiles(e.dataTransfer.files); });
  for (const cat of ["general", "character"]) {
    $(`thr-${cat}`).addEventListener("input", () => { $(`out-${cat}`).value = (+$(`thr-${cat}`).value).toFixed(2); rerender(); });
  }
  for (const id of ["opt-spaces", "opt-escape", "opt-rating", "opt-confidence"]) $(id).addEventListener("change", scheduleCaptions);
  loadModel();
}

setup();
