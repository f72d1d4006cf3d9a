// The operator's page: one tile per camera, each drawn by renderTile from that camera's status object.
// Plain JavaScript, nothing fetched from elsewhere: the box beside the line is offline.
"use strict";

const tiles = {};  // camera id -> {el, layers: {heatmap, outlines}, src, galleryKey, cam}
const MARKS = {OK: "✓", NG: "✕", ERROR: "!"};
let detail = null;  // {camera, key} of the frame the dialog shows
let busy = false;

const $ = (root, sel) => root.querySelector(sel);
const fmt = (x, digits = 3) => (typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "–");
const clock = t => (t ? new Date(t * 1000).toLocaleTimeString() : "–");
const withQuery = (url, params) => url + (url.includes("?") ? "&" : "?") + new URLSearchParams(params);

function since(seconds) {
  const s = Math.floor(seconds), d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  return (d ? `${d}d ` : "") + (d || h ? `${h}h ` : "") + `${m}m ${s % 60}s`;
}

function explanationOf(record) {
  const e = record && record.explanation;
  if (!e) return {text: "", origin: ""};
  return typeof e === "string" ? {text: e, origin: ""} : {text: e.text || "", origin: e.origin || ""};
}

function thresholdOf(cam) {
  const op = cam.operating_point;
  if (op && typeof op.threshold === "number") {
    const rate = op.expected_false_alarm == null ? "" : op.mode === "guarantee" ?
      `, false alarms at most ${(100 * op.target_false_alarm).toFixed(1)}% with ${(100 * op.confidence).toFixed(0)}% confidence` :
      `, false alarms ${(100 * op.expected_false_alarm).toFixed(1)}% expected`;
    return {value: op.threshold, text: `${fmt(op.threshold)} (${op.source}${rate})`};
  }
  const t = cam.latest && cam.latest.settings ? cam.latest.settings.threshold : undefined;
  return {value: t, text: typeof t === "number" ? `${fmt(t)} (setting)` : "–"};
}

function whatOf(record) {
  const id = record.part_id ? `part ${record.part_id}` : record.file ? `file ${record.file}` : `frame ${record.frame_id}`;
  return `${clock(record.time)} · ${id}`;
}

function setText(root, field, text) {
  const el = root.querySelector(`[data-field="${field}"]`);
  if (el && el.textContent !== text) el.textContent = text;
}

function tileFor(id) {
  if (tiles[id]) return tiles[id];
  const el = document.getElementById("tile").content.firstElementChild.cloneNode(true);
  el.dataset.camera = id;
  $(el, ".camera-name").textContent = id ? `camera ${id}` : "";
  const tile = {el, layers: {heatmap: true, outlines: true}, src: "", galleryKey: ""};
  for (const layer of ["heatmap", "outlines"]) {
    $(el, "." + layer).addEventListener("change", e => {
      tile.layers[layer] = e.target.checked;
      tile.src = tile.galleryKey = "";
      if (tile.cam) renderTile(tile.cam);
    });
  }
  $(el, ".live").addEventListener("load", e => {
    $(el, ".size").textContent = `${e.target.naturalWidth} × ${e.target.naturalHeight} px, shown at most 1:1`;
  });
  document.getElementById("cameras").appendChild(el);
  tiles[id] = tile;
  return tile;
}

function layerQuery(tile) {
  return {heatmap: tile.layers.heatmap ? 1 : 0, outlines: tile.layers.outlines ? 1 : 0, banner: 0};
}

function renderVerdict(el, cam) {
  const r = cam.latest, box = $(el, ".verdict");
  if (!r) {
    box.className = "verdict none";
    $(el, ".word").textContent = "WAITING";
    $(el, ".score").textContent = "no frame inspected yet";
    $(el, ".what").textContent = "";
    return;
  }
  box.className = `verdict ${r.label}`;
  $(el, ".word").textContent = r.label;
  const t = r.settings ? r.settings.threshold : undefined;
  let score = `score ${fmt(r.image_score)}`;
  if (r.label === "NG" && typeof t === "number") score += ` ≥ threshold ${fmt(t)}`;
  if (r.label === "OK" && typeof t === "number") score += ` < threshold ${fmt(t)}`;
  if (r.label === "ERROR") {
    const why = r.error || "inspection failed";
    score = why.length > 140 ? why.slice(0, 140) + "…" : why;
  }
  $(el, ".score").textContent = score;
  $(el, ".what").textContent = whatOf(r);
}

