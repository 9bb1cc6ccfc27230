import { api, el } from "/static/common.js";

const form = document.getElementById("dedup-form");
const jobId = form.dataset.job;
const box = document.getElementById("groups");
const status = document.getElementById("dedup-status");

function member(m, role) {
  const picture = m.job
    ? el("img", { src: `/thumb/${m.job}/${m.id}?size=128`, alt: m.stem, width: 128, height: 128, loading: "lazy" })
    : el("span", { class: "placeholder", text: m.stem });
  const text = `${role} ${m.stem}${m.score === null ? "" : " · " + m.score.toFixed(3)}${m.similarity === null ? "" : " · cos " + m.similarity.toFixed(3)}`;
  return el("figure", { class: role }, m.job ? el("a", { href: `/items/${m.job}/${m.id}` }, picture) : picture, el("figcaption", { text }));
}

async function run(dryRun) {
  const threshold = Number(document.getElementById("dedup-threshold").value);
  const reply = await api("/api/dedup", { method: "POST", json: { job_id: jobId, threshold, dry_run: dryRun } });
  status.textContent = `${reply.items} items compared: ${reply.groups.length} groups, ${reply.moved} ${dryRun ? "would move" : "moved"} to rejected/`;
  box.replaceChildren(...reply.groups.map((g) => el("div", { class: "group" }, member(g.kept, "kept"), ...g.removed.map((m) => member(m, "removed")))));
  box.dataset.groups = String(reply.groups.length);
}

form.addEventListener("submit", (event) => { event.preventDefault(); run(true); });
document.getElementById("dedup-apply").addEventListener("click", () => run(false));
run(true);
