// The search page's three uPlot charts, fed from a ProgressSeries.
/* global uPlot */

import { reward as formatReward, statusColor } from "./format.js";
import { MOVING_WINDOW } from "./series.js";

const POINT_STATUSES = ["completed", "cached", "failed"];
const HEIGHTS = { reward: 300, unique: 220, entropy: 220 };
const AVERAGE_COLOR = "#1d2433";
const BEST_COLOR = "#1f9d55";
const REFERENCE_COLOR = "#a3a9b3";
const SERIES_COLOR = "#0f8b8d";  // single-series charts: distinct from every status colour
const BAND_COLOR = "rgba(163, 169, 179, 0.22)";

const episodeAxis = { label: "episode", labelSize: 20, size: 36 };

export class Charts {
  /** `containers`: {reward, unique, entropy} elements; `onPick(number)`: a reward point was clicked. */
  constructor(containers, onPick) {
    this.containers = containers;
    this.band = null;
    this.plots = {
      reward: this.plot("reward", rewardOptions(() => this.band)),
      unique: this.plot("unique", uniqueOptions()),
      entropy: this.plot("entropy", entropyOptions()),
    };
    this.listenForPicks(onPick);
    // Charts follow their card's width (window resizes, the dialog's scrollbar...).
    this.resizer = new ResizeObserver(() => this.resize());
    Object.values(containers).forEach((container) => this.resizer.observe(container));
  }

  plot(name, options) {
    const container = this.containers[name];
    const size = { width: container.clientWidth || 600, height: HEIGHTS[name] };
    const empty = options.series.map(() => []);
    return new uPlot({ ...options, ...size }, empty, container);
  }

  /** Redraw from the series; the containers' data-points say how many x values each chart holds. */
  update(series) {
    const columns = {
      reward: series.rewardColumns(POINT_STATUSES),
      unique: series.uniqueColumns(),
      entropy: series.entropyColumns(),
    };
    for (const [name, data] of Object.entries(columns)) {
      this.plots[name].setData(data);
      this.containers[name].dataset.points = data[0].length;
    }
    this.series = series;
  }

  /** `band`: {reward, noise} of the seed cell and the proxy's paired noise, or null (no band). */
  setSeedBand(band) {
    if (JSON.stringify(band) === JSON.stringify(this.band)) return;
    this.band = band;
    this.plots.reward.redraw(false);
  }

  /** A click (not a drag, which zooms) on the reward chart picks the episode under the cursor. */
  listenForPicks(onPick) {
    const over = this.plots.reward.over;
    let downX = null;
    // uPlot's drag handling swallows "click", so a press and release in place count as one.
    over.addEventListener("mousedown", (event) => (downX = event.clientX));
    over.addEventListener("mouseup", (event) => {
      const index = this.plots.reward.cursor.idx;
      if (downX != null && Math.abs(event.clientX - downX) < 3 && index != null && this.series) {
        onPick(this.series.numbers[index]);
      }
      downX = null;
    });
  }

  resize() {
    for (const [name, plot] of Object.entries(this.plots)) {
      const width = this.containers[name].clientWidth;
      if (width && width !== plot.width) plot.setSize({ width, height: HEIGHTS[name] });
    }
  }

  destroy() {
    this.resizer.disconnect();
    Object.values(this.plots).forEach((plot) => plot.destroy());
  }
}

/** The seed cell's reward +- the proxy's paired noise, under the points: a lead inside it is no proof. */
function drawBand(u, band) {
  if (!band) return;
  const { left, top, width, height } = u.bbox;
  const y = (value) => u.valToPos(value, "y", true);
  const upper = Math.max(top, y(band.reward + band.noise));
  const lower = Math.min(top + height, y(band.reward - band.noise));
  const ctx = u.ctx;
  ctx.save();
  ctx.fillStyle = BAND_COLOR;
  ctx.fillRect(left, upper, width, Math.max(0, lower - upper));
  const middle = y(band.reward);
  if (middle >= top && middle <= top + height) {
    ctx.strokeStyle = REFERENCE_COLOR;
    ctx.lineWidth = devicePixelRatio;
    ctx.setLineDash([6 * devicePixelRatio, 4 * devicePixelRatio]);
    ctx.beginPath();
    ctx.moveTo(left, middle);
    ctx.lineTo(left + width, middle);
    ctx.stroke();
  }
  ctx.restore();
}

/** `band()`: the seed band to draw now (see Charts.setSeedBand). */
function rewardOptions(band) {
  const points = POINT_STATUSES.map((status) => {
    const color = statusColor(status);
    return {
      label: status,
      stroke: color,
      fill: color,  // no area is drawn without paths; this fills the legend marker
      paths: () => null,  // a scatter: points only, no line between them
      points: { show: true, size: 4, width: 0, fill: color, stroke: color },
      value: (u, value) => formatReward(value),
    };
  });
  return {
    cursor: { drag: { x: true, y: false } },
    scales: { x: { time: false } },
    hooks: { drawAxes: [(u) => drawBand(u, band())] },
    axes: [episodeAxis, { label: "reward", labelSize: 20, size: 56, values: (u, ticks) => ticks.map((t) => t.toFixed(2)) }],
    series: [
      { label: "episode" },
      ...points,
      line(`moving average (${MOVING_WINDOW})`, AVERAGE_COLOR, 2, formatReward),
      line("best so far", BEST_COLOR, 2, formatReward),
    ],
  };
}

function uniqueOptions() {
  return {
    scales: { x: { time: false } },
    axes: [episodeAxis, { label: "unique architectures", labelSize: 20, size: 50 }],
    series: [
      { label: "episode" },
      line("unique", SERIES_COLOR, 2),
      { ...line("all unique (y = x)", REFERENCE_COLOR, 1), dash: [6, 4] },
    ],
  };
}

function entropyOptions() {
  return {
    scales: { x: { time: false } },
    axes: [{ ...episodeAxis, label: "episodes reported" }, { label: "entropy (nats)", labelSize: 20, size: 50 }],
    series: [{ label: "episodes" }, line("entropy", SERIES_COLOR, 2, (v) => (v == null ? "–" : v.toFixed(3)))],
  };
}

function line(label, stroke, width, format) {
  const series = { label, stroke, width, spanGaps: true, points: { show: false } };
  if (format) series.value = (u, value) => format(value);
  return series;
}