function renderImage(tile, cam) {
  const el = tile.el, frame = $(el, ".frame"), src = cam.source || {};
  const live = src.state === "live";
  let want = "";
  if (live) want = withQuery(cam.stream || "/stream", layerQuery(tile));
  else if (cam.latest) want = withQuery(cam.frame || "/api/frame/latest.jpg", {...layerQuery(tile), f: cam.latest.frame_id});
  if (want && want !== tile.src) {
    tile.src = want;
    $(el, ".live").src = want;
  }
  frame.classList.toggle("stale", !live && !!cam.latest);
  const why = src.state === "ended" ? "recording ended" : `source ${src.state || "unknown"}`;
  $(el, ".stale-note").textContent = `${why}: last frame shown`;
}

function renderFields(el, cam) {
  setText(el, "category", cam.category || (cam.latest && cam.latest.category) || "–");
  setText(el, "threshold", thresholdOf(cam).text);
  const src = cam.source || {};
  setText(el, "source", `${src.state || "unknown"}${src.problem ? " (" + src.problem + ")" : ""} · ${src.spec || ""}`);
  const c = cam.counters || {}, judged = (c.ok || 0) + (c.ng || 0);
  const ngRate = judged ? ` · NG ${(100 * (c.ng || 0) / judged).toFixed(1)}%` : "";
  setText(el, "rate", `${fmt(cam.fps || 0, 1)} frames/s${ngRate}`);
  setText(el, "counts", `inspected ${c.inspected ?? "–"} · OK ${c.ok ?? "–"} · NG ${c.ng ?? "–"} · ` +
    `ERROR ${c.error ?? "–"} · dropped ${c.dropped ?? "–"}`);
  const l = cam.learning || {};
  const refs = l.can_teach ? `${l.references} known-good` : l.references ? `${l.references} (teaching)` : "none (language only)";
  setText(el, "references", refs + (l.rebuilding ? ", memory being rebuilt…" : "") + (l.problem ? ` – ${l.problem}` : ""));
}

function renderHistory(el, cam) {
  const rows = cam.history || [], strip = $(el, ".history");
  strip.replaceChildren(...rows.map(r => {
    const cell = document.createElement("button");
    cell.className = `cell ${r.label}${r.decision ? " decided" : ""}`;
    cell.textContent = MARKS[r.label] || "?";
    cell.title = `${r.label} ${fmt(r.image_score)} · ${whatOf(r)}${r.decision ? " · " + r.decision : ""}`;
    cell.setAttribute("role", "listitem");
    cell.addEventListener("click", () => openDetail(cam.id || "", r.run, r.frame_id));
    return cell;
  }));
  $(el, ".history-note").textContent = `last ${rows.length}`;
  plot($(el, ".plot"), rows);
}

