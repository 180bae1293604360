"use strict";

// The mediaproxy console: pick an entry, set parameters, see the URL, the picture or clip, and the response; or paste
// a media link of any host into the URL field: /explain says how it is read, and the controls and preview follow.

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

const state = { entry: null, service: "thumbnail", generation: 0, timer: null, linkTimer: null, entries: new Map(),
  extra: [] };
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

// the control of each parameter, per service (parameters without one are kept from a pasted link in state.extra)
const CONTROLS = {
  thumbnail: { width: "width", height: "height", type: "type", bgcolor: "bgcolor", quality: "quality",
    src_x: "src_x", src_y: "src_y", src_w: "src_w", src_h: "src_h", vid_sec: "vid_sec", vid_slices: "vid_slices",
    vid_slice: "vid_slice", start_sec: "start_sec", end_sec: "end_sec", density: "density", strip: "strip",
    format: "format", version: "version", flavor_id: "flavor_id" },
  flvclipper: { flavor: "flavor", clip_from: "clip_from", clip_to: "clip_to", container: "container" },
  raw: { flavor_id: "raw_flavor_id", file_name: "file_name", direct_serve: "direct_serve" },
};
const VIDEO_ONLY = ["vid_sec", "vid_slices", "vid_slice", "start_sec", "end_sec", "flavor_id"];

function mayBeVideo(entry) {
  return entry.kind === "video" || entry.kind === "unknown";
}

function currentParams() {  // in the order of the canonical path (mediaproxy/urls.py)
  const params = [];
  const add = (key, name = key) => {
    const value = formValue(name);
    if (value !== "") params.push([key, value]);
  };
  if (state.service === "thumbnail") {
    ["width", "height"].forEach((key) => add(key));
    if (formValue("type") !== "1") add("type");
    const keys = ["bgcolor", "quality", "src_x", "src_y", "src_w", "src_h", "vid_sec", "vid_slices", "vid_slice",
      "start_sec", "end_sec", "density", "strip", "format", "version", "flavor_id"];
    keys.filter((key) => mayBeVideo(state.entry) || !VIDEO_ONLY.includes(key)).forEach((key) => add(key));
  } else if (state.service === "flvclipper") {
    ["flavor", "clip_from", "clip_to"].forEach((key) => add(key));
  } else {
    add("flavor_id", "raw_flavor_id");
    add("file_name");
    add("direct_serve");
  }
  for (const [key, value] of state.extra) {
    if (state.service === "raw" && key === "format") params.push(["type", "download"]);
    params.push([key, String(value)]);
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
  if (entry.kind === "unknown") return entry.error;
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
      state.entries.set(button.dataset.entry, [entry, button]);
      list.append(button);
      if (!first && entry.kind !== "error") first = [entry, button];
    }
  }
  status.textContent = data.partners.length ? "" : "The origin holds no entries.";
  if (first) select(...first);
}

function select(entry, button) {
  state.extra = [];
  adopt(entry, button);
  showService(state.service);
}

function adopt(entry, button) {  // make `entry` the current one (a card of the list, or a pasted link's entry)
  state.entry = entry;
  $$(".entry").forEach((item) => item.removeAttribute("aria-current"));
  if (button) button.setAttribute("aria-current", "true");
  $("#workbench").hidden = false;
  $("#entry-title").textContent = entry.name || entry.entry_id;
  $("#entry-facts").textContent = `partner ${entry.partner_id} · ${entry.entry_id} · ${describe(entry)}`;
  for (const select of $$("[data-flavors]")) {
    select.replaceChildren(new Option("the original", ""), ...entry.flavors.map((flavor) => new Option(flavor, flavor)));
  }
  const clips = $('#services [data-service="flvclipper"]');
  clips.disabled = !mayBeVideo(entry);
  if (clips.disabled && state.service === "flvclipper") state.service = "thumbnail";
  $("#purge-result").textContent = "";
  showEntryState(entry);
}

// ------------------------------------------------------------------------------------------ notifications, purge

async function showEntryState(entry) {  // the last notification received for the entry; the purge button
  const asked = `${entry.partner_id}/${entry.entry_id}`;
  let found;
  try {
    const query = `partner_id=${entry.partner_id}&entry_id=${encodeURIComponent(entry.entry_id)}`;
    const response = await fetch(`/console/api/entry?${query}`, { cache: "no-store" });
    if (!response.ok) return;
    found = await response.json();
  } catch (error) {
    return;
  }
  if (!state.entry || `${state.entry.partner_id}/${state.entry.entry_id}` !== asked) return;  // another one since
  const last = found.last_notification;
  let text = last ? `last notification: ${last.type}, ${new Date(last.at * 1000).toLocaleString()}` :
    "no notification received for this entry";
  if (found.withheld) text += ` · answers 404 (${found.withheld})`;
  $("#last-notification").textContent = text;
  $("#purge").hidden = !found.can_purge;
}

