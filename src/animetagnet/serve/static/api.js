// Offline API reference: renders /openapi.json with no external assets (Swagger UI needs a CDN).
"use strict";

function typeOf(schema) {
  if (!schema) return "";
  if (schema.anyOf) return schema.anyOf.map(typeOf).filter((t) => t !== "null").join(" | ");
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  let t = schema.type || (schema.$ref ? schema.$ref.split("/").pop() : "");
  const range = [];
  if (schema.minimum !== undefined) range.push(`≥ ${schema.minimum}`);
  if (schema.maximum !== undefined) range.push(`≤ ${schema.maximum}`);
  return range.length ? `${t} (${range.join(", ")})` : t;
}

async function main() {
  const box = document.getElementById("endpoints");
  const spec = await (await fetch("/openapi.json")).json();
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const card = el("section", {class: "panel", style: "margin-bottom:14px"},
                      el("h3", {style: "margin:0 0 4px"}, el("code", {text: `${method.toUpperCase()} ${path}`})),
                      el("p", {style: "margin:0 0 6px", text: op.summary || ""}));
      if (op.description) card.append(el("p", {class: "hint", text: op.description}));
      const params = op.parameters || [];
      if (params.length) {
        const rows = params.map((p) => el("tr", {}, el("td", {}, el("code", {text: p.name})), el("td", {text: p.in}),
          el("td", {text: typeOf(p.schema)}),
          el("td", {text: p.schema && p.schema.default !== undefined ? JSON.stringify(p.schema.default) : ""}),
          el("td", {text: p.description || (p.schema && p.schema.description) || ""})));
        card.append(el("table", {class: "params"},
          el("thead", {}, el("tr", {}, ...["name", "in", "type", "default", "meaning"].map((h) => el("th", {text: h})))),
          el("tbody", {}, ...rows)));
      }
      if (op.requestBody) {
        const types = Object.keys(op.requestBody.content || {}).join(", ");
        card.append(el("p", {class: "hint", text: `Request body: ${types}`}));
      }
      const codes = Object.entries(op.responses || {}).map(([c, r]) => `${c} ${r.description || ""}`).join(" · ");
      card.append(el("p", {class: "hint", text: `Responses: ${codes}`}));
      box.append(card);
    }
  }
}

main().catch((err) => {
  document.getElementById("endpoints").append(el("p", {class: "banner", text: `Cannot load /openapi.json: ${err.message}`}));
});
