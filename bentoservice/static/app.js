"use strict";
const $ = (id) => document.getElementById(id);
const drop = $("drop"), input = $("file");

fetch("/model").then((r) => r.json()).then((m) => {
  $("model-version").textContent = m.version ? `${m.name} v${m.version}` : "not loaded";
  if (m.data) {
    // where the training data came from; a generated stand-in set is said plainly
    $("model-data").textContent = `· trained on ${m.data.synthetic ? "GENERATED stand-in images" : m.data.source}`;
    $("data-note").textContent = m.data.note;
    $("data-note").hidden = !m.data.synthetic;
  }
  if (m.card) {
    // the version's model card (markdown, readable as it is): the same text as /model/card
    $("card-text").textContent = m.card;
    $("card").hidden = false;
  } else {
    $("card-link").hidden = true;
  }
}).catch(() => { $("model-version").textContent = "unavailable"; });

function showError(text) {
  $("result").hidden = true;
  $("error").textContent = text;
  $("error").hidden = false;
}

// Why: the Grad-CAM heatmap of the answer (POST /explain, a PNG), shown under it.
async function explain(file, label) {
  const form = new FormData();
  form.append("image", file, file.name);
  $("explain-status").textContent = "Computing where the model looked…";
  try {
    const response = await fetch("/explain", { method: "POST", body: form });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      $("explain-status").textContent = `No explanation: ${body.error || response.statusText}`;
      return;
    }
    const img = $("heatmap");
    if (img.src) URL.revokeObjectURL(img.src);
    img.src = URL.createObjectURL(await response.blob());
    const served = response.headers.get("x-catsdogs-served-variant");
    const used = response.headers.get("x-catsdogs-explained-with");
    $("explain-note").textContent =
      `Where the model found “${response.headers.get("x-catsdogs-label") || label}”: red most, ` +
      `blue least (Grad-CAM of the eager torch network, ${used}` +
      (served && served !== used ? `; answers are served by ${served})` : ")");
    $("explain").hidden = false;
    $("explain-status").textContent = "";
  } catch (err) {
    $("explain-status").textContent = `No explanation: ${err}`;
  }
}

// Feedback: the true label of the last answer (POST /feedback with its prediction_id).
let predictionId = null;

async function sendFeedback(label) {
  const status = $("feedback-status");
  status.textContent = "Sending…";
  try {
    const response = await fetch("/feedback", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ prediction_id: predictionId, label }),
    });
    const body = await response.json().catch(() => ({}));
    status.textContent = response.ok
      ? `Thanks: recorded as ${body.label}.`
      : `Not recorded: ${body.error || response.statusText}`;
  } catch (err) {
    status.textContent = `Not recorded: ${err}`;
  }
}

document.querySelectorAll("#feedback button").forEach((button) => {
  button.addEventListener("click", () => sendFeedback(button.dataset.label));
});

async function classify(file) {
  $("error").hidden = true;
  $("result").hidden = true;
  $("explain").hidden = true;
  $("feedback").hidden = true;
  $("feedback-status").textContent = "";
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  preview.onerror = () => { preview.hidden = true; };
  $("drop-text").textContent = `${file.name}: classifying…`;
  const form = new FormData();
  form.append("image", file, file.name);
  try {
    const response = await fetch("/predict", { method: "POST", body: form });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      showError(`Could not classify ${file.name}: ${body.error || response.statusText}`);
      return;
    }
    const pct = Math.round(body.confidence * 1000) / 10;
    $("label").textContent = body.label;
    $("confidence").textContent = `${pct}% confident`;
    $("bar-fill").style.width = `${pct}%`;
    // out of distribution: the picture is unlike the training photos (null: not calibrated)
    $("ood-note").hidden = body.in_distribution !== false;
    // null when the service keeps no prediction log: nothing to label
    predictionId = body.prediction_id;
    $("feedback").hidden = !predictionId;
    $("model-version").textContent = `${body.model.name} v${body.model.version}`;
    $("result").hidden = false;
    explain(file, body.label);
  } catch (err) {
    showError(`The service did not answer: ${err}`);
  } finally {
    $("drop-text").textContent = "Drop another photo, or click to choose one";
  }
}

input.addEventListener("change", () => { if (input.files[0]) classify(input.files[0]); });
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") input.click(); });
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => {
  e.preventDefault(); drop.classList.add("over");
}));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => {
  e.preventDefault(); drop.classList.remove("over");
}));
drop.addEventListener("drop", (e) => {
  const file = e.dataTransfer.files[0];
  if (file) classify(file);
});
