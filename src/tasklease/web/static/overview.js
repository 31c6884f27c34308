// Overview: queues (depth per priority, counts, paused), workers, throughput, latest failures.
import {api, refresher} from './api.js';
import {renderChart} from './chart.js';
import {fill, fmtAgo, h, queueLink, shorten, stateBadge, syncList, table, taskLink} from './dom.js';

const STATES = ['waiting', 'queued', 'pending', 'running', 'succeeded', 'failed', 'cancelled'];

function tile(label, value, testid, extra) {
  return h('div', {class: 'tile'}, h('div', {class: 'tile-value', testid}, String(value ?? '—')),
    h('div', {class: 'tile-label'}, label), extra);
}

function queueRow(q) {
  const depth = q.depth || {};
  return h('tr', {testid: `queue-row-${q.name}`, 'data-queue': q.name, class: q.paused ? 'paused' : null},
    h('td', null, queueLink(q.name, `queue-link-${q.name}`)),
    h('td', {testid: 'queue-paused'}, q.paused
      ? h('span', {class: 'badge badge-warn', title: q.paused_reason || ''}, 'paused') : h('span', {class: 'muted'}, '—')),
    ['3', '2', '1', '0'].map((p) => h('td', {class: 'num', testid: `queue-depth-${p}`}, String(depth[p] ?? 0))),
    h('td', {class: 'num', testid: 'queue-queued'}, String(q.queued ?? 0)),
    h('td', {class: 'num', testid: 'queue-pending'}, String(q.pending ?? 0)),
    h('td', {class: 'num', testid: 'queue-waiting'}, String(q.waiting ?? 0)),
    h('td', {class: 'num', testid: 'queue-running'}, String(q.running ?? 0)),
    h('td', {class: 'num', testid: 'queue-succeeded'}, String(q.succeeded ?? 0)),
    h('td', {class: 'num', testid: 'queue-failed'}, String(q.failed ?? 0)),
    h('td', {class: 'num', testid: 'queue-cancelled'}, String(q.cancelled ?? 0)));
}

export function failureRow(t, now) {
  return h('tr', {testid: `failure-row-${t.id}`},
    h('td', null, taskLink(t.id)),
    h('td', {class: 'mono'}, t.type),
    h('td', null, queueLink(t.queue)),
    h('td', {class: 'error-cell', title: t.error || ''}, shorten(t.error || '', 200)),
    h('td', {class: 'nowrap'}, fmtAgo(now - t.updated_at)));
}

export function mount(root, ctx) {
  const tiles = h('div', {class: 'tiles', testid: 'overview-tiles'});
  const workerTiles = h('div', {class: 'tiles', testid: 'overview-workers'});
  const queueBody = h('tbody');
  const failBody = h('tbody');
  const chartBox = h('div', {testid: 'chart-box'});
  const noQueues = h('p', {class: 'muted', hidden: true}, 'No queues yet: submit a task.');
  const noFailures = h('p', {class: 'muted', hidden: true, testid: 'no-failures'}, 'No failures.');
  const leader = h('span', {testid: 'leader'});
  const failTable = table('latest-failures', ['task', 'type', 'queue', 'error', 'when'], failBody);
  root.append(
    h('h1', null, 'Overview'),
    h('h2', null, 'Tasks'), tiles,
    h('h2', null, 'Workers ', h('a', {href: '#/workers', class: 'small'}, 'details')), workerTiles,
    h('p', {class: 'muted small'}, 'Leading scheduler: ', leader),
    h('h2', null, 'Queues'),
    table('overview-queues', ['queue', 'paused', 'p3', 'p2', 'p1', 'p0', 'queued', 'pending', 'waiting',
      'running', 'succeeded', 'failed', 'cancelled'], queueBody),
    noQueues,
    h('h2', null, 'Throughput'), chartBox,
    h('h2', null, 'Latest failures ', h('a', {href: '#/tasks?state=failed', class: 'small'}, 'all')),
    failTable,
    noFailures,
  );

  let data = null;
  let fetchedAt = 0;

  function render() {
    if (!data) return;
    const states = data.states || {};
    fill(tiles, STATES.map((st) => tile(st, states[st] ?? 0, `state-count-${st}`)),
      tile('finished, last 60 s', data.throughput?.finished ?? 0, 'throughput-finished'),
      tile('failed, last 60 s', data.throughput?.failed ?? 0, 'throughput-failed'));
    const w = data.workers || {};
    fill(workerTiles,
      tile('live', w.live ?? 0, 'workers-live'),
      tile('capacity', w.capacity ?? 0, 'workers-capacity'),
      tile('running', w.running ?? 0, 'workers-running'),
      tile('free', w.free ?? 0, 'workers-free'),
      tile('draining', w.draining ?? 0, 'workers-draining'));
    leader.textContent = data.leader ?? 'none';
    const queues = Array.isArray(data.queues) ? data.queues : [];
    syncList(queueBody, queues, (q) => q.name, queueRow);
    noQueues.hidden = queues.length > 0;
    const failures = Array.isArray(data.latest_failures) ? data.latest_failures : [];
    const now = ctx.serverNow();
    syncList(failBody, failures, (t) => t.id, (t) => failureRow(t, now));
    noFailures.hidden = failures.length > 0;
    failTable.hidden = failures.length === 0;
  }

  function chart() {
    fill(chartBox, renderChart(ctx.throughput, ctx.serverNow(), chartBox.clientWidth - 22));
  }

  const reload = refresher(async () => {
    try {
      fetchedAt = Date.now();
      data = await api('/api/overview');
      ctx.setServerTime(data.at);
      render();
    } catch (err) {
      ctx.flash(err.message);
    }
  }, 1000);
  reload.now();
  chart();

  let ticks = 0;
  return {
    changes(changes) {
      // Counts and queues move with tasks, queues and the leader: one refetch per second at most.
      // Heartbeats alone (worker changes, every second per worker) refetch every 5 s at most.
      if (changes.some((c) => c.kind !== 'worker') || Date.now() - fetchedAt > 5000) reload.request();
      chart();
    },
    resync() {
      reload.now();
    },
    chart,
    tick() {
      ticks += 1;
      if (ticks % 5 === 0) chart();
    },
    unmount() {
      reload.stop();
    },
  };
}
