// The review page: label the review queue (GET /review/queue) one picture at a time with the
// keyboard (c, d, n; s skips), recording each label like feedback (POST /feedback). When the
// service has API keys, the page asks for one and sends it (X-API-Key) with every request; it
// is kept in this tab's sessionStorage only.
const $ = (id) => document.getElementById(id);
const KEY = "catsdogs-api-key";
let items = [];
let current = null;
let pictureUrl = null;
let waiting = {};                 // unlabelled pictures by reason, as the last load said
const skipped = new Set();

function headers(extra = {}) {
  const key = sessionStorage.getItem(KEY);
  return key ? { ...extra, "X-API-Key": key } : extra;
}

function askForKey() {
  $("key-form").hidden = false;
  $("key").focus();
}

function fail(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

async function load() {
  const response = await fetch("/review/queue?limit=50", { headers: headers() });
  if (response.status === 401) return askForKey();
  const body = await response.json().catch(() => ({}));
  if (!response.ok) return fail(`No queue: ${body.error || response.statusText}`);
  items = body.items.filter((item) => !skipped.has(item.prediction_id));
  waiting = body.waiting;
  showWaiting();
  show();
}

function showWaiting() {
  const total = Object.values(waiting).reduce((a, b) => a + b, 0);
  $("waiting").textContent = `${total} waiting (` + Object.entries(waiting)
    .map(([reason, n]) => `${reason} ${n}`).join(", ") + ")";
}

async function show() {
  current = items.shift() || null;
  $("item").hidden = $("buttons").hidden = current === null;
  if (pictureUrl) URL.revokeObjectURL(pictureUrl);
  pictureUrl = null;
  if (current === null) {
    $("status").textContent = "Nothing left to review.";
    return;
  }
  const response = await fetch(
    `/review/picture?prediction_id=${encodeURIComponent(current.prediction_id)}`,
    { headers: headers() });
  if (!response.ok) {             // deleted meanwhile (retention): the next one
    skipped.add(current.prediction_id);
    return show();
  }
  pictureUrl = URL.createObjectURL(await response.blob());
  $("picture").src = pictureUrl;
  $("picture").dataset.predictionId = current.prediction_id;
  $("about").textContent = `kept for ${current.kept_for}: the model said ${current.label} ` +
    `(${(current.confidence * 100).toFixed(1)}%), v${current.model_version}`;
}

async function label(value) {
  if (current === null) return;
  const id = current.prediction_id;
  const response = await fetch("/feedback", {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify({ prediction_id: id, label: value }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) return fail(`Not recorded: ${body.error || response.statusText}`);
  $("status").textContent = `Recorded as ${body.label}.`;
  skipped.add(id);                // labelled: not shown again even if the queue lags
  waiting[current.kept_for] -= 1;
  showWaiting();
  if (items.length === 0) return load();
  show();
}

function skip() {
  if (current === null) return;
  skipped.add(current.prediction_id);
  $("status").textContent = "Skipped.";
  if (items.length === 0) return load();
  show();
}

document.addEventListener("keydown", (event) => {
  if (event.target instanceof HTMLInputElement || event.ctrlKey || event.metaKey) return;
  const choice = { c: "cat", d: "dog", n: "neither" }[event.key.toLowerCase()];
  if (choice) label(choice);
  else if (event.key.toLowerCase() === "s") skip();
});
document.querySelectorAll("#buttons button").forEach((button) => {
  button.addEventListener("click", () => (button.dataset.skip ? skip() : label(button.dataset.label)));
});
$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("key").value.trim());
  $("key-form").hidden = true;
  $("error").hidden = true;
  load();
});
load();
