// tasklease dashboard: the shell (config, flash messages, the live feed, the hash router).
// No build step, no third-party code; the pages are ES modules next to this file.
import {api, query} from './api.js';
import {Throughput} from './chart.js';
import {h, fill} from './dom.js';
import * as overview from './overview.js';
import * as queuePage from './queue.js';
import * as tasksPage from './tasks.js';
import * as taskPage from './task.js';
import * as workersPage from './workers.js';

const main = document.getElementById('main');
const flashBox = document.getElementById('flash');
const liveBadge = document.getElementById('live');

const ctx = {
  config: {read_only: true, namespace: '', version: '', auth: false},
  throughput: new Throughput(),
  offset: 0, // server clock minus this browser's clock, in seconds
  serverNow() {
    return Date.now() / 1000 + this.offset;
  },
  setServerTime(at) {
    if (typeof at === 'number' && isFinite(at)) this.offset = at - Date.now() / 1000;
  },
  get canAct() {
    return !this.config.read_only;
  },
  flash,
  act,
  navigate(hash) {
    if (location.hash === hash) route();
    else location.hash = hash;
  },
};

// ---- flash messages ----------------------------------------------------------------------

const flashTimes = new WeakMap();

function flash(message, kind = 'error') {
  const close = h('button', {type: 'button', class: 'flash-close', 'aria-label': 'dismiss'}, '×');
  const box = h('div', {class: `flash-msg flash-${kind}`, role: kind === 'error' ? 'alert' : 'status',
    testid: `flash-${kind}`}, h('span', {class: 'flash-text'}, String(message)), close);
  flashTimes.set(box, Date.now());
  close.addEventListener('click', () => box.remove());
  flashBox.append(box);
  while (flashBox.children.length > 4) flashBox.firstElementChild.remove();
  if (kind !== 'error') setTimeout(() => box.remove(), 6000);
  return box;
}

/** Run an action from a button: disable it meanwhile; an API error becomes an error message. */
async function act(button, fn, success) {
  if (button) button.disabled = true;
  try {
    const result = await fn();
    if (success) flash(typeof success === 'function' ? success(result) : success, 'info');
    return result;
  } catch (err) {
    flash(err && err.message ? err.message : String(err), 'error');
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

// ---- the live feed -----------------------------------------------------------------------

let source = null;
let lastRevision = null;
let retryTimer = null;

function setLive(state, text) {
  liveBadge.className = `live live-${state}`;
  liveBadge.textContent = text ?? state;
}

function countFinished(changes) {
  for (const c of changes) {
    if (c.kind === 'task') ctx.throughput.add(c.id, c.state, c.updated_at);
  }
}

function connect() {
  if (retryTimer !== null) clearTimeout(retryTimer);
  retryTimer = null;
  if (source) source.close();
  const url = `/api/events${query({last_event_id: lastRevision})}`;
  source = new EventSource(url);
  source.addEventListener('open', () => setLive('live'));
  source.addEventListener('changes', (event) => {
    let msg;
    try {
      msg = JSON.parse(event.data);
    } catch (err) {
      return;
    }
    if (typeof msg.revision === 'number') lastRevision = msg.revision;
    const changes = Array.isArray(msg.changes) ? msg.changes : [];
    countFinished(changes);
    if (current && current.changes) current.changes(changes);
  });
  source.addEventListener('resync', (event) => {
    try {
      const msg = JSON.parse(event.data);
      if (typeof msg.revision === 'number') lastRevision = msg.revision;
    } catch (err) {
      // keep the old revision
    }
    if (current && current.resync) current.resync();
    seedThroughput(); // the chart's missed finishes (each task counts once)
  });
  source.addEventListener('error', () => {
    // Reconnect ourselves from the last revision seen (the server replays what we missed).
    source.close();
    source = null;
    setLive('reconnecting');
    retryTimer = setTimeout(connect, 2000);
  });
}

// ---- the router --------------------------------------------------------------------------

let current = null;

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, search] = raw.split('?', 2);
  const params = new URLSearchParams(search || '');
  const parts = path.split('/').filter(Boolean).map((p) => {
    try {
      return decodeURIComponent(p);
    } catch (err) {
      return p;
    }
  });
  if (parts.length === 0) return {page: 'overview', params};
  if (parts[0] === 'queues' && parts.length === 2) return {page: 'queue', name: parts[1], params};
  if (parts[0] === 'tasks' && parts.length === 1) return {page: 'tasks', params};
  if (parts[0] === 'tasks' && parts.length === 2) return {page: 'task', id: parts[1], params};
  if (parts[0] === 'workers' && parts.length === 1) return {page: 'workers', params};
  return {page: 'notfound', params};
}

const PAGES = {overview, queue: queuePage, tasks: tasksPage, task: taskPage, workers: workersPage};
const NAV = {overview: 'overview', queue: 'overview', tasks: 'tasks', task: 'tasks', workers: 'workers'};

function route() {
  if (current && current.unmount) current.unmount();
  // Messages belong to the page they were shown on; keep only those of the last moment (an action
  // that navigates, such as "run again", reports on the page it leads to).
  for (const box of [...flashBox.children]) {
    if (Date.now() - (flashTimes.get(box) ?? 0) > 1500) box.remove();
  }
  current = null;
  const r = parseHash();
  for (const a of document.querySelectorAll('[data-nav]')) {
    a.classList.toggle('active', a.getAttribute('data-nav') === NAV[r.page]);
  }
  const root = h('section', {class: `page page-${r.page}`, testid: `page-${r.page}`});
  fill(main, root);
  const module = PAGES[r.page];
  if (!module) {
    root.append(h('h1', null, 'Not found'), h('p', null, 'No such page. ', h('a', {href: '#/'}, 'Overview')));
    return;
  }
  current = module.mount(root, ctx, r);
  window.scrollTo(0, 0);
}

setInterval(() => {
  if (current && current.tick) current.tick();
}, 1000);

// ---- start -------------------------------------------------------------------------------

async function seedThroughput() {
  // The chart's history before this page opened: tasks finished in its window, newest first.
  const since = ctx.serverNow() - ctx.throughput.windowS;
  for (const state of ['succeeded', 'failed']) {
    let cursor = null;
    for (let page = 0; page < 5; page++) {
      let data;
      try {
        data = await api(`/api/tasks${query({state, since: since.toFixed(3), limit: 200, cursor})}`);
      } catch (err) {
        return;
      }
      for (const t of data.tasks || []) ctx.throughput.add(t.id, t.state, t.updated_at);
      cursor = data.cursor;
      if (!cursor) break;
    }
  }
  if (current && current.chart) current.chart();
}

async function start() {
  try {
    ctx.config = await api('/api/config');
  } catch (err) {
    flash(`cannot load the configuration: ${err.message}`);
  }
  document.body.classList.toggle('read-only', Boolean(ctx.config.read_only));
  document.getElementById('read-only').hidden = !ctx.config.read_only;
  document.getElementById('namespace').textContent = ctx.config.namespace ? `namespace ${ctx.config.namespace}` : '';
  document.getElementById('version').textContent = ctx.config.version ? `tasklease ${ctx.config.version}` : '';
  try {
    // Start the feed at the overview's revision: nothing between the two is missed.
    const first = await api('/api/overview');
    ctx.setServerTime(first.at);
    if (typeof first.revision === 'number') lastRevision = first.revision;
  } catch (err) {
    // the page shows its own error
  }
  window.addEventListener('hashchange', route);
  route();
  connect();
  seedThroughput();
}

start();
