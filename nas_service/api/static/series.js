// The progress series of one search, kept in columns and grown by incremental polls.

const SCORED = new Set(["completed", "cached"]);
export const MOVING_WINDOW = 25;

export class ProgressSeries {
  constructor() {
    this.numbers = [];
    this.statuses = [];
    this.rewards = [];
    this.first = [];
    this.entropyEpisodes = [];
    this.entropy = [];
    this.lastUpdate = null;
    // The API's `poll_after`: every episode up to it has finished. Later ones (unfinished episodes
    // are listed too, and change when they finish) are read again by each poll.
    this.cursor = null;
  }

  /** The query string of the next poll: only what may have changed since the last one. */
  query() {
    const params = new URLSearchParams();
    if (this.cursor != null) params.set("after", this.cursor);
    if (this.lastUpdate != null) params.set("after_update", this.lastUpdate);
    return params.toString();
  }

  /** Merge a `/series` answer fetched with `query()`; true when anything changed. */
  merge(answer, cursor) {
    const keep = cursor == null ? 0 : this.numbers.indexOf(cursor) + 1;
    const before = JSON.stringify([this.statuses.slice(keep), this.rewards.slice(keep)]);
    for (const [column, fresh] of [
      [this.numbers, answer.numbers],
      [this.statuses, answer.statuses],
      [this.rewards, answer.rewards],
      [this.first, answer.first_of_architecture],
    ]) {
      column.splice(keep, column.length - keep, ...fresh);
    }
    this.entropyEpisodes.push(...answer.entropy_episodes);
    this.entropy.push(...answer.entropy);
    this.lastUpdate = answer.last_update;
    this.cursor = answer.poll_after;
    const after = JSON.stringify([this.statuses.slice(keep), this.rewards.slice(keep)]);
    return before !== after || answer.entropy.length > 0;
  }

  /** Reward chart columns: one point series per status, the moving average and the best so far. */
  rewardColumns(statuses) {
    const perStatus = statuses.map((wanted) =>
      this.rewards.map((value, i) => (this.statuses[i] === wanted ? value : null)));
    return [this.numbers, ...perStatus, this.movingAverage(), this.bestSoFar()];
  }

  /** Mean of the last MOVING_WINDOW scored rewards at each episode (failures carry only a penalty). */
  movingAverage() {
    const window = [];
    let sum = 0;
    return this.rewards.map((value, i) => {
      if (SCORED.has(this.statuses[i]) && value != null) {
        window.push(value);
        sum += value;
        if (window.length > MOVING_WINDOW) sum -= window.shift();
      }
      return window.length ? sum / window.length : null;
    });
  }

  bestSoFar() {
    let best = null;
    return this.rewards.map((value, i) => {
      if (SCORED.has(this.statuses[i]) && value != null && (best == null || value > best)) best = value;
      return best;
    });
  }

  /** Unique architectures proposed so far, per episode (the NAS-FPN paper's exploration curve). */
  uniqueColumns() {
    let unique = 0;
    const cumulative = this.first.map((isFirst) => (unique += isFirst ? 1 : 0));
    return [this.numbers, cumulative, this.numbers.map((n) => n + 1)];
  }

  entropyColumns() {
    return [this.entropyEpisodes, this.entropy];
  }
}
