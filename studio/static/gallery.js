// A virtual grid: only the rows in view (plus a margin) exist in the DOM, pages of metadata are
// fetched as they come into view, so 100,000 items scroll like 100.
import { api, el, exportSelection, typing } from "/static/common.js";

const TILE = 168; // px, tile + gap (studio.css: .tile)
const PAGE = 500;
const MARGIN_ROWS = 3;
const filters = document.getElementById("filters");
const grid = document.getElementById("gallery");
const spacer = document.getElementById("gallery-spacer");
const count = document.getElementById("gallery-count");
const selectedCount = document.getElementById("selected-count");
const scope = filters.dataset.scope;
const scopeId = filters.dataset.id;

let total = 0;
let pages = new Map(); // page number -> items (or a pending promise)
let generation = 0;
let focusIndex = 0;
const selected = new Set();
const tiles = new Map(); // index -> element

function query(offset, limit) {
  const params = new URLSearchParams({ scope, id: scopeId, offset, limit });
  for (const [key, value] of new FormData(filters)) if (value !== "") params.set(key, value);
  return `/api/items?${params}`;
}

function columns() { return Math.max(1, Math.floor(grid.clientWidth / TILE)); }

async function page(n) {
  if (pages.has(n)) return pages.get(n);
  const mine = generation;
  const pending = api(query(n * PAGE, PAGE)).then((reply) => {
    if (mine !== generation) return [];
    pages.set(n, reply.items);
    if (reply.total !== total) { total = reply.total; layout(); }
    fillStrategies(reply.strategies);
    return reply.items;
  });
  pages.set(n, pending);
  return pending;
}

function fillStrategies(strategies) {
  const select = document.getElementById("f-strategy");
  if (select.options.length > 1) return;
  for (const name of strategies) select.append(el("option", { value: name, text: name }));
}

function itemAt(index) {
  const items = pages.get(Math.floor(index / PAGE));
  return Array.isArray(items) ? items[index % PAGE] : undefined;
}

function tile(index, item) {
  const node = el("a", {
    class: "tile" + (selected.has(`${item.job}/${item.id}`) ? " selected" : "") + (index === focusIndex ? " focus" : ""),
    href: `/items/${item.job}/${item.id}`, "data-index": index, "data-ref": `${item.job}/${item.id}`,
    role: "gridcell", tabindex: "-1",
  });
  const cols = columns();
  node.style.transform = `translate(${(index % cols) * TILE}px, ${Math.floor(index / cols) * TILE}px)`;
  node.append(
    el("img", { src: `/thumb/${item.job}/${item.id}?size=256`, alt: item.id, width: 160, height: 160, loading: "lazy", decoding: "async" }),
    el("span", { class: `badge state-${item.state}`, text: item.score === null ? item.state : `${item.state} ${item.score.toFixed(2)}` }),
  );
  return node;
}

function layout() {
  count.textContent = total.toLocaleString();
  spacer.style.height = `${Math.ceil(total / columns()) * TILE}px`;
  render();
}

function render() {
  const cols = columns();
  const first = Math.max(0, (Math.floor(grid.scrollTop / TILE) - MARGIN_ROWS) * cols);
  const last = Math.min(total, (Math.ceil((grid.scrollTop + grid.clientHeight) / TILE) + MARGIN_ROWS) * cols);
  for (const [index, node] of tiles) {
    if (index < first || index >= last) { node.remove(); tiles.delete(index); }
  }
  const missing = new Set();
  for (let index = first; index < last; index++) {
    if (tiles.has(index)) continue;
    const item = itemAt(index);
    if (!item) { missing.add(Math.floor(index / PAGE)); continue; }
    const node = tile(index, item);
    tiles.set(index, node);
    grid.append(node);
  }
  for (const n of missing) page(n).then(() => requestAnimationFrame(render));
}

function reset() {
  generation += 1;
  pages = new Map();
  for (const node of tiles.values()) node.remove();
  tiles.clear();
  total = 0;
  focusIndex = 0;
  grid.scrollTop = 0;
  page(0).then(() => { layout(); window.galleryReady = true; });
}

function moveFocus(to) {
  focusIndex = Math.max(0, Math.min(total - 1, to));
  const cols = columns();
  const top = Math.floor(focusIndex / cols) * TILE;
  if (top < grid.scrollTop) grid.scrollTop = top;
  else if (top + TILE > grid.scrollTop + grid.clientHeight) grid.scrollTop = top + TILE - grid.clientHeight;
  for (const node of tiles.values()) node.classList.toggle("focus", Number(node.dataset.index) === focusIndex);
  render();
}

grid.addEventListener("scroll", () => requestAnimationFrame(render), { passive: true });
window.addEventListener("resize", () => { for (const n of tiles.values()) n.remove(); tiles.clear(); layout(); });
filters.addEventListener("change", reset);
filters.addEventListener("submit", (e) => { e.preventDefault(); reset(); });
grid.addEventListener("keydown", (event) => {
  if (typing(event)) return;
  const cols = columns();
  const moves = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: cols, ArrowUp: -cols, PageDown: cols * 4, PageUp: -cols * 4 };
  if (event.key in moves) { event.preventDefault(); moveFocus(focusIndex + moves[event.key]); return; }
  const item = itemAt(focusIndex);
  if (!item) return;
  if (event.key === "Enter") { location.href = `/items/${item.job}/${item.id}`; }
  if (event.key === " ") {
    event.preventDefault();
    const ref = `${item.job}/${item.id}`;
    if (selected.has(ref)) selected.delete(ref); else selected.add(ref);
    selectedCount.textContent = selected.size;
    tiles.get(focusIndex)?.classList.toggle("selected", selected.has(ref));
  }
});

document.getElementById("export-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  let refs = [...selected];
  if (!refs.length) { // everything the filters show
    const all = await api(query(0, 2000));
    refs = all.items.map((i) => `${i.job}/${i.id}`);
    for (let offset = 2000; offset < all.total && offset < 10000; offset += 2000) {
      refs.push(...(await api(query(offset, 2000))).items.map((i) => `${i.job}/${i.id}`));
    }
  }
  await exportSelection(event.target, refs);
});

reset();