function plot(svg, rows) {
  const W = 400, H = 120, y = v => H - 6 - Math.max(0, Math.min(1, v)) * (H - 12);
  const x = i => (rows.length < 2 ? W / 2 : 6 + i * (W - 12) / (rows.length - 1));
  const parts = [];
  const scores = rows.map((r, i) => typeof r.image_score === "number" && r.label !== "ERROR" ? `${x(i)},${y(r.image_score)}` : null)
    .filter(Boolean);
  const limits = rows.map((r, i) => typeof r.threshold === "number" ? `${x(i)},${y(r.threshold)}` : null).filter(Boolean);
  if (limits.length) parts.push(`<polyline points="${limits.join(" ")}" fill="none" stroke="#e69f00" stroke-dasharray="6 4" stroke-width="2"/>`);
  if (scores.length) parts.push(`<polyline points="${scores.join(" ")}" fill="none" stroke="#888" stroke-width="1"/>`);
  rows.forEach((r, i) => {
    const cx = x(i);
    if (r.label === "NG") {
      const cy = y(r.image_score), d = 4;
      parts.push(`<path d="M${cx - d},${cy - d}L${cx + d},${cy + d}M${cx - d},${cy + d}L${cx + d},${cy - d}" stroke="#d55e00" stroke-width="2.5"/>`);
    } else if (r.label === "OK") {
      parts.push(`<circle cx="${cx}" cy="${y(r.image_score)}" r="3" fill="#009e73"/>`);
    } else {
      parts.push(`<path d="M${cx},4L${cx + 5},13L${cx - 5},13Z" fill="#f0e442"/>`);
    }
  });
  svg.innerHTML = parts.join("");
}

function renderGallery(tile, cam) {
  const el = tile.el, ng = cam.ng || [];
  $(el, ".ng-count").textContent = ng.length ? `${ng.length} kept` : "";
  const key = ng.map(r => `${r.run}/${r.frame_id}/${r.decision || ""}`).join(",");
  if (key === tile.galleryKey) return;
  tile.galleryKey = key;
  const box = $(el, ".gallery");
  if (!ng.length) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = "no NG frame yet";
    box.replaceChildren(p);
    return;
  }
  box.replaceChildren(...ng.map(r => {
    const b = document.createElement("button");
    b.className = "thumb";
    const img = document.createElement("img");
    img.src = withQuery(r.image, {...layerQuery(tile), width: 240});
    img.alt = `NG frame ${r.frame_id}`;
    const caption = document.createElement("span");
    const region = (r.regions || [])[0];
    caption.textContent = `${whatOf(r)} · ${fmt(r.image_score)}` + (region && region.prompt ? ` · ${region.prompt}` : "");
    b.append(img, caption);
    if (r.decision) {
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = r.decision.replace("_", " ");
      b.append(badge);
    }
    b.addEventListener("click", () => openDetail(cam.id || "", r.run, r.frame_id));
    return b;
  }));
}

function renderTile(cam) {
  const tile = tileFor(cam.id || "");
  tile.cam = cam;
  renderVerdict(tile.el, cam);
  renderImage(tile, cam);
  renderFields(tile.el, cam);
  renderHistory(tile.el, cam);
  renderGallery(tile, cam);
}

function renderBox(s) {
  const ready = document.getElementById("ready");
  ready.textContent = s.ready ? "ready" : "not ready: " + s.problem;
  ready.className = s.ready ? "" : "no";
  const box = document.getElementById("box");
  setText(box, "bundle", (s.bundle_id || "–").slice(0, 16));
  setText(box, "precision", Object.entries(s.precisions || {}).map(([g, p]) => `${g} ${p}`).join(", ") || "–");
  setText(box, "providers", (s.providers || []).map(p => p.replace("ExecutionProvider", "")).join(", ") || "–");
  setText(box, "uptime", since(s.uptime_s || 0));
  setText(box, "token", s.token_set ? "on (token set)" : "off (no api_token)");
}

async function refresh() {
  if (busy) return;
  busy = true;
  try {
    const s = await (await fetch("/api/status", {cache: "no-store"})).json();
    renderBox(s);
    const cams = s.cameras && s.cameras.length ? s.cameras : [s];
    cams.forEach(renderTile);
    if (detail) renderDetail();
  } catch (e) {
    document.getElementById("ready").textContent = "server unreachable";
    document.getElementById("ready").className = "no";
  } finally {
    busy = false;
  }
}

function findFrame(camera, run, frameId) {
  const cam = tiles[camera] && tiles[camera].cam;
  if (!cam) return null;
  const kept = (cam.ng || []).find(r => r.run === run && r.frame_id === frameId);
  return {cam, record: kept || (cam.history || []).find(r => r.run === run && r.frame_id === frameId), kept: !!kept};
}

