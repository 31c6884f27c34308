// DOM helpers. Everything from a task (payload, result, error, type, queue, worker ids) is
// untrusted: it only ever reaches the page as text (textContent / text nodes), never as HTML.

const SVG_NS = 'http://www.w3.org/2000/svg';

function setAttrs(el, attrs) {
  if (!attrs) return;
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') el.setAttribute('class', String(value));
    else if (key === 'testid') el.setAttribute('data-testid', String(value));
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
}

function appendAll(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** h('a', {href: '#/', class: 'x', testid: 'y', onclick: fn}, 'text', childNode, [more]) */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  appendAll(el, children);
  return el;
}

/** The same for SVG elements (createElementNS). */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  appendAll(el, children);
  return el;
}

/** Replace every child of el. */
export function fill(el, ...children) {
  el.replaceChildren();
  appendAll(el, children);
  return el;
}

const keys = new WeakMap();

/**
 * Keyed reconciliation: container's children become one element per item, in order. An item
 * whose data did not change keeps its element (tests and focus keep their references).
 */
export function syncList(container, items, keyOf, render) {
  const old = new Map();
  for (const el of container.children) {
    const k = keys.get(el);
    if (k) old.set(k.key, el);
  }
  const out = [];
  for (const item of items) {
    const key = keyOf(item);
    const sig = JSON.stringify(item);
    let el = old.get(key);
    if (!el || keys.get(el).sig !== sig) {
      el = render(item);
      keys.set(el, {key, sig});
    }
    out.push(el);
  }
  container.replaceChildren(...out);
}

/** Pretty JSON as text in a <pre>. */
export function jsonBlock(value, testid) {
  let text;
  try {
    text = value === undefined ? 'null' : JSON.stringify(value, null, 2);
  } catch (err) {
    text = String(value);
  }
  return h('pre', {class: 'json', testid}, text);
}

/** A table inside a horizontally scrolling wrapper. */
export function table(testid, headers, tbody) {
  return h('div', {class: 'table-wrap'},
    h('table', {testid},
      h('thead', null, h('tr', null, headers.map((x) => h('th', {scope: 'col'}, x)))),
      tbody));
}

// ---- formatting --------------------------------------------------------------------------

export function fmtTime(epoch) {
  if (typeof epoch !== 'number' || !isFinite(epoch)) return '—';
  const d = new Date(epoch * 1000);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function fmtDuration(seconds) {
  if (typeof seconds !== 'number' || !isFinite(seconds)) return '—';
  if (seconds < 0) seconds = 0;
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.floor(seconds % 60)} s`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
  return `${Math.floor(seconds / 86400)} d ${Math.floor((seconds % 86400) / 3600)} h`;
}

export function fmtAgo(seconds) {
  if (typeof seconds !== 'number' || !isFinite(seconds)) return '—';
  return `${fmtDuration(seconds)} ago`;
}

export const PRIORITY_NAMES = {3: 'urgent', 2: 'high', 1: 'normal', 0: 'low'};

export function stateBadge(state, testid) {
  const known = ['waiting', 'queued', 'pending', 'running', 'succeeded', 'failed', 'cancelled'];
  const cls = known.includes(state) ? `state state-${state}` : 'state';
  return h('span', {class: cls, testid}, state ?? '?');
}

export function taskLink(id, testid) {
  return h('a', {href: `#/tasks/${encodeURIComponent(id)}`, class: 'mono', testid}, id);
}

export function queueLink(name, testid) {
  return h('a', {href: `#/queues/${encodeURIComponent(name)}`, testid}, name);
}

export function workerLink(id) {
  if (id === null || id === undefined) return '—';
  return h('a', {href: `#/workers?focus=${encodeURIComponent(id)}`, class: 'mono'}, id);
}

export function shorten(text, max = 160) {
  if (typeof text !== 'string') return text;
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}
