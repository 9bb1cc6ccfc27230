// The item on a canvas: the image, then (toggled) the parsing map per class and the landmarks per group.
import { typing } from "/static/common.js";

const canvas = document.getElementById("item-canvas");
const ctx = canvas.getContext("2d");
const { job, item } = canvas.dataset;
const parsingToggle = document.getElementById("toggle-parsing");
const landmarksToggle = document.getElementById("toggle-landmarks");
let image = null;
let overlay = null;
let overlayKey = "";
const landmarks = JSON.parse(canvas.dataset.landmarks || "[]"); // image pixels, 110 x 2

const load = (src) => new Promise((resolve, reject) => {
  const img = new Image();
  img.onload = () => resolve(img);
  img.onerror = () => reject(new Error(`could not load ${src}`));
  img.src = src;
});

function chosenClasses() {
  return [...document.querySelectorAll("#classes .cls:checked")].map((c) => c.value).join(",");
}

async function draw() {
  if (!image) return;
  canvas.width = image.naturalWidth;
  canvas.height = image.naturalHeight;
  ctx.globalAlpha = 1;
  ctx.drawImage(image, 0, 0);
  if (parsingToggle.checked && canvas.dataset.parsing === "1") {
    const key = chosenClasses();
    if (key && key !== overlayKey) {
      overlay = await load(`/media/${job}/${item}/parsing.png?size=${Math.min(1024, canvas.width)}&classes=${key}`);
      overlayKey = key;
    }
    if (key) {
      ctx.globalAlpha = 0.55;
      ctx.drawImage(overlay, 0, 0, canvas.width, canvas.height);
      ctx.globalAlpha = 1;
    }
  }
  if (landmarksToggle.checked && landmarks.length) {
    const radius = Math.max(2, canvas.width / 256);
    for (const group of document.querySelectorAll("#groups .grp:checked")) {
      ctx.fillStyle = group.dataset.colour;
      for (let i = Number(group.dataset.first); i < Number(group.dataset.last); i++) {
        const point = landmarks[i];
        if (!point) continue;
        ctx.beginPath();
        ctx.arc(point[0], point[1], radius, 0, 2 * Math.PI);
        ctx.fill();
      }
    }
  }
  canvas.dataset.drawn = String(Number(canvas.dataset.drawn || 0) + 1);
}

for (const input of document.querySelectorAll("aside input[type=checkbox]")) input.addEventListener("change", draw);
document.addEventListener("keydown", (event) => {
  if (typing(event)) return;
  if (event.key === "p") { parsingToggle.checked = !parsingToggle.checked; draw(); }
  if (event.key === "l") { landmarksToggle.checked = !landmarksToggle.checked; draw(); }
});

(async () => {
  image = await load(`/media/${job}/${item}/image`);
  await draw();
  canvas.dataset.ready = "1";
})();
