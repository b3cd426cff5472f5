// Renders /openapi.json as plain HTML: routes with their request and response types, then every type's
// fields with type, default and description. A local stand-in for Swagger UI, which FastAPI loads from a CDN.
"use strict";

function node(tag, text, attributes = {}) {
  const element = document.createElement(tag);
  if (text !== undefined) element.textContent = text;
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  return element;
}

function typeName(schema) {
  if (!schema) return "";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if (schema.anyOf) return schema.anyOf.map(typeName).join(" | ");
  if (schema.type === "array") return `list[${typeName(schema.items)}]`;
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (schema.const !== undefined) return JSON.stringify(schema.const);
  if (schema.type === "object" && schema.additionalProperties) return `dict[str, ${typeName(schema.additionalProperties)}]`;
  return schema.type || "any";
}

function link(schema) {
  const name = typeName(schema);
  const ref = schema && (schema.$ref || (schema.items && schema.items.$ref));
  return ref ? node("a", name, { href: `#type-${ref.split("/").pop()}` }) : node("code", name);
}

function routes(spec) {
  const section = document.getElementById("routes");
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const block = node("article", undefined, { class: "route", id: `route-${method}-${path}` });
      block.append(node("h3", `${method.toUpperCase()} ${path}`), node("p", op.summary || ""));
      const body = op.requestBody?.content?.["application/json"]?.schema;
      if (body) { const p = node("p", "request: "); p.append(link(body)); block.append(p); }
      for (const parameter of op.parameters || []) {
        block.append(node("p", `query ${parameter.name}: ${typeName(parameter.schema)}`));
      }
      const ok = op.responses?.["200"]?.content?.["application/json"]?.schema;
      if (ok) { const p = node("p", "response: "); p.append(link(ok)); block.append(p); }
      section.append(block);
    }
  }
}

function schemas(spec) {
  const section = document.getElementById("schemas");
  for (const [name, schema] of Object.entries(spec.components?.schemas || {})) {
    const block = node("article", undefined, { id: `type-${name}` });
    block.append(node("h3", name), node("p", schema.description || ""));
    const table = node("table");
    table.append(row("th", ["field", "type", "default", "description"]));
    for (const [field, property] of Object.entries(schema.properties || {})) {
      const cells = [field, typeName(property), "default" in property ? JSON.stringify(property.default) : "",
        property.description || ""];
      table.append(row("td", cells));
    }
    block.append(table);
    section.append(block);
  }
}

function row(tag, cells) {
  const tr = node("tr");
  tr.append(...cells.map((cell) => node(tag, cell)));
  return tr;
}

async function start() {
  const spec = await (await fetch("/openapi.json")).json();
  routes(spec);
  schemas(spec);
  document.body.dataset.state = "ready";
}

document.addEventListener("DOMContentLoaded", start);
