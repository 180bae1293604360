"use strict";

// The mediaproxy console: pick an entry, set parameters, see the URL, the picture or clip, and the response.

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

const state = { entry: null, service: "thumbnail", generation: 0, timer: null };
const SHOWN_HEADERS = ["Content-Type", "Content-Length", "Cache-Control", "ETag", "Last-Modified", "Server-Timing",
  "Content-Range", "X-Clip-Start-Ms", "Content-Disposition", "X-Kaltura", "X-Kaltura-App"];

function servicePath(entry, service, params) {
  const sub = entry.partner_id * 100;
  let path = `/p/${entry.partner_id}/sp/${sub}/${service}/entry_id/${encodeURIComponent(entry.entry_id)}`;
  for (const [key, value] of params) {
    path += `/${encodeURIComponent(key)}/${encodeURIComponent(value)}`;
  }
  return path;
}

function absolute(path) {
  return new URL(path, window.location.href).href;
}

function formValue(name) {
  const field = $(`#controls [name="${name}"]`);
  if (!field) return "";
  if (field.type === "checkbox") return field.checked ? "1" : "";
  return field.value.trim();
}

function currentParams() {
  const params = [];
  const add = (key, name = key) => {
    const value = formValue(name);
    if (value !== "") params.push([key, value]);
  };
  if (state.service === "thumbnail") {
    ["width", "height"].forEach((key) => add(key));
    if (formValue("type") !== "1") add("type");
    ["bgcolor", "quality", "format", "density", "version", "strip", "src_x", "src_y", "src_w", "src_h"]
      .forEach((key) => add(key));
    if (state.entry.kind === "video") {
      ["vid_sec", "vid_slices", "vid_slice", "start_sec", "end_sec", "flavor_id"].forEach((key) => add(key));
    }
  } else if (state.service === "flvclipper") {
    ["clip_from", "clip_to", "flavor"].forEach((key) => add(key));
  } else {
    add("flavor_id", "raw_flavor_id");
    add("file_name");
    add("direct_serve");
  }
  return params;
}

function currentUrl() {
  let path = servicePath(state.entry, state.service, currentParams());
  const container = formValue("container");
  if (state.service === "flvclipper" && container) path += `/a.${container}`;
  const ks = formValue("ks");
  if (ks) path += `?ks=${encodeURIComponent(ks)}`;
  return path;
}

function posterUrl(entry, width = 640) {
  return absolute(servicePath(entry, "thumbnail", [["width", width]]));
}

function humanBytes(bytes) {
  if (bytes === undefined || bytes === null || Number.isNaN(bytes)) return "?";
  const units = ["B", "KB", "MB", "GB"];
  let value = Number(bytes);
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) { value /= 1000; unit += 1; }
  return `${value.toFixed(unit ? 1 : 0)} ${units[unit]}`;
}

function describe(entry) {
  if (entry.kind === "error") return `error: ${entry.error}`;
  const parts = [entry.kind, humanBytes(entry.bytes)];
  if (entry.width) parts.push(`${entry.width}×${entry.height}`);
  if (entry.duration) parts.push(`${entry.duration.toFixed(1)} s`);
  return parts.join(" · ");
}

async function loadEntries() {
  const status = $("#entries-status");
  let data;
  try {
    const response = await fetch("/console/api/entries");
    if (!response.ok) throw new Error(`the server answered ${response.status}`);
    data = await response.json();
  } catch (error) {
    status.textContent = `Could not list the entries: ${error.message}.`;
    return;
  }
  const list = $("#entry-list");
  list.replaceChildren();
  let first = null;
  for (const partner of data.partners) {
    const heading = document.createElement("div");
    heading.className = "partner";
    heading.textContent = `partner ${partner.partner_id}` +
      (partner.requires_ks.length ? ` · KS needed for ${partner.requires_ks.join(", ")}` : "");
    list.append(heading);
    for (const entry of partner.entries) {
      entry.requires_ks = partner.requires_ks;
      const button = document.createElement("button");
      button.type = "button";
      button.className = "entry";
      button.dataset.entry = `${entry.partner_id}/${entry.entry_id}`;
      const image = document.createElement("img");
      image.alt = "";
      image.loading = "lazy";
      if (entry.kind !== "error" && !entry.requires_ks.includes("thumbnail")) {
        image.src = servicePath(entry, "thumbnail", [["width", 96], ["height", 72], ["type", 2], ["bgcolor", "f6f7f9"]]);
      }
      const text = document.createElement("span");
      const name = document.createElement("strong");
      name.textContent = entry.name || entry.entry_id;
      const facts = document.createElement("small");
      facts.textContent = `${entry.entry_id} · ${describe(entry)}`;
      text.append(name, facts);
      button.append(image, text);
      button.addEventListener("click", () => select(entry, button));
      list.append(button);
      if (!first && entry.kind !== "error") first = [entry, button];
    }
  }
  status.textContent = data.partners.length ? "" : "The origin holds no entries.";
  if (first) select(...first);
}

