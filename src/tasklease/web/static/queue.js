// One queue: its counts, pause / resume, its queued tasks (dequeue order) and recent failures.
import {api, query, refresher} from './api.js';
import {failureRow} from './overview.js';
import {fill, fmtAgo, fmtTime, h, PRIORITY_NAMES, syncList, table, taskLink} from './dom.js';

const COUNTS = ['waiting', 'queued', 'pending', 'running', 'succeeded', 'failed', 'cancelled'];

function queuedRow(t, now) {
  return h('tr', {testid: `queued-row-${t.id}`},
    h('td', null, taskLink(t.id)),
    h('td', {class: 'mono'}, t.type),
    h('td', null, `${t.priority} (${PRIORITY_NAMES[t.priority] ?? '?'})`),
    h('td', {class: 'nowrap'}, fmtAgo(now - t.created_at)));
}

export function mount(root, ctx, route) {
  const name = route.name;
  const status = h('div', {class: 'queue-status', testid: 'queue-status'});
  const counts = h('div', {class: 'tiles', testid: 'queue-counts'});
  const depth = h('div', {class: 'tiles', testid: 'queue-depth'});
  const actions = h('div', {class: 'actions', testid: 'queue-actions'});
  const queuedBody = h('tbody');
  const failBody = h('tbody');
  const noQueued = h('p', {class: 'muted', hidden: true, testid: 'no-queued'}, 'Nothing queued.');
  const noFailures = h('p', {class: 'muted', hidden: true}, 'No failures.');
  const moreQueued = h('p', {class: 'small', hidden: true},
    h('a', {href: `#/tasks${query({state: 'queued', queue: name})}`}, 'all queued tasks'));
  const queuedTable = table('queued-list', ['task', 'type', 'priority', 'waiting'], queuedBody);
  const failTable = table('queue-failures', ['task', 'type', 'queue', 'error', 'when'], failBody);
  root.append(
    h('p', {class: 'crumbs'}, h('a', {href: '#/'}, 'Overview'), ' / queue'),
    h('h1', null, 'Queue ', h('span', {class: 'mono', testid: 'queue-name'}, name)),
    status, actions,
    h('h2', null, 'Tasks'), counts,
    h('h2', null, 'Queued by priority'), depth,
    h('h2', null, 'Queued tasks ', h('span', {class: 'muted small'}, '(in dequeue order)')),
    queuedTable, noQueued, moreQueued,
    h('h2', null, 'Recent failures ', h('a', {class: 'small', href: `#/tasks${query({state: 'failed', queue: name})}`},
      'all')),
    failTable, noFailures,
  );

  let info = null;
  const reason = h('input', {type: 'text', placeholder: 'reason (optional)', maxlength: '200',
    testid: 'pause-reason', 'aria-label': 'pause reason'});
  const pauseButton = h('button', {type: 'button', class: 'btn btn-warn', testid: 'action-pause'}, 'Pause queue');
  const resumeButton = h('button', {type: 'button', class: 'btn', testid: 'action-resume'}, 'Resume queue');
  pauseButton.addEventListener('click', async () => {
    const q = await ctx.act(pauseButton,
      () => api(`/api/queues/${encodeURIComponent(name)}/pause`, {method: 'POST', body: {reason: reason.value}}),
      `queue ${name} paused`);
    if (q) {
      info = q;
      render();
    }
  });
  resumeButton.addEventListener('click', async () => {
    const q = await ctx.act(resumeButton,
      () => api(`/api/queues/${encodeURIComponent(name)}/resume`, {method: 'POST', body: {}}),
      `queue ${name} resumed`);
    if (q) {
      info = q;
      render();
    }
  });

  function render() {
    const q = info || {name, paused: false, depth: {}};
    if (q.paused) {
      fill(status, h('span', {class: 'badge badge-warn', testid: 'queue-paused'}, 'paused'),
        ` since ${fmtTime(q.paused_at)}`, q.paused_reason ? ': ' : '',
        q.paused_reason ? h('span', {testid: 'queue-paused-reason'}, q.paused_reason) : '',
        h('span', {class: 'muted'}, ' — nothing is assigned from it; running tasks go on, submits still work.'));
    } else {
      fill(status, h('span', {class: 'badge badge-ok', testid: 'queue-active'}, 'active'));
    }
    if (ctx.canAct) {
      if (q.paused) fill(actions, resumeButton);
      else fill(actions, reason, pauseButton);
    } else {
      fill(actions);
    }
    fill(counts, COUNTS.map((c) => h('div', {class: 'tile'},
      h('div', {class: 'tile-value', testid: `queue-count-${c}`}, String(q[c] ?? 0)),
      h('div', {class: 'tile-label'},
        h('a', {href: `#/tasks${query({state: c, queue: name})}`}, c)))));
    const d = q.depth || {};
    fill(depth, ['3', '2', '1', '0'].map((p) => h('div', {class: 'tile'},
      h('div', {class: 'tile-value', testid: `queue-depth-${p}`}, String(d[p] ?? 0)),
      h('div', {class: 'tile-label'}, `priority ${p} (${PRIORITY_NAMES[p]})`))));
  }

  const reload = refresher(async () => {
    try {
      const [queues, queued, failed] = await Promise.all([
        api('/api/queues'),
        api(`/api/tasks${query({state: 'queued', queue: name, limit: 50})}`),
        api(`/api/tasks${query({state: 'failed', queue: name, limit: 10})}`),
      ]);
      info = (Array.isArray(queues) ? queues : []).find((q) => q.name === name) || null;
      render();
      const now = ctx.serverNow();
      syncList(queuedBody, queued.tasks || [], (t) => t.id, (t) => queuedRow(t, now));
      noQueued.hidden = (queued.tasks || []).length > 0;
      queuedTable.hidden = !noQueued.hidden;
      moreQueued.hidden = !queued.cursor;
      syncList(failBody, failed.tasks || [], (t) => t.id, (t) => failureRow(t, now));
      noFailures.hidden = (failed.tasks || []).length > 0;
      failTable.hidden = !noFailures.hidden;
    } catch (err) {
      ctx.flash(err.message);
    }
  }, 700);
  render();
  reload.now();

  return {
    changes(changes) {
      if (changes.some((c) => (c.kind === 'task' && c.queue === name) || (c.kind === 'queue' && c.name === name)
        || c.kind === 'task_gone')) {
        reload.request();
      }
    },
    resync() {
      reload.now();
    },
    unmount() {
      reload.stop();
    },
  };
}
