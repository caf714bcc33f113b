// The search list and the form that starts a search from one of the server's presets.

import { getJson, isAbort, send } from "./api.js";
import * as fmt from "./format.js";

const { el } = fmt;
const ACTIVE = new Set(["created", "running", "stopping"]);
const POLL_MS = 5000;

export class ListPage {
  constructor(view) {
    this.aborter = new AbortController();
    view.replaceChildren(document.getElementById("list-page").content.cloneNode(true));
    this.view = view;
    this.form = view.querySelector("form");
    this.archived = view.querySelector("input[name=archived]");
    this.archived.addEventListener("change", () => this.refresh());
    this.wireForm();
  }

  async start() {
    document.title = "NAS-FPN searches";
    await Promise.all([this.loadSearches(), this.loadPresets()]);
  }

  // --- list ---------------------------------------------------------------------------------------

  /** Load the list; keep polling while a search may still change. */
  async loadSearches() {
    clearTimeout(this.timer);
    const query = this.archived.checked ? "?include_archived=true" : "";
    const searches = await getJson(`/api/searches${query}`, this.aborter.signal);
    const body = this.view.querySelector("table.searches tbody");
    body.replaceChildren(...searches.map(searchRow));
    if (!searches.length) body.append(el("tr", { class: "empty-row" }, el("td", { colspan: 6 }, "No search yet: start one.")));
    if (searches.some((search) => ACTIVE.has(search.status))) this.timer = setTimeout(() => this.refresh(), POLL_MS);
  }

  refresh() {
    this.loadSearches().then(() => this.listMessage(""), (error) => {
      if (!isAbort(error)) this.listMessage(`Could not load the searches: ${error.message}`);
    });
  }

  listMessage(text) {
    const box = this.view.querySelector("section .message");
    box.hidden = !text;
    box.textContent = text;
  }

  // --- start form ---------------------------------------------------------------------------------

  async loadPresets() {
    this.presets = await getJson("/api/config-presets", this.aborter.signal);
    const select = this.form.elements.preset;
    select.replaceChildren(...this.presets.map((preset) => el("option", { value: preset.name }, preset.name)));
    if (!this.presets.length) select.append(el("option", { value: "" }, "no preset on the server"));
    this.choosePreset();
  }

  wireForm() {
    const { preset, episodes } = this.form.elements;
    preset.addEventListener("change", () => this.choosePreset());
    episodes.addEventListener("input", () => this.syncBudget());
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit().catch((error) => this.formError(error.message));
    });
  }

  /** Fill the budget and the JSON editor from the chosen preset (or say why it does not load). */
  choosePreset() {
    const preset = this.presets.find((p) => p.name === this.form.elements.preset.value);
    const problem = this.view.querySelector(".preset-error");
    problem.hidden = !(preset && preset.error);
    problem.textContent = preset && preset.error ? preset.error : "";
    const config = preset && preset.config;
    this.form.elements.config.value = config ? JSON.stringify(config, null, 2) : "";
    this.form.elements.episodes.value = config && config.budget ? config.budget.episodes ?? "" : "";
    this.form.querySelector("button[type=submit]").disabled = !config;
    this.formError("");
  }

  /** Keep the JSON's budget in step with the budget field, when the JSON parses. */
  syncBudget() {
    const episodes = Number(this.form.elements.episodes.value);
    const config = parseJson(this.form.elements.config.value);
    if (!config || !Number.isInteger(episodes) || episodes < 1) return;
    config.budget = { ...(config.budget || {}), episodes };
    this.form.elements.config.value = JSON.stringify(config, null, 2);
  }

  async submit() {
    const { name, episodes, config: text } = this.form.elements;
    const config = parseJson(text.value);
    if (!config) throw new Error("The config is not valid JSON.");
    const budget = Number(episodes.value);
    if (!Number.isInteger(budget) || budget < 1) throw new Error("The episode budget must be a whole number above 0.");
    config.budget = { ...(config.budget || {}), episodes: budget };
    this.formError("");
    const button = this.form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const launched = await send("POST", "/api/searches", { name: name.value.trim() || null, config, start: true });
      location.hash = `#/searches/${launched.search.id}`;
    } finally {
      button.disabled = false;
    }
  }

  formError(text) {
    const box = this.view.querySelector(".form-error");
    box.hidden = !text;
    box.textContent = text;
    if (text) box.scrollIntoView({ block: "nearest" });  // below the open JSON editor it may be off screen
  }

  dispose() {
    clearTimeout(this.timer);
    this.aborter.abort();
  }
}

function searchRow(search) {
  const budget = search.budget_episodes;
  const progress = el("div", { class: "progress-cell" },
    budget ? el("progress", { max: 1, value: search.progress, "aria-label": `${search.name}: share of the budget` }) : null,
    el("span", {}, `${fmt.count(search.num_episodes)} / ${budget ? fmt.count(budget) : "∞"}`));
  return el(
    "tr",
    { "data-id": search.id },
    el("td", {}, el("a", { href: `#/searches/${search.id}` }, search.name)),
    el("td", {}, fmt.badge(search.status), search.archived ? el("span", { class: "badge archived" }, "archived") : null),
    el("td", {}, progress),
    el("td", { class: "num" }, fmt.count(search.num_unique)),
    el("td", { class: "num" }, fmt.reward(search.best_reward)),
    el("td", {}, fmt.time(search.started_at || search.created_at)),
  );
}

function parseJson(text) {
  try {
    const value = JSON.parse(text);
    return value && typeof value === "object" && !Array.isArray(value) ? value : null;
  } catch {
    return null;
  }
}