function select(entry, button) {
  state.entry = entry;
  $$(".entry").forEach((item) => item.removeAttribute("aria-current"));
  button.setAttribute("aria-current", "true");
  $("#workbench").hidden = false;
  $("#entry-title").textContent = entry.name || entry.entry_id;
  $("#entry-facts").textContent = `partner ${entry.partner_id} · ${entry.entry_id} · ${describe(entry)}`;
  for (const select of $$("[data-flavors]")) {
    select.replaceChildren(new Option("the original", ""), ...entry.flavors.map((flavor) => new Option(flavor, flavor)));
  }
  const clips = $('#services [data-service="flvclipper"]');
  clips.disabled = entry.kind !== "video";
  if (clips.disabled && state.service === "flvclipper") state.service = "thumbnail";
  showService(state.service);
}

function showService(service) {
  state.service = service;
  for (const tab of $$("#services button")) tab.setAttribute("aria-selected", String(tab.dataset.service === service));
  for (const fieldset of $$("#controls fieldset[data-for]")) {
    fieldset.hidden = fieldset.dataset.for !== service ||
      (fieldset.dataset.kind === "video" && state.entry.kind !== "video");
  }
  update();
}

function scheduleUpdate() {
  clearTimeout(state.timer);
  state.timer = setTimeout(update, 250);
}

function update() {
  if (!state.entry) return;
  const generation = ++state.generation;
  const path = currentUrl();
  const url = absolute(path);
  $("#url").value = url;
  $("#open-url").href = path;
  showPreview(path);
  showSnippets(url);
  inspect(path, generation);
}

function showPreview(path) {
  const preview = $("#preview");
  const kind = state.entry.kind;
  let element;
  if (state.service === "thumbnail" || (state.service === "raw" && kind === "image")) {
    element = document.createElement("img");
    element.alt = "preview";
  } else if (kind === "video") {
    element = document.createElement("video");
    element.controls = true;
    element.preload = "metadata";
    element.muted = true;
    element.playsInline = true;
    element.poster = posterUrl(state.entry);
  } else if (kind === "audio") {
    element = document.createElement("audio");
    element.controls = true;
    element.preload = "metadata";
  } else {
    element = document.createElement("a");
    element.href = path;
    element.textContent = "download";
    preview.replaceChildren(element);
    return;
  }
  element.id = "preview-media";
  element.src = path;
  preview.replaceChildren(element);
}

async function inspect(path, generation) {
  const method = state.service === "thumbnail" ? "GET" : "HEAD";
  const problem = $("#problem");
  let response;
  let body = null;
  try {
    response = await fetch(path, { method, cache: "no-store" });
    if (method === "GET") body = await response.blob();
  } catch (error) {
    if (generation !== state.generation) return;
    problem.hidden = false;
    problem.textContent = `The request failed: ${error.message}.`;
    return;
  }
  if (generation !== state.generation) return;
  const rows = [["Status", `${response.status} ${response.statusText}`]];
  for (const name of SHOWN_HEADERS) {
    const value = response.headers.get(name);
    if (value !== null) rows.push([name, value]);
  }
  if (body && !response.headers.get("Content-Length")) rows.push(["Size", humanBytes(body.size)]);
  const table = $("#headers tbody");
  table.replaceChildren(...rows.map(([name, value]) => {
    const row = document.createElement("tr");
    const key = document.createElement("th");
    key.textContent = name;
    const cell = document.createElement("td");
    cell.textContent = name === "Content-Length" ? `${value} (${humanBytes(Number(value))})` : value;
    row.append(key, cell);
    return row;
  }));
  if (response.ok) {
    problem.hidden = true;
    problem.textContent = "";
  } else {
    const why = body ? (await body.text()).trim() : (response.headers.get("X-Kaltura-App") || "");
    const code = response.headers.get("X-Kaltura");
    problem.hidden = false;
    problem.textContent = `HTTP ${response.status}: ${why}${code ? ` (Kaltura ${code})` : ""}`;
  }
}

function showSnippets(url) {
  const snippets = [];
  if (state.service === "thumbnail") {
    const width = formValue("width");
    const height = formValue("height");
    const size = `${width && width !== "0" ? ` width="${width}"` : ""}${height && height !== "0" ? ` height="${height}"` : ""}`;
    snippets.push(`<img src="${url}"${size} alt="">`);
  } else if (state.entry.kind === "video") {
    snippets.push(`<video controls preload="metadata" poster="${posterUrl(state.entry)}" src="${url}"></video>`);
  }
  snippets.push(`curl -sS -D - -o out.bin "${url}"`);
  const holder = $("#snippets");
  holder.replaceChildren(...snippets.map((text) => {
    const block = document.createElement("pre");
    block.textContent = text;
    const copy = document.createElement("button");
    copy.type = "button";
    copy.textContent = "Copy";
    copy.addEventListener("click", () => copyText(text, copy));
    block.append(copy);
    return block;
  }));
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch (error) {
    button.textContent = "Select and copy";
  }
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
}

document.addEventListener("DOMContentLoaded", () => {
  $("#controls").addEventListener("input", scheduleUpdate);
  $("#controls").addEventListener("change", scheduleUpdate);
  $("#controls").addEventListener("submit", (event) => event.preventDefault());
  for (const tab of $$("#services button")) tab.addEventListener("click", () => showService(tab.dataset.service));
  $("#copy-url").addEventListener("click", (event) => copyText($("#url").value, event.target));
  loadEntries();
});