async function purge() {
  const entry = state.entry;
  const button = $("#purge");
  const result = $("#purge-result");
  button.disabled = true;
  result.textContent = "purging…";
  try {
    const response = await fetch("/console/api/purge", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ partner_id: entry.partner_id, entry_id: entry.entry_id }) });
    if (!response.ok) {
      result.textContent = `HTTP ${response.status}: ${(await response.text()).trim()}`;
      return;
    }
    const done = await response.json();
    const dropped = done.dropped.results + done.dropped.indexes + done.dropped.originals;
    result.textContent = `purged: ${dropped} cached file${dropped === 1 ? "" : "s"} dropped, ${done.located} ` +
      `origin answer${done.located === 1 ? "" : "s"} forgotten` +
      (done.withheld_before ? `; served again (it had been ${done.withheld_before})` : "");
    showEntryState(entry);
    // the browser keeps the old answer for its max-age, as a CDN does: fetch it again before showing it
    await fetch(currentUrl(), { cache: "reload" }).catch(() => null);
    update();
  } catch (error) {
    result.textContent = `The purge failed: ${error.message}.`;
  } finally {
    button.disabled = false;
  }
}

function showService(service) {
  if (service !== state.service) state.extra = [];  // a pasted link's parameters without controls
  showTabs(service);
  update();
}

function showTabs(service) {
  state.service = service;
  for (const tab of $$("#services button")) tab.setAttribute("aria-selected", String(tab.dataset.service === service));
  for (const fieldset of $$("#controls fieldset[data-for]")) {
    fieldset.hidden = fieldset.dataset.for !== service ||
      (fieldset.dataset.kind === "video" && !mayBeVideo(state.entry));
  }
}

function scheduleUpdate() {
  clearTimeout(state.timer);
  state.timer = setTimeout(update, 250);
}

function update() {  // the URL from the controls
  if (!state.entry) return;
  const path = currentUrl();
  $("#url").value = absolute(path);
  show(path);
}

function show(path, explanation = null) {  // preview, response, snippets and explanation of one local URL
  const generation = ++state.generation;
  $("#open-url").href = path;
  showPreview(path);
  showSnippets(absolute(path));
  inspect(path, generation);
  if (explanation) showExplanation(explanation);
  else explainLink(absolute(path), generation).then((found) => { if (found) showExplanation(found); });
}

async function explainLink(link, generation) {  // /explain's answer, or null when a newer request superseded it
  try {
    const response = await fetch(`/explain?url=${encodeURIComponent(link)}`, { cache: "no-store" });
    const explanation = await response.json();
    return generation === state.generation ? explanation : null;
  } catch (error) {
    return null;
  }
}

function showExplanation(explanation) {
  $("#explanation").hidden = false;
  const reading = $("#reading");
  const error = $("#link-error");
  reading.replaceChildren();
  if (!explanation.ok) {
    const where = explanation.service ? ` (${explanation.service}, partner ${explanation.partner_id})` : "";
    reading.textContent = `This link is not read as a media request${where}.`;
    error.hidden = false;
    error.textContent = inWords(explanation.error);
  } else {
    error.hidden = true;
    const local = document.createElement("a");
    local.href = explanation.local_url;
    local.textContent = explanation.local_url;
    local.id = "local-url";
    const ks = explanation.ks.present ? ` KS: ${explanation.ks.text}.` : "";
    const access = explanation.access.allowed ? "" : ` Refused here: ${inWords(explanation.access)}.`;
    reading.append(`Read as ${explanation.summary} of entry ${explanation.entry_id}, partner ` +
      `${explanation.partner_id}${explanation.host ? ` (the link names ${explanation.host})` : ""}; served here as `,
      local, `.${ks}${access}`);
  }
  $("#notes").replaceChildren(...explanation.notes.map((note) => {
    const item = document.createElement("li");
    item.dataset.kind = note.kind;
    item.append(...backticks(note.text));
    return item;
  }));
}

function inWords(refusal) {
  return `HTTP ${refusal.status}: ${refusal.message} (Kaltura error-${refusal.code})`;
}

