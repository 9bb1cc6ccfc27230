import { api, toast } from "/static/common.js";

const form = document.getElementById("submit-form");
const error = document.getElementById("submit-error");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.hidden = true;
  const data = new FormData(form);
  if (data.get("mode") !== "sampling") { data.delete("samples"); data.delete("psi_min"); data.delete("psi_max"); }
  if (data.get("mode") !== "prompts") {
    for (const name of ["prompts", "template", "slots", "negative_prompt", "images_per_prompt", "steps", "guidance_scale", "pipeline"]) data.delete(name);
  }
  try {
    const job = await api("/api/jobs", { method: "POST", form: data });
    toast(`job ${job.id} submitted`);
    location.href = `/jobs/${job.id}`;
  } catch (e) {
    error.textContent = e.message;
    error.hidden = false;
  }
});

// Running jobs refresh themselves (the job page streams events; the list polls lightly).
async function refresh() {
  const rows = [...document.querySelectorAll("#jobs-table tr[data-job]")];
  if (!rows.some((r) => ["queued", "running", "cancelling"].includes(r.dataset.state))) return;
  const { jobs } = await api("/api/jobs");
  for (const job of jobs) {
    const row = document.querySelector(`#jobs-table tr[data-job="${job.id}"]`);
    if (!row) continue;
    row.dataset.state = job.state;
    const state = row.querySelector(".state");
    state.textContent = job.state;
    state.className = `state state-${job.state}`;
    row.querySelector(".written").textContent = job.counts.written;
    const bar = row.querySelector("progress");
    const c = job.counts;
    bar.max = c.candidates || 1;
    bar.value = c.written + c.rejected_taste + c.rejected_duplicate + c.review;
  }
}
setInterval(refresh, 3000);

// The sampling fields matter only in sampling mode, the prompt fields only in prompts mode, and the
// image fields in the two modes that start from images.
function showModeFields() {
  const mode = new FormData(form).get("mode");
  for (const row of form.querySelectorAll(".sampling")) row.hidden = mode !== "sampling";
  for (const row of form.querySelectorAll(".prompts-fields")) row.hidden = mode !== "prompts";
  for (const row of form.querySelectorAll(".images-fields")) row.hidden = mode === "sampling" || mode === "prompts";
}
for (const radio of form.querySelectorAll("input[name=mode]")) radio.addEventListener("change", showModeFields);
showModeFields();
