// Shared by every page: the CSRF header on every state-changing call, errors shown as a toast.
export const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

export async function api(path, { method = "GET", json, form } = {}) {
  const headers = {};
  let body;
  if (method !== "GET") headers["x-csrf-token"] = csrf();
  if (json !== undefined) {
    headers["content-type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  const response = await fetch(path, { method, headers, body, credentials: "same-origin" });
  if (response.status === 401) {
    location.href = "/login?next=" + encodeURIComponent(location.pathname);
    throw new Error("not logged in");
  }
  const type = response.headers.get("content-type") || "";
  if (!response.ok) {
    const message = type.includes("json") ? (await response.json()).error : await response.text();
    toast(message || response.statusText, true);
    throw new Error(message);
  }
  return type.includes("json") ? response.json() : response;
}

export function toast(message, isError = false) {
  const el = document.getElementById("toast");
  if (!el) return;
  el.textContent = message;
  el.className = isError ? "error" : "";
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 6000);
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// Typing in a field never triggers the page's single-key shortcuts.
export const typing = (event) => ["INPUT", "TEXTAREA", "SELECT"].includes(event.target.tagName);

export async function exportSelection(form, refs) {
  const data = new FormData(form);
  const format = data.get("format");
  const result = document.getElementById("export-result");
  result.textContent = `exporting ${refs.length} items…`;
  const reply = await api("/api/export", { method: "POST", json: { items: refs, name: data.get("name"), format } });
  if (format === "zip") {
    const blob = await reply.blob();
    const link = el("a", { href: URL.createObjectURL(blob), download: `${data.get("name") || "sfhq-export"}.zip` });
    document.body.append(link);
    link.click();
    link.remove();
    result.textContent = `${reply.headers.get("x-sfhq-items")} items in the zip`;
  } else {
    result.textContent = `${reply.items} items in ${reply.folder}`;
    result.dataset.folder = reply.folder;
  }
}
