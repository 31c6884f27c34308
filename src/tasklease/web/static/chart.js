// Throughput over the last minutes, counted from the live feed (task changes into a finished
// state, by their updated_at), drawn as a small stacked bar chart in SVG (createElementNS).
import {h, s} from './dom.js';

const COUNTED = ['succeeded', 'failed'];

export class Throughput {
  constructor({bucketS = 20, buckets = 30} = {}) {
    this.bucketS = bucketS;
    this.buckets = buckets;
    this.seen = new Map(); // task id -> the finished state it was counted in
    this.events = []; // {at, state}
  }

  get windowS() {
    return this.bucketS * this.buckets;
  }

  /** Count a task that reached `state` at `at` (epoch s); each task and state once. */
  add(id, state, at) {
    if (!COUNTED.includes(state) || typeof at !== 'number') return false;
    if (this.seen.get(id) === state) return false;
    this.seen.delete(id);
    this.seen.set(id, state);
    if (this.seen.size > 50000) {
      const oldest = this.seen.keys().next().value;
      this.seen.delete(oldest);
    }
    this.events.push({at, state});
    return true;
  }

  prune(now) {
    const from = now - this.windowS - this.bucketS;
    if (this.events.length && this.events[0].at < from) this.events = this.events.filter((e) => e.at >= from);
  }

  /** [{start, succeeded, failed}] oldest first; the last bucket ends at `now`. */
  series(now) {
    this.prune(now);
    const end = Math.ceil(now / this.bucketS) * this.bucketS;
    const start = end - this.windowS;
    const out = [];
    for (let i = 0; i < this.buckets; i++) out.push({start: start + i * this.bucketS, succeeded: 0, failed: 0});
    for (const e of this.events) {
      const i = Math.floor((e.at - start) / this.bucketS);
      if (i >= 0 && i < this.buckets) out[i][e.state] += 1;
    }
    return out;
  }
}

export function renderChart(throughput, now, pixelWidth = 600) {
  const data = throughput.series(now);
  // drawn at the box's own pixel width, so text and bars keep their size on a phone and a laptop
  const width = Math.max(280, Math.round(pixelWidth));
  const height = 170;
  const left = 34;
  const bottom = 22;
  const top = 8;
  const plotH = height - bottom - top;
  const plotW = width - left - 6;
  const barW = plotW / data.length;
  const max = Math.max(1, ...data.map((d) => d.succeeded + d.failed));
  const scale = plotH / max;
  const total = {succeeded: 0, failed: 0};
  const svg = s('svg', {
    viewBox: `0 0 ${width} ${height}`, class: 'chart', role: 'img', testid: 'throughput-chart',
    'aria-label': `tasks finished per ${throughput.bucketS} s over the last ${throughput.windowS / 60} minutes`,
  });
  // grid and y labels
  for (const frac of [0, 0.5, 1]) {
    const y = top + plotH - frac * plotH;
    svg.append(s('line', {x1: left, x2: width - 6, y1: y, y2: y, class: 'grid'}));
    const label = frac === 0 ? '0' : String(Math.round(max * frac * 10) / 10);
    svg.append(s('text', {x: left - 4, y: y + 4, class: 'axis', 'text-anchor': 'end'}, label));
  }
  data.forEach((d, i) => {
    total.succeeded += d.succeeded;
    total.failed += d.failed;
    const x = left + i * barW + 1;
    const w = Math.max(1, barW - 2);
    const okH = d.succeeded * scale;
    const failH = d.failed * scale;
    const g = s('g', null, s('title', null,
      `${new Date(d.start * 1000).toLocaleTimeString()}: ${d.succeeded} succeeded, ${d.failed} failed`));
    if (okH > 0) g.append(s('rect', {x, y: top + plotH - okH, width: w, height: okH, class: 'bar-ok'}));
    if (failH > 0) g.append(s('rect', {x, y: top + plotH - okH - failH, width: w, height: failH, class: 'bar-fail'}));
    // an invisible full-height rect so the tooltip works on empty buckets too
    g.append(s('rect', {x, y: top, width: w, height: plotH, class: 'bar-hit'}));
    svg.append(g);
  });
  const minutes = throughput.windowS / 60;
  svg.append(s('text', {x: left, y: height - 5, class: 'axis'}, `−${minutes} min`));
  svg.append(s('text', {x: left + plotW / 2, y: height - 5, class: 'axis', 'text-anchor': 'middle'},
    `−${minutes / 2} min`));
  svg.append(s('text', {x: width - 6, y: height - 5, class: 'axis', 'text-anchor': 'end'}, 'now'));
  const legend = h('p', {class: 'legend'},
    h('span', {class: 'swatch swatch-ok'}), ' succeeded ',
    h('strong', {testid: 'chart-succeeded'}, String(total.succeeded)),
    h('span', {class: 'swatch swatch-fail'}), ' failed ',
    h('strong', {testid: 'chart-failed'}, String(total.failed)),
    h('span', {class: 'muted'}, ` · last ${minutes} min, ${throughput.bucketS} s per bar`));
  return h('div', {class: 'chart-box'}, svg, legend);
}
