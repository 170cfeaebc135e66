// The photo page: upload -> POST /predict -> bars, decisions, warnings, Grad-CAM.
// Plain browser JavaScript, no build step; every text from the server is set as text.
"use strict";

const RULES = {
  argmax: "Most probable class",
  mec: "Minimum expected cost (missing a disease costs more than a false alarm)",
  min_expected_cost: "Minimum expected cost (missing a disease costs more than a false alarm)",
};
const TASKS = { any_disease: "any disease (vs normal)", ra: "rheumatoid arthritis (vs rest)" };
let displayNames = {};
let operatingPoints = {};

function $(id) { return document.getElementById(id); }

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function pct(p) { return (100 * p).toFixed(1) + "%"; }

// A locked-threshold rule is "<task>_<kind>" (e.g. ra_sensitivity): 1 = the task's call.
function thresholdOf(rule) {
  for (const [task, kinds] of Object.entries(operatingPoints)) {
    for (const [kind, point] of Object.entries(kinds)) {
      if (`${task}_${kind}` === rule) return { task, point };
    }
  }
  return null;
}

function ruleLabel(rule) {
  if (RULES[rule]) return RULES[rule];
  const t = thresholdOf(rule);
  if (!t) return "Locked threshold: " + rule.replace(/_/g, " ");
  return `Locked threshold for ${TASKS[t.task] || t.task}, chosen for ${t.point.target}`;
}

function decisionText(rule, value) {
  if (typeof value === "string") return displayNames[value] || value;
  const t = thresholdOf(rule);
  const bar = t ? ` (score ${value ? "reaches" : "below"} ${Number(t.point.threshold).toFixed(3)})` : "";
  return (value ? "Yes" : "No") + bar;
}

async function loadModel() {
  try {
    const info = await (await fetch("/model")).json();
    info.classes.forEach((c, i) => { displayNames[c] = info.display_names[i]; });
    operatingPoints = (info.card && info.card.operating_points) || {};
    const list = $("caveat-list");
    list.replaceChildren(...info.caveats.map((c) => el("li", {}, c)));
  } catch (e) {
    $("caveat-list").replaceChildren(el("li", {}, "The model's description could not be loaded."));
  }
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("status").textContent = "";
}

function render(out) {
  const entries = Object.entries(out.probabilities);
  const [topClass, topP] = entries.reduce((a, b) => (b[1] > a[1] ? b : a));
  $("top-class").textContent = displayNames[topClass] || topClass;
  $("top-pct").textContent = pct(topP);
  $("bars").replaceChildren(...entries.map(([c, p]) => {
    const row = el("div", { class: "row", "data-class": c });
    row.append(el("span", { class: "name" }, displayNames[c] || c));
    const track = el("div", { class: "track" });
    track.append(el("div", { class: "fill", style: `width:${(100 * p).toFixed(1)}%` }));
    row.append(track, el("span", { class: "pct" }, pct(p)));
    return row;
  }));
  $("decisions").tBodies[0].replaceChildren(...Object.entries(out.decisions).map(([r, c]) => {
    const tr = el("tr");
    tr.append(el("td", { class: "rule" }, ruleLabel(r)), el("td", {}, decisionText(r, c)));
    return tr;
  }));
  $("warning-list").replaceChildren(...out.quality.map((w) => el("li", {}, w.message)));
  $("warnings").hidden = out.quality.length === 0;
  $("gradcam").src = out.gradcam;
  $("result").hidden = false;
}

async function send(file) {
  $("error").hidden = true;
  $("status").textContent = "Looking at " + file.name + "…";
  const body = new FormData();
  body.append("file", file);
  let response;
  try {
    response = await fetch("/predict", { method: "POST", body });
  } catch (e) {
    showError("The server cannot be reached; check that it is running.");
    return;
  }
  let out;
  try { out = await response.json(); } catch (e) { out = {}; }
  if (!response.ok) {
    showError(out.error || `The server answered ${response.status}.`);
    return;
  }
  $("status").textContent = "";
  render(out);
}

["file", "camera"].forEach((id) => {
  $(id).addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) send(file);
    event.target.value = "";   // choosing the same file again sends it again
  });
});
loadModel();
