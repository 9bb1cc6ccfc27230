// One face at a time. In a job with items in review, the next is the one a verdict teaches most
// (the gateway's active learning) and a verdict writes it or keeps it out; otherwise the job's
// candidates are labelled in order for the next training. Keys: g good, b bad, s skip, u undo, t train.
import { api, el, typing } from "/static/common.js";

const root = document.getElementById("review");
const jobId = root.dataset.job;
const image = document.getElementById("review-image");
const caption = document.getElementById("review-caption");
const counts = { good: 0, bad: 0, skip: 0 };
const history = []; // {ref, verdict}
let queue = [];
let mode = Number(root.dataset.review) > 0 ? "review" : "label";
let current = null;
let labelOffset = 0;

function setCount(name, value) { document.getElementById(`count-${name}`).textContent = value; }

async function refill() {
  if (mode === "review") {
    const reply = await api(`/api/review/${jobId}?count=20`);
    setCount("waiting", reply.waiting);
    queue = reply.items.filter((i) => !history.some((h) => h.ref === i.id));
    if (!queue.length) { mode = "label"; }
  }
  if (mode === "label") {
    const reply = await api(`/api/items?scope=job&id=${jobId}&offset=${labelOffset}&limit=50`);
    labelOffset += reply.items.length;
    queue.push(...reply.items.map((i) => ({ id: i.id, job: i.job, score: i.score, uncertainty: null })));
    setCount("waiting", Math.max(0, reply.total - labelOffset + queue.length));
  }
  document.getElementById("review-mode").textContent = mode === "review" ? "review band (active learning)" : "labelling candidates";
}

async function next() {
  if (!queue.length) await refill();
  current = queue.shift() || null;
  image.hidden = !current;
  if (!current) { caption.textContent = "nothing left to look at"; root.dataset.current = ""; return; }
  image.src = `/thumb/${jobId}/${current.id}?size=512`;
  const detail = current.uncertainty === null ? "" : ` · uncertainty ${current.uncertainty.toFixed(2)}`;
  caption.textContent = `${current.id}${current.score === null || current.score === undefined ? "" : " · score " + current.score.toFixed(3)}${detail}`;
  root.dataset.current = current.id;
}

async function verdict(kind) {
  if (!current) return;
  const ref = current.id;
  if (kind === "skip") counts.skip += 1;
  else if (mode === "review") {
    await api("/api/review", { method: "POST", json: { job_id: jobId, item_id: ref, accept: kind === "good" } });
    counts[kind] += 1;
  } else {
    const reply = await api("/api/label", { method: "POST", json: { job_id: jobId, item_ids: [ref], good: kind === "good", taste_model: tasteName() } });
    setCount("labels", `${reply.positives} / ${reply.negatives}`);
    counts[kind] += 1;
  }
  history.push({ ref, kind, item: current });
  for (const name of ["good", "bad", "skip"]) setCount(name, counts[name]);
  root.dataset.done = String(history.length);
  await next();
}

async function undo() {
  const last = history.pop();
  if (!last) return;
  if (last.kind !== "skip" && mode === "label") {
    const reply = await api("/api/label", { method: "POST", json: { job_id: jobId, item_ids: [last.ref], good: null, taste_model: tasteName() } });
    setCount("labels", `${reply.positives} / ${reply.negatives}`);
  }
  counts[last.kind] -= 1;
  for (const name of ["good", "bad", "skip"]) setCount(name, counts[name]);
  if (current) queue.unshift(current);
  current = null;
  queue.unshift(last.item);
  root.dataset.done = String(history.length);
  await next();
}

const tasteName = () => document.getElementById("taste-name").value || "default";

async function train() {
  const result = document.getElementById("train-result");
  result.textContent = "training…";
  const model = await api("/api/taste/train", { method: "POST", json: { name: tasteName(), family: document.getElementById("taste-family").value } });
  result.replaceChildren(el("table", { class: "kv", id: "train-metrics" },
    ...[["model", `${model.name}@${model.version} (${model.family})`], ["labels", `${model.positives} good / ${model.negatives} bad`],
      ["CV accuracy", model.cv_accuracy.toFixed(3)], ["CV ROC AUC", model.cv_auc.toFixed(3)],
      ["thresholds", `${model.low.toFixed(2)} / ${model.high.toFixed(2)}`], ["trained in", `${model.train_seconds} s`]]
      .map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: v })))));
  const scores = await api(`/api/taste/${encodeURIComponent(model.name)}/scores?job=${jobId}`);
  histogram(scores.histogram, model.low, model.high);
}

function histogram(bins, low, high) {
  const box = document.getElementById("histogram");
  const most = Math.max(1, ...bins);
  box.replaceChildren(...bins.map((count, i) => {
    const bar = el("span", { class: "bin", title: `${(i / bins.length).toFixed(2)}–${((i + 1) / bins.length).toFixed(2)}: ${count}`, "data-count": count });
    bar.style.height = `${Math.round(100 * count / most)}%`;
    return bar;
  }));
  const panel = document.getElementById("thresholds");
  panel.hidden = false;
  for (const [id, value] of [["low", low], ["high", high]]) {
    const input = document.getElementById(id);
    input.value = value;
    document.getElementById(`${id}-value`).textContent = Number(value).toFixed(2);
    input.oninput = () => { document.getElementById(`${id}-value`).textContent = Number(input.value).toFixed(2); };
  }
}

async function curate(dryRun) {
  const reply = await api("/api/curate", { method: "POST", json: { job_id: jobId, taste_model: tasteName(), threshold: Number(document.getElementById("low").value), dry_run: dryRun } });
  document.getElementById("curate-result").textContent =
    `${reply.scored} scored: ${reply.moved.length} ${dryRun ? "would move" : "moved"} to rejected/ below ${reply.threshold}, ${reply.kept} kept`;
}

document.getElementById("train").addEventListener("click", train);
document.getElementById("curate-dry").addEventListener("click", () => curate(true));
document.getElementById("curate-apply").addEventListener("click", () => curate(false));
document.addEventListener("keydown", (event) => {
  if (typing(event) || event.ctrlKey || event.metaKey || event.altKey) return;
  const actions = { g: () => verdict("good"), b: () => verdict("bad"), s: () => verdict("skip"), u: undo, t: train };
  if (actions[event.key]) { event.preventDefault(); actions[event.key](); }
});

next().then(() => { root.dataset.ready = "1"; root.focus(); });
