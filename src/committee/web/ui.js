// Small DOM and formatting helpers. Data only ever enters the page through textContent and
// attributes, never as markup.

// Every status has a symbol and a word, so none is told by colour alone.
const SYMBOLS = {
  queued: "○",
  running: "◔",
  passed: "✓",
  failed: "✗",
  error: "!",
  timeout: "◷",
  cancelled: "⊘",
  skipped: "↷",
};
export const FINAL = new Set(["passed", "failed", "error", "timeout", "cancelled", "skipped"]);

// el("time", {class: "x", datetime: "..."}, "text", child...)
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

// A fresh copy of <template id=...>'s first element.
export function fromTemplate(id) {
  return document.getElementById(id).content.firstElementChild.cloneNode(true);
}

// The element marked data-part=name inside root.
export function part(root, name) {
  return root.querySelector(`[data-part="${name}"]`);
}

export function setText(node, text) {
  const value = String(text ?? "");
  if (node.textContent !== value) node.textContent = value;
}

function badge(status) {
  return el(
    "span",
    { class: `badge status-${status}` },
    el("span", { class: "badge-icon", "aria-hidden": "true" }, SYMBOLS[status] ?? "?"),
    status,
  );
}

export function setBadge(node, status) {
  if (node.dataset.status === status) return;
  node.dataset.status = status;
  node.replaceChildren(badge(status));
}

export const shortSha = (sha) => (sha ?? "").slice(0, 8);

export function duration(seconds) {
  if (seconds < 10) return `${seconds.toFixed(1)} s`;
  if (seconds < 60) return `${Math.round(seconds)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

export const plural = (n, word) => `${n.toLocaleString()} ${word}${n === 1 ? "" : "s"}`;

export function bytes(n) {
  if (n < 1000) return `${n} B`;
  if (n < 1e6) return `${(n / 1e3).toFixed(1)} kB`;
  return `${(n / 1e6).toFixed(1)} MB`;
}

function when(epochSeconds) {
  const ago = Date.now() / 1000 - epochSeconds;
  if (ago < 45) return "just now";
  if (ago < 3600) return `${Math.round(ago / 60)} min ago`;
  if (ago < 86400) return `${Math.round(ago / 3600)} h ago`;
  return new Date(epochSeconds * 1000).toLocaleDateString();
}

export function timeElement(epochSeconds) {
  const date = new Date(epochSeconds * 1000);
  return el("time", { datetime: date.toISOString(), title: date.toLocaleString() }, when(epochSeconds));
}

// "3 passed · 1 failed · 2 queued", worst news first.
const ORDER = ["failed", "error", "timeout", "running", "queued", "passed", "skipped", "cancelled"];
export function countsText(counts) {
  return ORDER.filter((s) => counts[s])
    .map((s) => `${counts[s]} ${s}`)
    .join(" · ");
}

export function testsText(tests) {
  if (!tests || !tests.total) return "";
  const parts = [`${tests.passed} passed`];
  if (tests.failed) parts.push(`${tests.failed} failed`);
  if (tests.errors) parts.push(`${tests.errors} errors`);
  if (tests.skipped) parts.push(`${tests.skipped} skipped`);
  return parts.join(" · ");
}

// Screen-reader announcements of things that happen without the user's doing.
export function announce(text) {
  const region = document.getElementById("announcer");
  region.textContent = "";
  requestAnimationFrame(() => (region.textContent = text));
}

export function repoName(url) {
  return url
    .replace(/\/+$/, "")
    .replace(/\.git$/, "")
    .split(/[/:]/)
    .slice(-2)
    .join("/");
}
