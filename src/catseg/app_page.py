"""The page `catseg app` serves: one HTML document with inline CSS and JavaScript, nothing fetched elsewhere."""

from __future__ import annotations

import html
import json
from typing import Any

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>catseg: __RUN__</title>
<style>
  :root { font-family: system-ui, sans-serif; color: #1d2330; background: #f4f5f7; }
  body { margin: 0 auto; max-width: 1200px; padding: 1.2rem; }
  h1 { font-size: 1.4rem; margin: 0 0 .2rem; }
  .sub { color: #5b6475; margin-bottom: 1rem; }
  .legend span { display: inline-flex; align-items: center; margin-right: 1rem; }
  .swatch { width: .9rem; height: .9rem; border-radius: 3px; margin-right: .35rem; border: 1px solid #0003; }
  #drop { border: 2px dashed #8a93a6; border-radius: 10px; padding: 1.6rem; text-align: center;
          background: #fff; cursor: pointer; margin: 1rem 0; }
  #drop.over { background: #e8f0ff; border-color: #3d6fd8; }
  .controls { display: flex; gap: 1.2rem; align-items: center; flex-wrap: wrap; margin-bottom: 1rem; }
  #cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 1rem; }
  .card { background: #fff; border-radius: 10px; padding: .8rem; box-shadow: 0 1px 3px #0002; }
  .card h2 { font-size: 1rem; margin: 0 0 .5rem; overflow-wrap: anywhere; }
  .card img { width: 100%; max-height: 420px; object-fit: contain; border-radius: 6px; }
  .card table { width: 100%; border-collapse: collapse; margin: .5rem 0; font-size: .9rem; }
  .card td { padding: .15rem .3rem; border-bottom: 1px solid #eee; }
  .card td.share { text-align: right; font-variant-numeric: tabular-nums; }
  .card a { margin-right: 1rem; }
  .error { color: #b00020; font-weight: 600; }
  .busy { color: #5b6475; }
  code { background: #eceef2; padding: .1rem .3rem; border-radius: 4px; }
</style>
</head>
<body>
<h1>catseg &middot; __RUN__</h1>
<div class="sub">Drop photos to see their masks. Everything runs on this computer; nothing is sent elsewhere.
  Backend: __BACKEND__.</div>
<div class="legend" id="legend"></div>
<div id="drop" tabindex="0">Drop photos here, or click to choose (JPEG, PNG, ...; up to __MAXMP__ million pixels)
  <input id="files" type="file" accept="image/*" multiple hidden></div>
<div class="controls">
  <label id="slider-box" hidden>threshold <input id="threshold" type="range" min="0.01" max="0.99" step="0.01">
    <output id="threshold-value"></output></label>
  <span class="sub">API: <code>curl --data-binary @photo.jpg <span id="origin"></span>api/mask -o mask.png</code></span>
</div>
<div id="cards"></div>
<script>
const INFO = __INFO__;
document.getElementById("origin").textContent = location.origin + "/";
const legend = document.getElementById("legend");
INFO.classes.forEach((name, i) => {
  const c = INFO.colors[i] || [0, 0, 0];
  const span = document.createElement("span");
  span.innerHTML = `<i class="swatch" style="background:rgb(${c.join(",")})"></i>`;
  span.append(name);
  legend.append(span);
});
const slider = document.getElementById("threshold"), shown = document.getElementById("threshold-value");
if (INFO.slider) {
  document.getElementById("slider-box").hidden = false;
  slider.value = INFO.threshold; shown.textContent = Number(INFO.threshold).toFixed(2);
}
const drop = document.getElementById("drop"), input = document.getElementById("files");
const cards = document.getElementById("cards");
const items = [];
drop.addEventListener("click", () => input.click());
drop.addEventListener("keydown", e => { if (e.key === "Enter" || e.key === " ") input.click(); });
drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", e => { e.preventDefault(); drop.classList.remove("over"); add(e.dataTransfer.files); });
input.addEventListener("change", () => { add(input.files); input.value = ""; });
let timer = null;
slider.addEventListener("input", () => {
  shown.textContent = Number(slider.value).toFixed(2);
  clearTimeout(timer);
  timer = setTimeout(() => items.forEach(item => refresh(item)), 120);
});

function stem(name) { return name.replace(/\\.[^.]*$/, "") || "photo"; }
function threshold() { return INFO.slider ? "?threshold=" + slider.value : ""; }

function add(files) {
  const top = cards.firstChild;  // newest drop first, its photos in the order given
  for (const file of files) {
    const card = document.createElement("div");
    card.className = "card"; card.dataset.status = "busy";
    card.innerHTML = `<h2></h2><div class="busy">predicting...</div>`;
    card.querySelector("h2").textContent = file.name;
    cards.insertBefore(card, top);
    const item = {file, card, id: null};
    items.push(item);
    upload(item);
  }
}

async function upload(item) {
  item.card.dataset.status = "busy";
  try {
    const response = await fetch("api/predict" + threshold() + (threshold() ? "&" : "?") +
                                 "name=" + encodeURIComponent(item.file.name),
                                 {method: "POST", body: item.file, headers: {"Content-Type": "application/octet-stream"}});
    show(item, response.status, await response.json());
  } catch (err) {
    show(item, 0, {error: "the app did not answer (" + err + "); is it still running?"});
  }
}

async function refresh(item) {
  if (!item.id) return;
  const response = await fetch("api/predict/" + item.id + threshold());
  if (response.status === 404) return upload(item);
  show(item, response.status, await response.json());
}

function show(item, status, doc) {
  const card = item.card;
  card.replaceChildren();
  const title = document.createElement("h2"); title.textContent = item.file.name; card.append(title);
  if (status !== 200) {
    const p = document.createElement("p"); p.className = "error";
    p.textContent = doc.error || ("error " + status); card.append(p);
    card.dataset.status = "error"; return;
  }
  item.id = doc.id;
  const img = document.createElement("img"); img.className = "overlay";
  img.alt = "overlay of " + item.file.name; img.src = "data:image/png;base64," + doc.overlay_png;
  card.append(img);
  const table = document.createElement("table");
  for (const [name, share] of Object.entries(doc.shares)) {
    const row = table.insertRow();
    row.insertCell().textContent = name;
    const cell = row.insertCell(); cell.className = "share"; cell.textContent = (100 * share).toFixed(1) + " %";
  }
  card.append(table);
  const info = document.createElement("div"); info.className = "sub";
  info.textContent = `${doc.width} x ${doc.height}` + (INFO.slider ? `, threshold ${Number(doc.threshold).toFixed(2)}` : "");
  card.append(info);
  for (const [kind, data] of [["mask", doc.mask_png], ["overlay", doc.overlay_png]]) {
    const a = document.createElement("a"); a.className = "download-" + kind;
    a.href = "data:image/png;base64," + data; a.download = stem(item.file.name) + "_" + kind + ".png";
    a.textContent = "download " + kind + " PNG"; card.append(a);
  }
  card.dataset.status = "done";
}
</script>
</body>
</html>
"""


def page_html(info: dict[str, Any]) -> str:
    """Return the page for an app whose /api/info is `info`."""
    data = json.dumps(info).replace("<", "\\u003c")  # never closes the script element
    return (_PAGE.replace("__INFO__", data).replace("__RUN__", html.escape(str(info["run"])))
            .replace("__BACKEND__", html.escape(str(info["backend"])))
            .replace("__MAXMP__", f"{info['max_pixels'] / 1e6:g}"))
