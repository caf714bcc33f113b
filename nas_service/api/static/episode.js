// The episode view: a modal dialog with one episode's results, timings, cell and graph.

import { getJson } from "./api.js";
import * as fmt from "./format.js";

const { el } = fmt;

export class EpisodeDialog {
  /** `onStep(number)` opens a neighbour; `onClose()` runs when the user closes it (to restore the address). */
  constructor(onStep, onClose) {
    this.dialog = document.getElementById("episode-dialog");
    this.body = this.dialog.querySelector(".episode-body");
    this.title = this.dialog.querySelector("#episode-title");
    this.handlers = [
      [this.dialog.querySelector(".close"), "click", () => this.dialog.close()],
      [this.dialog, "close", () => onClose()],
      // A click on the backdrop lands on the dialog element itself.
      [this.dialog, "click", (event) => event.target === this.dialog && this.dialog.close()],
      ...[...this.dialog.querySelectorAll("[data-step]")].map((button) => [
        button, "click", () => onStep(this.number + Number(button.dataset.step)),
      ]),
    ];
    this.handlers.forEach(([target, type, handler]) => target.addEventListener(type, handler));
  }

  /** Show episode `number` of search `searchId`, whose newest episode is `lastNumber`. */
  async show(searchId, number, lastNumber) {
    this.number = number;
    const episode = await getJson(`/api/searches/${searchId}/episodes/${number}`);
    if (this.number !== number) return;  // the user moved on meanwhile
    this.title.textContent = `Episode ${number}`;
    this.body.replaceChildren(...content(searchId, episode));
    this.dialog.querySelector("[data-step='-1']").disabled = number <= 0;
    this.dialog.querySelector("[data-step='1']").disabled = lastNumber == null || number >= lastNumber;
    if (!this.dialog.open) this.dialog.showModal();
  }

  close() {
    if (this.dialog.open) this.dialog.close();
  }

  destroy() {
    this.number = null;  // an answer still on its way must not open the dialog over the next page
    this.handlers.forEach(([target, type, handler]) => target.removeEventListener(type, handler));
    this.close();
  }
}

function content(searchId, episode) {
  const facts = [
    ["Status", fmt.badge(episode.status)],
    ["Reward", fmt.reward(episode.reward)],
    ...Object.entries(episode.metrics || {}).map(([name, value]) => [name, fmt.reward(value)]),
    ["FLOPs", fmt.flops(episode.flops)],
    ["Parameters", fmt.params(episode.params)],
    ["Attempts", String(episode.attempts)],
    ["Worker", episode.worker || "–"],
    ["Proposed", fmt.time(episode.proposed_at)],
    ["Started", fmt.time(episode.started_at)],
    ["Finished", fmt.time(episode.finished_at)],
    ["Train time", fmt.duration(episode.train_seconds)],
  ];
  const graph = el("img", {
    class: "episode-graph",
    src: `/api/searches/${searchId}/episodes/${episode.number}/graph.svg`,
    alt: `Graph of the cell of episode ${episode.number}`,
  });
  return [
    el("div", { class: "episode-layout" },
      el("dl", { class: "facts" }, ...facts.flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, value)])),
      graph),
    episode.error ? el("pre", { class: "message error" }, episode.error) : null,
    el("p", {}, el("strong", {}, "Cell "), el("code", {}, episode.description)),
    el("p", {}, el("strong", {}, "Hash "), el("code", {}, episode.arch_hash)),
    el("details", {}, el("summary", {}, "Architecture JSON"), el("pre", {}, JSON.stringify(episode.architecture, null, 2))),
  ].filter(Boolean);
}
