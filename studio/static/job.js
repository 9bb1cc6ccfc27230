import { api, toast } from "/static/common.js";

const stateEl = document.getElementById("job-state");
const jobId = stateEl.dataset.job;
const TERMINAL = ["succeeded", "failed", "cancelled"];

function show(update) {
  stateEl.textContent = update.state;
  stateEl.className = `state state-${update.state}`;
  for (const [name, value] of Object.entries(update.counts)) {
    const dd = document.querySelector(`[data-count="${name}"]`);
    if (dd) dd.textContent = value;
  }
  const body = document.querySelector("#stages tbody");
  for (const [stage, done] of Object.entries(update.stages)) {
    let row = body.querySelector(`[data-stage="${stage}"]`);
    if (!row) {
      row = document.createElement("tr");
      row.dataset.stage = stage;
      row.append(document.createElement("td"), document.createElement("td"));
      row.cells[0].textContent = stage;
      body.append(row);
    }
    row.cells[1].textContent = done;
  }
}

function failure(update) {
  const body = document.querySelector("#failures tbody");
  body.querySelector(".none")?.remove();
  const row = document.createElement("tr");
  for (const text of [update.item, "", update.message]) {
    const cell = document.createElement("td");
    cell.textContent = text;
    row.append(cell);
  }
  body.append(row);
}

if (!TERMINAL.includes(stateEl.textContent.trim())) {
  const source = new EventSource(`/api/jobs/${jobId}/events`);
  source.addEventListener("job", (message) => {
    const update = JSON.parse(message.data);
    if (update.state && update.state !== "unspecified") show(update);
    if (update.kind === "item_failed") failure(update);
    if (TERMINAL.includes(update.state)) source.close();
  });
  source.addEventListener("end", () => source.close());
  source.addEventListener("failure", (message) => { toast(JSON.parse(message.data).error, true); source.close(); });
}

document.getElementById("cancel-job").addEventListener("click", async () => {
  const job = await api(`/api/jobs/${jobId}/cancel`, { method: "POST" });
  toast(`job ${job.id}: ${job.state}`);
  stateEl.textContent = job.state;
});