function backticks(text) {  // `key` → <code>key</code>, the rest as text
  return text.split("`").map((part, index) => {
    if (index % 2 === 0) return document.createTextNode(part);
    const code = document.createElement("code");
    code.textContent = part;
    return code;
  });
}

// ------------------------------------------------------------------------------------------ a pasted link

function scheduleReadLink(delay) {
  clearTimeout(state.linkTimer);
  state.linkTimer = setTimeout(() => readLink($("#url").value), delay);
}

async function readLink(text) {
  const link = text.trim();
  if (!link) return;
  clearTimeout(state.timer);
  clearTimeout(state.linkTimer);
  const generation = ++state.generation;
  const explanation = await explainLink(link, generation);
  if (!explanation) return;
  if (!explanation.ok) {
    showExplanation(explanation);
    $("#preview").replaceChildren();
    $("#headers tbody").replaceChildren();
    $("#snippets").replaceChildren();
    const problem = $("#problem");
    problem.hidden = false;
    problem.textContent = inWords(explanation.error);
    return;
  }
  const key = `${explanation.partner_id}/${explanation.entry_id}`;
  const [entry, button] = state.entries.get(key) || [unknownEntry(explanation), null];
  adopt(entry, button);
  fillControls(explanation, link);
  showTabs(explanation.service);
  show(localTarget(link), explanation);
}

function unknownEntry(explanation) {
  return { partner_id: explanation.partner_id, entry_id: explanation.entry_id, kind: "unknown", flavors: [],
    requires_ks: [], error: "not among this origin's entries" };
}

function fillControls(explanation, link) {
  const controls = CONTROLS[explanation.service];
  for (const field of $$("#controls [name]")) {
    if (field.name === "ks") continue;
    if (field.type === "checkbox") field.checked = false;
    else field.value = "";
  }
  state.extra = [];
  for (const parameter of explanation.parameters) {
    const name = controls[parameter.key];
    if (!name) {
      if (parameter.canonical) state.extra.push([parameter.key, parameter.value]);
      continue;
    }
    const field = $(`#controls [name="${name}"]`);
    const shown = parameter.canonical || ["width", "height", "type"].includes(parameter.key);
    if (field.type === "checkbox") {
      field.checked = parameter.value === true;
    } else if (field.tagName === "SELECT") {
      const value = shown && parameter.value !== null ? String(parameter.value) : "";
      const wanted = value === "jpg" ? "" : value;
      if (![...field.options].some((option) => option.value === wanted)) field.append(new Option(wanted, wanted));
      field.value = wanted;
    } else {
      field.value = shown && parameter.value !== null ? String(parameter.value) : "";
    }
  }
  $('#controls [name="ks"]').value = explanation.ks.present ? ksOf(parsedLink(link)) : "";
}

function parsedLink(link) {  // any pasted form: https://host/..., host/..., //host/..., /path
  const text = link.trim();
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(text) || text.startsWith("//") || text.startsWith("/")) {
    return new URL(text, window.location.href);
  }
  return new URL(`https://${text}`);
}

function localTarget(link) {  // the pasted link's path and query, on this origin: exactly what it asks for
  const url = parsedLink(link);
  return url.pathname + url.search;
}

function ksOf(url) {  // the KS the link carries, to fill the ks field (/explain never repeats it)
  const segments = url.pathname.split("/").filter(Boolean).map(decodeURIComponent);
  let found = null;
  for (let index = 0; index + 1 < segments.length; index += 1) {
    if (segments[index] === "ks") found = segments[index + 1];
  }
  return found ?? url.searchParams.get("ks") ?? "";
}

function showPreview(path) {
  const preview = $("#preview");
  const kind = state.entry.kind;
  let element;
  if (state.service === "thumbnail" || (state.service === "raw" && kind === "image")) {
    element = document.createElement("img");
    element.alt = "preview";
  } else if (kind === "video" || (kind === "unknown" && state.service === "flvclipper")) {
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
  } else if (mayBeVideo(state.entry) && state.service !== "raw") {
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
  $("#purge").addEventListener("click", purge);
  const url = $("#url");
  url.addEventListener("paste", () => scheduleReadLink(0));  // the field holds the pasted text right after
  url.addEventListener("input", () => scheduleReadLink(600));
  url.addEventListener("keydown", (event) => {
    if (event.key === "Enter") readLink(url.value);
  });
  loadEntries();
});
