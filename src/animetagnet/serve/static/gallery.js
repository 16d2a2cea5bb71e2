// AnimeTagNet gallery: booru-style search over the indexed folder, thumbnails, tag counts to narrow.
"use strict";

const PAGE = 48;
let offset = 0;

function terms() { return $("q").value.split(/\s+/).filter(Boolean); }

function setQuery(q) { $("q").value = q; offset = 0; search(); }

function addTerm(term) {
  const t = terms();
  const bare = term.replace(/^-/, "");
  const kept = t.filter((x) => x.replace(/^-/, "") !== bare);
  kept.push(term);
  setQuery(kept.join(" "));
}

function tagLink(tag, category, onClick) {
  const a = el("a", {href: "#", class: `cat-${category}`, title: `search ${tag}`, "data-tag": tag, text: tag});
  a.addEventListener("click", (e) => { e.preventDefault(); onClick(tag); });
  return a;
}

async function search() {
  const q = $("q").value.trim();
  history.replaceState(null, "", q ? `#q=${encodeURIComponent(q)}` : "#");
  const params = new URLSearchParams({q, limit: PAGE, offset, counts: 40});
  const resp = await fetch(`/v1/gallery/search?${params}`);
  let body = null;
  try { body = await resp.json(); } catch (_) { /* not JSON */ }
  if (!resp.ok) {
    const msg = body && body.error ? body.error.message : `the server answered ${resp.status}`;
    $("message").replaceChildren(el("p", {class: "banner", text: msg}));
    $("grid").replaceChildren(); $("counts").replaceChildren(); $("page").textContent = ""; $("total").textContent = "";
    return;
  }
  $("message").replaceChildren();
  $("total").textContent = `${body.total.toLocaleString()} image${body.total === 1 ? "" : "s"} match`;
  const grid = $("grid");
  grid.replaceChildren();
  if (!body.items.length) grid.append(el("p", {class: "none", text: "No image matches this query."}));
  for (const it of body.items) {
    const img = el("img", {src: `/v1/gallery/files/${it.id}/thumb`, alt: it.name, loading: "lazy"});
    const link = el("a", {href: `/v1/gallery/files/${it.id}/image`, target: "_blank", rel: "noopener"}, img);
    const chips = el("div", {class: "chips"});
    for (const t of it.tags.slice(0, 8)) chips.append(tagLink(t.tag, t.category, (tag) => setQuery(tag)));
    const meta = el("div", {class: "meta"}, el("div", {class: "fname", title: it.name, text: it.name}),
                    it.rating ? el("span", {class: `badge ${it.rating}`, text: it.rating}) : null, chips);
    grid.append(el("div", {class: "tile", "data-id": String(it.id)}, link, meta));
  }
  const counts = $("counts");
  counts.replaceChildren();
  for (const c of body.counts) {
    const minus = el("button", {class: "secondary", type: "button", title: `exclude ${c.tag}`, text: "−"});
    minus.addEventListener("click", () => addTerm(`-${c.tag}`));
    counts.append(el("li", {}, tagLink(c.tag, c.category, (tag) => addTerm(tag)),
                     el("span", {class: "count", text: String(c.count)}), minus));
  }
  const pages = Math.max(1, Math.ceil(body.total / PAGE));
  $("page").textContent = `page ${Math.floor(offset / PAGE) + 1} of ${pages}`;
  $("prev").disabled = offset === 0;
  $("next").disabled = offset + PAGE >= body.total;
}

function setup() {
  $("search").addEventListener("submit", (e) => { e.preventDefault(); offset = 0; search(); });
  $("prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); search(); });
  $("next").addEventListener("click", () => { offset += PAGE; search(); });
  const m = location.hash.match(/^#q=(.*)$/);
  if (m) $("q").value = decodeURIComponent(m[1]);
  search();
}

setup();
