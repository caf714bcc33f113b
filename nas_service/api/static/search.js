// The search page: summary, actions, charts, best cell next to FPN, tables, and live polling.

import { getJson, isAbort, send } from "./api.js";
import { Charts } from "./charts.js";
import { EpisodeDialog } from "./episode.js";
import * as fmt from "./format.js";
import { ProgressSeries } from "./series.js";
import { EpisodeTable, TopTable } from "./tables.js";

const { el } = fmt;
// A running search gets new episodes: poll briskly. Created or stopping: wait for a state change, slowly.
const POLL_MS = { running: 2000, created: 6000, stopping: 6000 };
const HIDDEN_POLL_MS = 15000;
const RETRY_MS = 10000;
const POLLS_AFTER_ACTION = 5;  // a resumed search stays "stopped" until its runner starts: keep looking

export class SearchPage {
  constructor(view, searchId) {
    this.id = searchId;
    this.aborter = new AbortController();
    this.series = new ProgressSeries();
    view.replaceChildren(document.getElementById("search-page").content.cloneNode(true));
    this.view = view;
    const options = { searchId, onOpen: (n) => this.open(n), onError: (e) => this.fail(e), signal: this.aborter.signal };
    this.episodes = new EpisodeTable(view.querySelector("table.episodes").closest("section"), options);
    this.top = new TopTable(view.querySelector("table.top").closest("section"), options);
    this.dialog = new EpisodeDialog((n) => this.step(n), () => this.closeEpisode());
    this.wireActions();
    // A hidden tab polls slowly; catch up as soon as it is shown again.
    this.onVisible = () => !document.hidden && this.timer != null && this.schedule(0);
    document.addEventListener("visibilitychange", this.onVisible);
  }

  /** First load: everything once, then polls ask only for what is new. */
  async start() {
    this.summary = await this.api(`/api/searches/${this.id}`);
    this.charts = new Charts(this.chartContainers(), (n) => this.open(n));
    this.showSummary();
    await this.pollSeries();
    await Promise.all([this.episodes.load(), this.top.load()]);
    this.schedule();
  }

  chartContainers() {
    const chart = (name) => this.view.querySelector(`[data-chart=${name}]`);
    return { reward: chart("reward"), unique: chart("unique"), entropy: chart("entropy") };
  }

  api(path) {
    return getJson(path, this.aborter.signal);
  }

  // --- live updates -------------------------------------------------------------------------------

  schedule(delay = this.pollDelay()) {
    clearTimeout(this.timer);
    this.timer = null;
    if (delay == null) return this.showLive("");
    this.showLive(`Live · updated ${fmt.clock(new Date())}`);
    this.timer = setTimeout(() => this.poll(), delay);
  }

  pollDelay() {
    let delay = POLL_MS[this.summary.status];
    if (delay == null && this.pollsAfterAction > 0) {
      this.pollsAfterAction -= 1;
      delay = POLL_MS.created;
    }
    if (delay == null) return null;  // finished: nothing will change
    return document.hidden ? HIDDEN_POLL_MS : delay;
  }

