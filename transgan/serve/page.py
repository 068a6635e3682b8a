"""The web page: one HTML document (class picker, truncation slider, seed, count, Generate and New
buttons, grid, larger view), its stylesheet and its script. Served from constants, so no request
can name a file on the server.

The HTML is filled in once per app with the model's facts (escaped); the script asks
``POST /api/generate`` and puts the returned PNGs in the grid. On load it reads class, seed,
count and truncation from the URL (a permalink) and generates at once; after each answer it
writes them back into the URL, links the grid's PNG (``/api/generate.png``) for download and
each image's PNG. Captions are set with ``textContent``, never as HTML.
"""

from __future__ import annotations

import html
import json
from typing import Any

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; background: #fafafa; }
h1 { font-size: 1.4rem; margin: 0 0 .3rem; }
.model { color: #666; margin: 0 0 1rem; font-size: .9rem; }
form { display: flex; flex-wrap: wrap; gap: 1rem; align-items: end; margin-bottom: 1rem; }
label { display: flex; flex-direction: column; font-size: .85rem; gap: .25rem; }
input[type=number] { width: 7rem; }
button { padding: .45rem 1.2rem; font-size: 1rem; cursor: pointer; }
.hint { color: #666; font-size: .8rem; margin: -.5rem 0 .8rem; max-width: 60rem; }
#links { font-size: .85rem; min-height: 1.2rem; display: flex; gap: 1rem; }
#error { color: #b00020; min-height: 1.2rem; }
#status { color: #555; min-height: 1.2rem; font-size: .85rem; }
#grid img { cursor: zoom-in; }
#grid a { color: #555; }
#viewer { padding: .8rem; border: none; background: #fff; text-align: center; cursor: zoom-out; }
#viewer::backdrop { background: rgba(0, 0, 0, .7); }
#viewer img { width: min(80vw, 80vh, 512px); height: min(80vw, 80vh, 512px); image-rendering: pixelated;
              display: block; background: #000; }
#viewer p { margin: .5rem 0 0; font-size: .9rem; color: #333; }
#grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(96px, 1fr)); gap: .6rem; max-width: 60rem; }
#grid figure { margin: 0; text-align: center; font-size: .75rem; color: #555; }
#grid img { width: 96px; height: 96px; image-rendering: pixelated; background: #000; display: block; margin: auto; }
"""

SCRIPT = r"""
"use strict";
const info = JSON.parse(document.getElementById("model-info").textContent);
const form = document.getElementById("controls");
const slider = document.getElementById("truncation");
const sliderText = document.getElementById("truncation-value");
const button = document.getElementById("generate");
const newButton = document.getElementById("new");
const seedBox = document.getElementById("seed");
const countBox = document.getElementById("count");
const picker = document.getElementById("class");
const grid = document.getElementById("grid");
const error = document.getElementById("error");
const status = document.getElementById("status");
const gridLink = document.getElementById("download-grid");
const permalink = document.getElementById("permalink");
const viewer = document.getElementById("viewer");
const viewerImage = document.getElementById("viewer-image");
const viewerCaption = document.getElementById("viewer-caption");

function truncationValue() {
  const v = parseFloat(slider.value);
  // For a z threshold the slider's last stop means "no truncation".
  return info.truncation.off_above !== null && v > info.truncation.off_above ? null : v;
}
function showTruncation() {
  const v = truncationValue();
  sliderText.textContent = v === null ? "off" : v.toFixed(2);
}
slider.addEventListener("input", showTruncation);

function message(body) {
  if (body && typeof body.detail === "string") return body.detail;
  return "the server refused the request";
}

// The request the controls describe, also as URL parameters (permalink, grid download).
function currentRequest() {
  const request = {seed: Number(seedBox.value), count: Number(countBox.value), truncation: truncationValue()};
  if (picker) request["class"] = Number(picker.value);
  return request;
}
function queryOf(request) {
  const params = new URLSearchParams();
  if (request["class"] !== undefined) params.set("class", request["class"]);
  params.set("seed", request.seed);
  params.set("count", request.count);
  if (request.truncation !== null) params.set("truncation", request.truncation);
  return params;
}

// Permalink parameters back into the controls; values the controls cannot take are left as they are.
function restoreFromUrl() {
  const params = new URLSearchParams(window.location.search);
  const whole = (name, lo, hi) => {
    const text = params.get(name);
    if (text === null || !/^[0-9]{1,10}$/.test(text)) return null;
    const v = Number(text);
    return v >= lo && v <= hi ? v : null;
  };
  const c = whole("class", 0, info.classes.length - 1);
  if (picker && c !== null) picker.value = String(c);
  const seed = whole("seed", 0, info.limits.max_seed);
  if (seed !== null) seedBox.value = String(seed);
  const count = whole("count", 1, info.limits.max_count);
  if (count !== null) countBox.value = String(count);
  const t = params.get("truncation");
  if (t !== null && /^[0-9]+(\.[0-9]+)?$/.test(t)) {
    const v = Number(t);
    if (v >= info.truncation.min && v <= info.truncation.max) slider.value = String(v);
  } else if (params.has("seed") && info.truncation.off_above !== null) {
    slider.value = slider.max;  // a permalink without truncation means none
  }
}

function openViewer(img) {
  viewerImage.src = img.src;
  viewerImage.alt = img.alt;
  viewerCaption.textContent = img.alt;
  viewer.showModal();
}
viewer.addEventListener("click", () => viewer.close());

function show(body, request) {
  grid.replaceChildren();
  for (const item of body.images) {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.src = item.png;
    img.alt = (item.class_name === null ? "" : item.class_name + ", ") + "seed " + item.seed;
    img.title = "click for a larger view";
    img.dataset.seed = item.seed;
    img.dataset.class = item["class"] === null ? "" : item["class"];
    img.addEventListener("click", () => openViewer(img));
    const caption = document.createElement("figcaption");
    caption.textContent = img.alt + " ";
    const save = document.createElement("a");
    save.href = item.png;
    save.download = (item["class"] === null ? "" : "class" + item["class"] + "-") + "seed" + item.seed + ".png";
    save.textContent = "download";
    save.className = "download-one";
    caption.append(save);
    figure.append(img, caption);
    grid.append(figure);
  }
  const query = queryOf(request);
  gridLink.href = "api/generate.png?" + query.toString();
  gridLink.hidden = false;
  history.replaceState(null, "", "?" + query.toString());
  permalink.href = window.location.href;
  permalink.hidden = false;
  status.textContent = body.images.length + " images in " + body.elapsed_ms.toFixed(0) + " ms";
  grid.dataset.ready = "true";
}

async function generate(event) {
  if (event) event.preventDefault();
  error.textContent = "";
  const request = currentRequest();
  button.disabled = newButton.disabled = true;
  status.textContent = "generating...";
  try {
    const response = await fetch("api/generate", {method: "POST", headers: {"Content-Type": "application/json"},
                                                  body: JSON.stringify(request)});
    const body = await response.json();
    if (!response.ok) { error.textContent = message(body); status.textContent = ""; return; }
    show(body, request);
  } catch (e) {
    error.textContent = "request failed: " + e;
    status.textContent = "";
  } finally {
    button.disabled = newButton.disabled = false;
  }
}
form.addEventListener("submit", generate);
// A submit the browser blocks (a value outside the field's bounds) fires "invalid", not "submit":
// clear the last server error so it is not read as the answer to this one.
form.addEventListener("invalid", () => { error.textContent = ""; status.textContent = ""; }, true);
newButton.addEventListener("click", () => {
  const random = new Uint32Array(1);
  crypto.getRandomValues(random);
  seedBox.value = String(random[0] % (info.limits.max_seed + 1));
  if (form.reportValidity()) generate(null);
});

restoreFromUrl();
showTruncation();
if (form.checkValidity()) generate(null);  // images on first load
"""


def render_page(info: dict[str, Any]) -> str:
    """The page for a model described by ``info`` (the JSON of ``GET /api/info``)."""
    e = html.escape
    title = e(info["title"])
    t, limits = info["truncation"], info["limits"]
    if info["classes"]:
        options = "\n".join(f'<option value="{c["index"]}">{e(c["name"])}</option>' for c in info["classes"])
        picker = f'<label>Class<select id="class" name="class">{options}</select></label>'
    else:
        picker = ""
    slider_max = t["max"] + t["step"] if t["off_above"] is not None else t["max"]
    what = "psi (w space)" if t["kind"] == "psi" else "|z| threshold"
    if t["kind"] == "psi":
        hint = ("Truncation pulls each image toward the class average: lower psi gives more typical, cleaner "
                "but less varied images; 1 is none.")
    else:
        hint = ("Truncation redraws latent entries larger than the threshold: a lower threshold gives more "
                "typical, cleaner but less varied images; off is none.")
    # The JSON goes into a <script type="application/json"> block: escape "<" so no "</script>" can close it.
    data = json.dumps(info).replace("<", "\\u003c")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="static/app.css">
</head>
<body>
<h1>{title}</h1>
<p class="model">{e(info["description"])}</p>
<form id="controls">
  {picker}
  <label>Truncation {e(what)}: <span id="truncation-value"></span>
    <input type="range" id="truncation" min="{t['min']}" max="{slider_max}" step="{t['step']}"
           value="{t['slider_default']}"></label>
  <label>Seed<input type="number" id="seed" min="0" max="{limits['max_seed']}" step="1" value="0"></label>
  <label>Count<input type="number" id="count" min="1" max="{limits['max_count']}" step="1"
         value="{min(8, limits['max_count'])}"></label>
  <button type="submit" id="generate">Generate</button>
  <button type="button" id="new" title="a random seed">New</button>
</form>
<p class="hint" id="truncation-hint">{e(hint)}</p>
<div id="links"><a id="download-grid" download="grid.png" hidden>download grid</a>
  <a id="permalink" hidden>permalink</a></div>
<div id="error" role="alert"></div>
<div id="status"></div>
<div id="grid"></div>
<dialog id="viewer"><img id="viewer-image" alt=""><p id="viewer-caption"></p></dialog>
<script type="application/json" id="model-info">{data}</script>
<script src="static/app.js"></script>
</body>
</html>
"""
