// The model card page: GET /model -> summary, figures with 95% intervals, thresholds, plots.
// Plain browser JavaScript, no build step; every text from the server is set as text.
"use strict";

const KEY_FIGURES = [
  ["accuracy", "accuracy"], ["balanced_accuracy", "balanced accuracy"],
  ["auroc_macro", "AUROC (macro)"], ["auroc_any_disease", "AUROC, any disease vs normal"],
  ["auroc_ra", "AUROC, RA vs rest"], ["sensitivity_ra", "sensitivity for RA"],
  ["specificity_ra", "specificity for RA"], ["under_severity_rate", "under-severity rate"],
  ["qwk", "quadratic weighted kappa"], ["brier", "Brier score"],
  ["ece_10bin", "calibration error (ECE, 10 bins)"], ["log_loss", "log loss"],
];
const RULE_NAMES = { cnn_calibrated: "calibrated argmax", cnn_mec: "minimum expected cost" };

function $(id) { return document.getElementById(id); }

function row(cells) {
  const tr = document.createElement("tr");
  cells.forEach((c) => {
    const td = document.createElement("td");
    td.textContent = c;
    tr.append(td);
  });
  return tr;
}

function num(x, digits = 3) {
  return x === null || x === undefined || Number.isNaN(x) ? "n/a" : Number(x).toFixed(digits);
}

function summary(info) {
  const c = info.card;
  const data = (c.cv_figures || {}).data || {};
  const t = (c.calibration || {}).temperature;
  return [
    ["kind", `${c.kind || "?"} of ${(c.members || {}).n || "?"} fold models`],
    ["backbone", `${c.model} (${c.weights === "none" ? "random weights" : c.weights})`],
    ["loss", c.loss],
    ["input", `${info.image_size} px square (aspect kept, padded)`],
    ["classes", info.display_names.join(", ")],
    ["trained on", `${data.n || "?"} photos of ${data.n_subjects || "?"} people (${data.source || "?"})`],
    ["calibration", `one temperature T = ${num(t)} (${(c.calibration || {}).method || ""})`],
    ["decision rules", Object.keys(c.decision_rules || {}).join(", ")],
  ];
}

function figures(card) {
  const clinical = ((card.cv_figures || {}).clinical) || {};
  const rows = [];
  Object.entries(clinical).forEach(([rule, block]) => {
    KEY_FIGURES.forEach(([key, label]) => {
      const f = block[key];
      if (!f) return;
      const ci = f.ci95 || [null, null];
      rows.push([RULE_NAMES[rule] || rule, label, num(f.value), `${num(ci[0])} to ${num(ci[1])}`]);
    });
  });
  return rows;
}

function thresholds(card) {
  const rows = [];
  Object.entries(card.operating_points || {}).forEach(([task, kinds]) => {
    Object.entries(kinds).forEach(([kind, p]) => {
      const name = `${task}_${kind}`;
      if (p.status === "chosen") {
        rows.push([name, `p >= ${num(p.threshold)} (${p.target})`, num(p.reached)]);
      } else {
        rows.push([name, `none: ${p.status} (${p.target})`, "n/a"]);
      }
    });
  });
  return rows;
}

async function main() {
  const info = await (await fetch("/model")).json();
  const card = info.card;
  $("name").textContent = `Locked model of run ${card.name}`;
  $("intended-use").textContent = card.intended_use || "";
  const fill = (id, rows) => $(id).tBodies[0].replaceChildren(...rows.map(row));
  fill("summary", summary(info));
  fill("figures", figures(card));
  fill("thresholds", thresholds(card));
  const li = (text) => { const n = document.createElement("li"); n.textContent = text; return n; };
  $("caveat-list").replaceChildren(...info.caveats.map(li));
  $("card-caveats").replaceChildren(...(card.caveats || []).map(li));
  $("plots").replaceChildren(...info.plots.map((name) => {
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    img.src = `/model/plots/${encodeURIComponent(name)}`;
    img.alt = name;
    img.className = "card-figure";
    const cap = document.createElement("figcaption");
    cap.textContent = name;
    fig.append(img, cap);
    return fig;
  }));
  if (info.plots.length === 0) $("plots").textContent = "The run wrote no plots.";
  $("raw").textContent = JSON.stringify(card, null, 2);
}
main();