  async poll() {
    this.timer = null;  // in flight: nothing is waiting
    try {
      // The summary first: the series read after it holds every episode the summary counts.
      this.summary = await this.api(`/api/searches/${this.id}`);
      this.showSummary();
      if (await this.pollSeries()) await Promise.all([this.episodes.load(), this.top.load()]);
      this.schedule();
    } catch (error) {
      if (isAbort(error)) return;
      this.showLive(`Connection lost (${error.message}); retrying…`, true);
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.poll(), RETRY_MS);
    }
  }

  /** Fetch the series' new tail and redraw when it changed; true when it did. */
  async pollSeries() {
    const cursor = this.series.cursor;
    const answer = await this.api(`/api/searches/${this.id}/series?${this.series.query()}`);
    const changed = this.series.merge(answer, cursor);
    if (changed || !this.drawn) {
      this.charts.setSeedBand(seedBand(this.summary.seed_comparison));
      this.charts.update(this.series);
      this.showChartNotes();
      this.drawn = true;
    }
    return changed;
  }

  showLive(text, problem = false) {
    const live = this.view.querySelector(".live");
    live.textContent = text;
    live.classList.toggle("problem", problem);
  }

  // --- summary ------------------------------------------------------------------------------------

  showSummary() {
    const s = this.summary;
    const rendered = JSON.stringify(s);
    if (rendered === this.renderedSummary) return;  // polls mostly bring the same summary: keep the DOM (and focus)
    this.renderedSummary = rendered;
    this.view.querySelectorAll(".search-name").forEach((node) => (node.textContent = s.name));
    document.title = `${s.name} · NAS-FPN`;
    const status = this.view.querySelector(".search-status");
    status.replaceChildren(fmt.badge(s.status), s.archived ? el("span", { class: "badge archived" }, "archived") : "");
    const error = this.view.querySelector(".search-error");
    error.hidden = !s.error;
    error.textContent = s.error || "";
    this.view.querySelector(".stats").replaceChildren(...this.stats().map(statBlock));
    this.showBest();
    this.updateActions();
  }

  /** [label, value, note] of each summary block. */
  stats() {
    const s = this.summary;
    const budget = s.budget_episodes;
    const progress = budget ? el("progress", { max: 1, value: s.progress, "aria-label": "Share of the episode budget" }) : null;
    const best = s.best_episode_number == null ? null : this.episodeLink(s.best_episode_number, `episode ${s.best_episode_number}`);
    const outcomes = el("span", {},
      el("span", { class: "text-completed" }, fmt.count(s.num_completed)), " · ",
      el("span", { class: "text-cached" }, fmt.count(s.num_cached)), " · ",
      el("span", { class: "text-failed" }, fmt.count(s.num_failed)));
    return [
      ["Episodes", `${fmt.count(s.num_episodes)} / ${budget ? fmt.count(budget) : "∞"}`, progress],
      ["Trained · cached · failed", outcomes],
      ["Unique trained", fmt.count(s.num_unique)],
      [`Best reward (${s.reward_metric})`, fmt.reward(s.best_reward), best],
      ["Best vs seed cell", ...versusSeed(s.seed_comparison)],
      ["Entropy", s.last_entropy == null ? "–" : s.last_entropy.toFixed(3)],
      ["Started", el("span", { class: "stat-time" }, fmt.time(s.started_at)),
        s.finished_at ? `finished ${fmt.time(s.finished_at)}` : null],
    ];
  }

  episodeLink(number, text) {
    return el("a", { href: `#/searches/${this.id}/episodes/${number}` }, text);
  }

  showBest() {
    // FPN drawn on the search's own levels, so the two graphs line up row by row.
    const fpn = this.view.querySelector(".fpn-graph");
    const fpnSource = `/api/architectures/fpn/graph.svg?levels=${this.summary.config.controller.levels.join(",")}`;
    if (fpn.getAttribute("src") !== fpnSource) fpn.src = fpnSource;
    const number = this.summary.best_episode_number;
    const image = this.view.querySelector(".best-graph");
    this.view.querySelector(".best-empty").hidden = number != null;
    image.hidden = number == null;
    if (number == null || this.bestShown === number) return;
    this.bestShown = number;
    image.src = `/api/searches/${this.id}/episodes/${number}/graph.svg`;
    image.alt = `Graph of the best cell, episode ${number}`;
    this.view.querySelector(".best-caption").replaceChildren(
      "Best found: ", this.episodeLink(number, `episode ${number}`), ` · reward ${fmt.reward(this.summary.best_reward)}`,
    );
  }

  showChartNotes() {
    const { numbers, first, entropy, entropyEpisodes } = this.series;
    const note = (name, text) => (this.view.querySelector(`[data-note=${name}]`).textContent = text);
    const unique = first.filter(Boolean).length;
    const band = seedBand(this.summary.seed_comparison);
    note("reward", `${fmt.count(numbers.length)} episodes · click a point to open it` +
      (band ? ` · band: seed cell ± the proxy's paired noise (${fmt.reward(band.noise)})` : ""));
    note("unique", `${fmt.count(unique)} unique in ${fmt.count(numbers.length)} episodes`);
    note("entropy", entropy.length
      ? `${entropy[entropy.length - 1].toFixed(3)} after ${fmt.count(entropyEpisodes[entropyEpisodes.length - 1])} episodes`
      : "no controller update yet");
  }

  // --- actions ------------------------------------------------------------------------------------

  wireActions() {
    for (const button of this.view.querySelectorAll("[data-action]")) {
      button.addEventListener("click", () => this.act(button.dataset.action).catch((error) => this.fail(error)));
    }
  }

  updateActions() {
    const { status, archived } = this.summary;
    const button = (action) => this.view.querySelector(`[data-action=${action}]`);
    button("stop").disabled = status !== "running";
    // A running search resumes only once its runner is gone (its lease expired); the server says so.
    button("resume").disabled = status === "completed";
    button("archive").disabled = archived;
  }

  async act(action) {
    this.message("");
    const answer = await send("POST", `/api/searches/${this.id}/${action}`);
    this.summary = { ...this.summary, ...(answer.search || answer) };
    this.showSummary();
    this.message({ stop: "Stop requested: running episodes finish first.", resume: "Resumed.", archive: "Archived." }[action]);
    this.pollsAfterAction = POLLS_AFTER_ACTION;
    this.schedule(0);
  }

  message(text, problem = false) {
    const box = this.view.querySelector(".action-message");
    box.hidden = !text;
    box.textContent = text;
    box.classList.toggle("error", problem);
  }

  fail(error) {
    if (!isAbort(error)) this.message(error.message, true);
  }

  // --- episode view -------------------------------------------------------------------------------

  open(number) {
    location.hash = `#/searches/${this.id}/episodes/${number}`;
  }

  step(number) {
    const last = this.series.numbers[this.series.numbers.length - 1];
    if (number >= 0 && number <= last) this.open(number);
  }

  closeEpisode() {
    if (location.hash !== `#/searches/${this.id}`) location.hash = `#/searches/${this.id}`;
  }

  /** The router's part: `number` null closes the episode view. */
  showEpisode(number) {
    if (number == null) return this.dialog.close();
    const last = this.series.numbers[this.series.numbers.length - 1];
    this.dialog.show(this.id, number, last ?? this.summary.num_episodes - 1).catch((error) => {
      this.fail(error);
      this.closeEpisode();
    });
  }

  dispose() {
    clearTimeout(this.timer);
    document.removeEventListener("visibilitychange", this.onVisible);
    this.aborter.abort();
    this.dialog.destroy();
    if (this.charts) this.charts.destroy();
  }
}

function statBlock([label, value, note]) {
  return el("div", { class: "stat" }, el("dt", {}, label), el("dd", {}, value, note ? el("small", {}, note) : null));
}

/** The band the reward chart draws around the seed cell's reward, or null without a measured noise. */
function seedBand(comparison) {
  if (!comparison || comparison.noise == null) return null;
  return { reward: comparison.seed_reward, noise: comparison.noise };
}

/** [value, note] of the best cell's lead over the seed cell, in units of the proxy's paired noise. */
function versusSeed(comparison) {
  if (!comparison) return ["–", "the seed cell is not scored yet"];
  const lead = comparison.best_reward - comparison.seed_reward;
  const value = `${lead >= 0 ? "+" : ""}${lead.toFixed(4)}`;
  if (comparison.noise == null) return [value, "noise unknown (no fidelity report)"];
  const ratio = `${(lead / comparison.noise).toFixed(1)}× noise`;
  return [value, comparison.beats_seed ? `${ratio}: beyond the noise` : `${ratio}: within the noise`];
}
