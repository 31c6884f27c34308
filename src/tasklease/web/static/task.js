// One task: state, attempts as a timeline, payload / result / error, rerun links, actions.
import {api, refresher} from './api.js';
import {fill, fmtDuration, fmtTime, h, jsonBlock, PRIORITY_NAMES, queueLink, stateBadge, taskLink,
  workerLink} from './dom.js';

const FINISHED = ['succeeded', 'failed', 'cancelled'];

function attemptItem(a, now) {
  const ended = typeof a.finished_at === 'number';
  const duration = (ended ? a.finished_at : now) - a.started_at;
  const outcome = a.outcome || 'running';
  return h('li', {class: `attempt attempt-${outcome}`, testid: `attempt-${a.n}`},
    h('div', {class: 'attempt-head'},
      h('strong', null, `#${a.n}`), ' ',
      h('span', {class: `state state-${outcome === 'succeeded' ? 'succeeded' : outcome === 'running' ? 'running'
        : outcome === 'cancelled' || outcome === 'handed_back' ? 'cancelled' : 'failed'}`,
      testid: 'attempt-outcome'}, outcome),
      ' on ', h('span', {testid: 'attempt-worker'}, workerLink(a.worker))),
    h('div', {class: 'attempt-times small'},
      fmtTime(a.started_at), ' → ', ended ? fmtTime(a.finished_at) : 'now',
      ' · ', h('span', {testid: 'attempt-duration', 'data-since': ended ? null : String(a.started_at)},
        ended ? fmtDuration(duration) : `running for ${fmtDuration(duration)}`)),
    a.error ? h('pre', {class: 'error-text', testid: 'attempt-error'}, a.error) : null);
}

function row(label, ...value) {
  return [h('dt', null, label), h('dd', null, ...value)];
}