function openDetail(camera, run, frameId) {
  detail = {camera, run, frameId, shown: ""};
  const d = document.getElementById("detail");
  $(d, ".answer").textContent = "";
  $(d, ".who").value = localStorage.getItem("lineside-who") || "";
  $(d, ".token").value = sessionStorage.getItem("lineside-token") || "";
  renderDetail();
  if (!d.open) d.showModal();
}

function renderDetail() {
  const d = document.getElementById("detail"), found = findFrame(detail.camera, detail.run, detail.frameId);
  if (!found || !found.record) return;
  const {cam, record: r, kept} = found, tile = tiles[detail.camera];
  $(d, ".title").textContent = `${r.label} · frame ${r.frame_id} · ${whatOf(r)} · score ${fmt(r.image_score)}`;
  const full = $(d, ".full");
  const src = kept ? withQuery(r.image, layerQuery(tile)) : "";
  if (src !== detail.shown) {
    detail.shown = src;
    full.hidden = !src;
    if (src) full.src = src; else full.removeAttribute("src");
  }
  const e = explanationOf(r);
  // A verdict from the history strip whose frame left the gallery: its explanation is not held here any more.
  const gone = "(this NG frame is no longer kept on the page: its explanation is in the results log)";
  $(d, ".explanation").textContent = e.text || (r.label !== "NG" ? "" : kept ? "(explanation on its way)" : gone);
  $(d, ".origin").textContent = e.origin ? `explained by: ${e.origin}` : "";
  $(d, ".regions tbody").replaceChildren(...(r.regions || []).map((g, i) => {
    const tr = document.createElement("tr");
    const name = g.prompt ? `${g.prompt} (${fmt(g.probability, 2)})` : `region (${g.refiner || "?"})`;
    for (const text of [i + 1, name, fmt(g.score, 3), `${g.area} px`]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  }));
  $(d, ".regions").hidden = !(r.regions || []).length;
  for (const b of d.querySelectorAll("[data-decision]")) {
    b.hidden = b.dataset.decision === "miss" ? r.label !== "OK" : r.label !== "NG";
    b.classList.toggle("chosen", r.decision === b.dataset.decision);
  }
  const teach = $(d, ".teach");
  teach.hidden = r.label !== "NG";
  $(d, ".add-reference").disabled = !(cam.learning && cam.learning.can_teach) || !kept;
  $(d, ".feedback").hidden = r.label === "ERROR";
}

async function decide(decision) {
  const d = document.getElementById("detail"), answer = $(d, ".answer");
  const who = $(d, ".who").value.trim(), token = $(d, ".token").value.trim();
  localStorage.setItem("lineside-who", who);
  sessionStorage.setItem("lineside-token", token);
  const body = {run: detail.run, frame_id: detail.frameId, decision, by: who || "operator"};
  if (decision === "false_alarm" && $(d, ".add-reference").checked) body.add_reference = true;
  const camera = detail.camera ? `?camera=${encodeURIComponent(detail.camera)}` : "";
  try {
    const r = await fetch("/api/feedback" + camera, {
      method: "POST", headers: {"Content-Type": "application/json", Authorization: `Bearer ${token}`},
      body: JSON.stringify(body),
    });
    const data = await r.json();
    answer.className = r.ok ? "answer" : "answer bad";
    answer.textContent = r.ok ? `written: ${decision.replace("_", " ")} by ${data.by}` +
      (data.reference_added ? "; added to the known-good references (memory rebuilding)" : "") +
      (data.reference_refused ? `; not taught as a reference: ${data.reference_refused}` : "") :
      `refused (${r.status}): ${data.error}`;
    refresh();
  } catch (e) {
    answer.className = "answer bad";
    answer.textContent = "server unreachable";
  }
}

for (const b of document.querySelectorAll("[data-decision]")) {
  b.addEventListener("click", () => decide(b.dataset.decision));
}
document.getElementById("detail").addEventListener("close", () => { detail = null; });
refresh();
setInterval(refresh, 1000);
