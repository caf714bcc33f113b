// The search page's tables: episodes (paged, sorted and filtered by the server) and the top-k.

import { getJson } from "./api.js";
import * as fmt from "./format.js";

const { el } = fmt;
const TOP_K = 10;

/** A link-styled button that opens an episode (keyboard reachable, unlike a clickable row). */
function episodeButton(number, onOpen) {
  const button = el("button", { type: "button", class: "link", "aria-label": `Open episode ${number}` }, String(number));
  button.addEventListener("click", () => onOpen(number));
  return button;
}

function emptyRow(columns, text) {
  return el("tr", { class: "empty-row" }, el("td", { colspan: columns }, text));
}

export class EpisodeTable {
  /** `onOpen(number)` opens an episode, `onError(error)` reports a failed load. */
  constructor(section, { searchId, onOpen, onError, signal }) {
    this.section = section;
    this.base = `/api/searches/${searchId}/episodes`;
    this.onOpen = onOpen;
    this.onError = onError;
    this.signal = signal;
    this.state = { status: "", sort: "number", order: "asc", limit: 20, offset: 0 };
    this.requests = 0;
    this.body = section.querySelector("tbody");
    this.wireControls();
  }

  wireControls() {
    for (const header of this.section.querySelectorAll("th[data-sort]")) {
      header.querySelector("button").addEventListener("click", () => this.sortBy(header.dataset.sort));
    }
    this.section.querySelector("select[name=status]").addEventListener("change", (event) => {
      this.change({ status: event.target.value, offset: 0 });
    });
    this.section.querySelector("select[name=limit]").addEventListener("change", (event) => {
      this.change({ limit: Number(event.target.value), offset: 0 });
    });
    this.section.querySelector("[data-page=prev]").addEventListener("click", () => {
      this.change({ offset: Math.max(0, this.state.offset - this.state.limit) });
    });
    this.section.querySelector("[data-page=next]").addEventListener("click", () => {
      this.change({ offset: this.state.offset + this.state.limit });
    });
  }

  /** Same column: flip the order; another column: best first for reward, else ascending. */
  sortBy(column) {
    const { sort, order } = this.state;
    const next = column === sort ? (order === "asc" ? "desc" : "asc") : column === "reward" ? "desc" : "asc";
    this.change({ sort: column, order: next, offset: 0 });
  }

  change(update) {
    Object.assign(this.state, update);
    this.load().catch(this.onError);
  }

  /** Fetch and draw the current page; an answer overtaken by a newer request is dropped. */
  async load() {
    const request = ++this.requests;
    const { status, sort, order, limit, offset } = this.state;
    const params = new URLSearchParams({ sort, order, limit, offset });
    if (status) params.set("status", status);
    const page = await getJson(`${this.base}?${params}`, this.signal);
    if (request !== this.requests) return;
    this.render(page);
  }

  render(page) {
    this.body.replaceChildren(...page.items.map((episode) => this.row(episode)));
    if (!page.items.length) this.body.append(emptyRow(8, "No episodes match."));
    const last = page.offset + page.items.length;
    this.section.querySelector(".page-info").textContent = page.items.length
      ? `${fmt.count(page.offset + 1)}–${fmt.count(last)} of ${fmt.count(page.total)}`
      : `none of ${fmt.count(page.total)}`;
    this.section.querySelector("[data-page=prev]").disabled = page.offset === 0;
    this.section.querySelector("[data-page=next]").disabled = last >= page.total;
    this.section.dataset.total = page.total;
    this.showSort();
  }

  row(episode) {
    const row = el(
      "tr",
      { "data-number": episode.number, class: "clickable" },
      el("td", { class: "num" }, episodeButton(episode.number, this.onOpen)),
      el("td", {}, fmt.badge(episode.status)),
      el("td", { class: "num" }, fmt.reward(episode.reward)),
      el("td", { class: "num" }, fmt.flops(episode.flops)),
      el("td", { class: "num" }, fmt.params(episode.params)),
      el("td", { class: "num" }, fmt.duration(episode.train_seconds)),
      el("td", {}, episode.worker || "–"),
      el("td", {}, fmt.time(episode.finished_at)),
    );
    row.addEventListener("click", (event) => {
      if (!event.target.closest("button")) this.onOpen(episode.number);
    });
    return row;
  }

  showSort() {
    for (const header of this.section.querySelectorAll("th[data-sort]")) {
      const active = header.dataset.sort === this.state.sort;
      header.setAttribute("aria-sort", active ? (this.state.order === "asc" ? "ascending" : "descending") : "none");
    }
  }
}

export class TopTable {
  constructor(section, { searchId, onOpen, signal }) {
    this.section = section;
    this.path = `/api/searches/${searchId}/top?k=${TOP_K}`;
    this.onOpen = onOpen;
    this.signal = signal;
    this.body = section.querySelector("tbody");
    for (const link of section.querySelectorAll("a.export")) {
      link.href = `/api/searches/${searchId}/export?to=${link.dataset.to}`;
    }
  }

  async load() {
    const ranked = await getJson(this.path, this.signal);
    this.body.replaceChildren(...ranked.map((entry) => this.row(entry)));
    if (!ranked.length) this.body.append(emptyRow(6, "No scored episode yet."));
    this.section.querySelector(".exports").hidden = !ranked.length;  // export answers 404 until then
  }

  row({ rank, episode }) {
    return el(
      "tr",
      { "data-number": episode.number },
      el("td", { class: "num" }, String(rank)),
      el("td", { class: "num" }, episodeButton(episode.number, this.onOpen)),
      el("td", { class: "num" }, fmt.reward(episode.reward)),
      el("td", { class: "num" }, fmt.flops(episode.flops)),
      el("td", {}, el("code", { title: episode.arch_hash }, fmt.shortHash(episode.arch_hash))),
      el("td", { class: "cell-description" }, el("code", {}, episode.description)),
    );
  }
}