export function mount(root, ctx, route) {
  const id = route.id;
  const head = h('div', {class: 'task-head'});
  const actions = h('div', {class: 'actions', testid: 'task-actions'});
  const details = h('dl', {class: 'details', testid: 'task-details'});
  const links = h('div', {testid: 'task-links'});
  const errorBox = h('div');
  const timeline = h('ol', {class: 'timeline', testid: 'task-attempts'});
  const payload = h('div');
  const result = h('div');
  root.append(
    h('p', {class: 'crumbs'}, h('a', {href: '#/tasks'}, 'Tasks'), ' / task'),
    head, actions, links, errorBox,
    h('h2', null, 'Details'), details,
    h('h2', null, 'Attempts'), timeline,
    h('h2', null, 'Payload'), payload,
    h('h2', null, 'Result'), result,
  );

  let task = null;
  let gone = false;
  let shownPriority = null;

  const prioritySelect = h('select', {testid: 'priority-select', 'aria-label': 'priority'},
    [3, 2, 1, 0].map((p) => h('option', {value: String(p)}, `${p} (${PRIORITY_NAMES[p]})`)));
  const priorityButton = h('button', {type: 'button', class: 'btn', testid: 'action-priority'}, 'Set priority');
  const cancelButton = h('button', {type: 'button', class: 'btn btn-danger', testid: 'action-cancel'}, 'Cancel task');
  const rerunButton = h('button', {type: 'button', class: 'btn', testid: 'action-rerun'}, 'Run again');
  const path = `/api/tasks/${encodeURIComponent(id)}`;

  cancelButton.addEventListener('click', async () => {
    const t = await ctx.act(cancelButton, () => api(`${path}/cancel`, {method: 'POST', body: {reason: 'cancelled from the dashboard'}}),
      'task cancelled');
    if (t) show(t);
  });
  priorityButton.addEventListener('click', async () => {
    const priority = Number(prioritySelect.value);
    const t = await ctx.act(priorityButton, () => api(`${path}/priority`, {method: 'POST', body: {priority}}),
      `priority set to ${priority}`);
    if (t) show(t);
  });
  rerunButton.addEventListener('click', async () => {
    const t = await ctx.act(rerunButton, () => api(`${path}/rerun`, {method: 'POST', body: {}}),
      (n) => `queued again as ${n.id}`);
    if (t && t.id) ctx.navigate(`#/tasks/${encodeURIComponent(t.id)}`);
  });

  function show(t) {
    task = t;
    render();
  }

  function render() {
    if (!task) return;
    const t = task;
    const now = ctx.serverNow();
    fill(head, h('h1', null, 'Task ', h('span', {class: 'mono', testid: 'task-id'}, t.id)),
      h('p', null, stateBadge(gone ? 'gone' : t.state, 'task-state'), ' ',
        h('span', {class: 'mono', testid: 'task-type'}, t.type), ' in ', queueLink(t.queue, 'task-queue'),
        ' · priority ', h('span', {testid: 'task-priority'}, String(t.priority)),
        ` (${PRIORITY_NAMES[t.priority] ?? '?'})`));
    fill(actions);
    if (ctx.canAct && !gone) {
      if (t.state === 'queued' || t.state === 'pending' || t.state === 'waiting') {
        if (shownPriority !== t.priority) prioritySelect.value = String(t.priority); // keep a pending choice
        shownPriority = t.priority;
        actions.append(prioritySelect, priorityButton);
      }
      if (!FINISHED.includes(t.state)) actions.append(cancelButton);
      if (t.state === 'failed' || t.state === 'cancelled') actions.append(rerunButton);
    }
    fill(links);
    if (t.rerun_of) {
      links.append(h('p', null, 'Run again from ', taskLink(t.rerun_of, 'rerun-of-link')));
    }
    if (Array.isArray(t.depends_on) && t.depends_on.length) {
      links.append(h('p', {testid: 'parents'}, 'After ',
        t.depends_on.map((p, i) => [i ? ', ' : '', taskLink(p, `parent-link-${p}`)]),
        t.on_parent_failure === 'run' ? ' (runs even if one fails)' : ''));
    }
    if (t.workflow) {
      links.append(h('p', {testid: 'workflow'}, 'In workflow ', h('span', {class: 'mono'}, t.workflow)));
    }
    if (Array.isArray(t.reruns) && t.reruns.length) {
      links.append(h('p', {testid: 'reruns'}, 'Run again as ',
        t.reruns.map((r, i) => [i ? ', ' : '', taskLink(r, `rerun-link-${r}`)])));
    }
    fill(errorBox);
    if (t.error) errorBox.append(h('h2', null, 'Error'), h('pre', {class: 'error-text', testid: 'task-error'}, t.error));
    const retry = t.retry || {};
    fill(details,
      row('created', fmtTime(t.created_at)),
      row('updated', h('span', {testid: 'task-updated'}, fmtTime(t.updated_at))),
      row('timeout', fmtDuration(t.timeout_s)),
      row('retries', `${retry.max_retries ?? 0} (backoff ${fmtDuration(retry.backoff_s)}, ` +
        `max ${fmtDuration(retry.backoff_max_s)})`),
      t.not_before ? row('not before', fmtTime(t.not_before)) : null,
      row('retention', fmtDuration(t.retention_s)),
      t.requires ? row('requires', Object.entries(t.requires).map(([k, v]) => `${k}=${v}`).join(', ')) : null,
      t.dropped ? row('dropped attempts', `${t.dropped.attempts} (failures ${t.dropped.failures}, ` +
        `losses ${t.dropped.losses})`) : null);
    const attempts = Array.isArray(t.attempts) ? t.attempts : [];
    fill(timeline, attempts.length ? attempts.map((a) => attemptItem(a, now))
      : h('li', {class: 'muted'}, 'No attempts yet.'));
    fill(payload, jsonBlock(t.payload, 'task-payload'));
    fill(result, FINISHED.includes(t.state) || t.result !== null ? jsonBlock(t.result, 'task-result')
      : h('p', {class: 'muted'}, 'Not finished.'));
  }

  const reload = refresher(async () => {
    try {
      show(await api(path));
    } catch (err) {
      if (err.status === 404) {
        fill(head, h('h1', null, 'Task ', h('span', {class: 'mono', testid: 'task-id'}, id)),
          h('p', {testid: 'task-missing'}, 'No such task (it never existed, expired or was purged).'));
      }
      ctx.flash(err.message);
    }
  }, 300);
  reload.now();

  return {
    changes(changes) {
      for (const c of changes) {
        if (c.kind === 'task' && (c.id === id || c.rerun_of === id)) reload.request();
        if (c.kind === 'task_gone' && c.id === id) {
          gone = true;
          render();
          ctx.flash('this task was removed (expired or purged)', 'info');
        }
      }
    },
    resync() {
      reload.now();
    },
    tick() {
      // a running attempt's duration grows
      const now = ctx.serverNow();
      for (const el of timeline.querySelectorAll('[data-since]')) {
        el.textContent = `running for ${fmtDuration(now - Number(el.getAttribute('data-since')))}`;
      }
    },
    unmount() {
      reload.stop();
    },
  };
}
