// Formatting numbers, times and statuses the same way on every page, and a small DOM builder.

const DASH = "–";
const integer = new Intl.NumberFormat();

export const reward = (value) => (value == null ? DASH : value.toFixed(4));
export const flops = (value) => (value == null ? DASH : `${(value / 1e9).toFixed(2)} G`);
export const params = (value) => (value == null ? DASH : `${(value / 1e6).toFixed(2)} M`);
export const count = (value) => (value == null ? DASH : integer.format(value));
const pad = (n) => String(n).padStart(2, "0");

/** Local time as 2026-05-04 13:02:09: sortable, and the same in every browser locale. */
export function time(iso) {
  if (!iso) return DASH;
  const d = new Date(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${clock(d)}`;
}

export const clock = (d) => `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
export const shortHash = (hash) => hash.slice(0, 10);

export function duration(seconds) {
  if (seconds == null) return DASH;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

/** The colour of a status, from the CSS variables, so charts and badges always agree. */
export function statusColor(status) {
  return getComputedStyle(document.documentElement).getPropertyValue(`--status-${status}`).trim();
}

/** A status as a coloured badge (the text says it too, colour is not the only cue). */
export function badge(status) {
  return el("span", { class: `badge status-${status}` }, status);
}

/** `el("a", {href: "#"}, "text", child)`: attributes set as attributes, children as text or nodes. */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value == null) continue;
    node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((child) => child != null));
  return node;
}
