import { api, el, exportSelection } from "/static/common.js";

const results = document.getElementById("results");
const status = document.getElementById("search-status");
const textForm = document.getElementById("text-search");
let hits = [];

function show(reply, what) {
  hits = reply.hits;
  results.replaceChildren();
  status.textContent = `${hits.length} results for ${what} (${reply.ms} ms)`;
  for (const hit of hits) {
    const caption = `${hit.similarity.toFixed(3)}${hit.decision ? " · " + hit.decision : ""}`;
    const picture = hit.job
      ? el("img", { src: `/thumb/${hit.job}/${hit.item}?size=256`, alt: hit.id, width: 160, height: 160, loading: "lazy" })
      : el("span", { class: "placeholder", text: hit.id });
    const link = el("a", { class: "hit", href: hit.job ? `/items/${hit.job}/${hit.item}` : "#", "data-ref": hit.id }, picture,
      el("span", { class: "badge", text: caption }));
    results.append(link);
  }
  results.dataset.count = String(hits.length);
}

textForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = new FormData(textForm).get("text");
  show(await api("/api/search", { method: "POST", json: { text } }), `“${text}”`);
});

document.getElementById("image-search").addEventListener("submit", async (event) => {
  event.preventDefault();
  show(await api("/api/search", { method: "POST", form: new FormData(event.target) }), "the image");
});

document.getElementById("export-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  await exportSelection(event.target, hits.filter((h) => h.job).map((h) => `${h.job}/${h.item}`));
});

const like = textForm.dataset.like;
if (like) api("/api/search", { method: "POST", json: { like } }).then((reply) => show(reply, `items like ${like}`));
else if (document.getElementById("search-text").value) textForm.requestSubmit();
