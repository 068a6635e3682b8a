"""The web page: one HTML document (class picker, truncation slider, seed, count, generate button, grid),
its stylesheet and its script. Served from constants, so no request can name a file on the server.

The HTML is filled in once per app with the model's facts (escaped); the script asks
``POST /api/generate`` and puts the returned PNGs in the grid. Captions are set with
``textContent``, never as HTML.
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
#error { color: #b00020; min-height: 1.2rem; }
#status { color: #555; min-height: 1.2rem; font-size: .85rem; }
#grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(96px, 1fr)); gap: .6rem; max-width: 60rem; }
#grid figure { margin: 0; text-align: center; font-size: .75rem; color: #555; }
#grid img { width: 96px; height: 96px; image-rendering: pixelated; background: #000; display: block; margin: auto; }
"""

SCRIPT = """
"use strict";
const info = JSON.parse(document.getElementById("model-info").textContent);
const form = document.getElementById("controls");
const slider = document.getElementById("truncation");
const sliderText = document.getElementById("truncation-value");
const button = document.getElementById("generate");
const grid = document.getElementById("grid");
const error = document.getElementById("error");
const status = document.getElementById("status");

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
showTruncation();

function message(body) {
  if (body && typeof body.detail === "string") return body.detail;
  return "the server refused the request";
}

async function generate(event) {
  event.preventDefault();
  error.textContent = "";
  const request = {seed: Number(document.getElementById("seed").value),
                   count: Number(document.getElementById("count").value),
                   truncation: truncationValue()};
  const picker = document.getElementById("class");
  if (picker) request["class"] = Number(picker.value);
  button.disabled = true;
  status.textContent = "generating...";
  try {
    const response = await fetch("api/generate", {method: "POST", headers: {"Content-Type": "application/json"},
                                                  body: JSON.stringify(request)});
    const body = await response.json();
    if (!response.ok) { error.textContent = message(body); status.textContent = ""; return; }
    grid.replaceChildren();
    for (const item of body.images) {
      const figure = document.createElement("figure");
      const img = document.createElement("img");
      img.src = item.png;
      img.alt = (item.class_name === null ? "" : item.class_name + ", ") + "seed " + item.seed;
      img.dataset.seed = item.seed;
      img.dataset.class = item["class"] === null ? "" : item["class"];
      const caption = document.createElement("figcaption");
      caption.textContent = img.alt;
      figure.append(img, caption);
      grid.append(figure);
    }
    status.textContent = body.images.length + " images in " + body.elapsed_ms.toFixed(0) + " ms";
    grid.dataset.ready = "true";
  } catch (e) {
    error.textContent = "request failed: " + e;
    status.textContent = "";
  } finally {
    button.disabled = false;
  }
}
form.addEventListener("submit", generate);
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
</form>
<div id="error" role="alert"></div>
<div id="status"></div>
<div id="grid"></div>
<script type="application/json" id="model-info">{data}</script>
<script src="static/app.js"></script>
</body>
</html>
"""
