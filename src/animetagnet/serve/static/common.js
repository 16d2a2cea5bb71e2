// Helpers shared by the pages (index, gallery, api): loaded before each page's own script.
"use strict";

const $ = (id) => document.getElementById(id);

// Build an element: attrs may set "class" and "text"; other keys become attributes.
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) if (c) e.append(c);
  return e;
}
