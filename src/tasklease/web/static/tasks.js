// The task list: filters (state, queue, type), cursor paging, rows updated live.
import {api, query, refresher} from './api.js';
import {fmtAgo, h, queueLink, shorten, stateBadge, syncList, table, taskLink, workerLink} from './dom.js';

const STATES = ['', 'waiting', 'queued', 'pending', 'running', 'succeeded', 'failed', 'cancelled'];
const FIELDS = ['state', 'queue', 'type', 'priority', 'attempts', 'worker', 'updated_at', 'error', 'rerun_of'];

function taskRow(t, now) {
  return h('tr', {testid: `task-row-${t.id}`, 'data-state': t.state},
    h('td', null, taskLink(t.id)),
    h('td', {class: 'mono'}, t.type),
    h('td', null, queueLink(t.queue)),
    h('td', null, stateBadge(t.state, 'row-state')),
    h('td', {class: 'num'}, String(t.priority)),
    h('td', {class: 'num'}, String(t.attempts ?? 0)),
    h('td', null, workerLink(t.worker)),
    h('td', {class: 'nowrap'}, fmtAgo(now - t.updated_at)),
    h('td', {class: 'error-cell', title: t.error || ''}, shorten(t.error || '', 120)));
}

function matches(change, filters) {
  return (!filters.state || change.state === filters.state)
    && (!filters.queue || change.queue === filters.queue)
    && (!filters.type || change.type === filters.type);
}

export function mount(root, ctx, route) {
  const p = route.params;
  const filters = {state: p.get('state') || '', queue: p.get('queue') || '', type: p.get('type') || ''};
  const cursor = p.get('cursor') || '';

  const stateSelect = h('select', {name: 'state', testid: 'filter-state', 'aria-label': 'state'},
    STATES.map((st) => h('option', {value: st, selected: st === filters.state}, st || 'any state')));
  const queueInput = h('input', {type: 'text', name: 'queue', value: filters.queue, placeholder: 'queue',
    list: 'queue-names', testid: 'filter-queue', 'aria-label': 'queue'});
  const typeInput = h('input', {type: 'text', name: 'type', value: filters.type, placeholder: 'type',
    testid: 'filter-type', 'aria-label': 'type'});
  const queueNames = h('datalist', {id: 'queue-names'});
  const form = h('form', {class: 'filters', testid: 'filters'},
    stateSelect, queueInput, typeInput, queueNames,
    h('button', {type: 'submit', class: 'btn', testid: 'filter-apply'}, 'Filter'),
    h('a', {href: '#/tasks', class: 'small', testid: 'filter-clear'}, 'clear'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    ctx.navigate(`#/tasks${query({state: stateSelect.value, queue: queueInput.value.trim(),
      type: typeInput.value.trim()})}`);
  });
  stateSelect.addEventListener('change', () => form.requestSubmit());

  const body = h('tbody');
  const empty = h('p', {class: 'muted', hidden: true, testid: 'no-tasks'}, 'No tasks.');
  const next = h('a', {class: 'btn', hidden: true, testid: 'next-page'}, 'Next page →');
  const first = h('a', {class: 'btn', hidden: !cursor, testid: 'first-page', href: `#/tasks${query(filters)}`},
    '← First page');
  const note = filters.state && ['succeeded', 'failed', 'cancelled'].includes(filters.state)
    ? 'newest first' : filters.state === 'queued' ? 'in dequeue order' : filters.state ? '' : 'all records, by id';
  const listTable = table('task-list',
    ['task', 'type', 'queue', 'state', 'prio', 'attempts', 'worker', 'updated', 'error'], body);
  root.append(
    h('h1', null, 'Tasks'),
    form,
    h('p', {class: 'muted small', testid: 'list-note'}, note),
    listTable,
    empty,
    h('div', {class: 'pager'}, first, next),
  );

  let tasks = [];
  function render() {
    const now = ctx.serverNow();
    syncList(body, tasks, (t) => t.id, (t) => taskRow(t, now));
    empty.hidden = tasks.length > 0;
    listTable.hidden = tasks.length === 0;
  }

  const reload = refresher(async () => {
    try {
      const data = await api(`/api/tasks${query({...filters, limit: 50, cursor})}`);
      tasks = Array.isArray(data.tasks) ? data.tasks : [];
      render();
      if (data.cursor) {
        next.setAttribute('href', `#/tasks${query({...filters, cursor: data.cursor})}`);
        next.hidden = false;
      } else {
        next.removeAttribute('href');
        next.hidden = true;
      }
    } catch (err) {
      ctx.flash(err.message);
    }
  }, 700);
  reload.now();
  api('/api/queues').then((queues) => {
    for (const q of Array.isArray(queues) ? queues : []) queueNames.append(h('option', {value: q.name}));
  }).catch(() => {});

  return {
    changes(changes) {
      let patched = false;
      for (const c of changes) {
        if (c.kind === 'task') {
          const i = tasks.findIndex((t) => t.id === c.id);
          if (i >= 0) {
            const t = {...tasks[i]};
            for (const f of FIELDS) if (f in c) t[f] = c[f];
            tasks[i] = t;
            patched = true;
          } else if (!cursor && matches(c, filters)) {
            reload.request(); // a new task on the first page
          }
        } else if (c.kind === 'task_gone' && tasks.some((t) => t.id === c.id)) {
          tasks = tasks.filter((t) => t.id !== c.id);
          patched = true;
        }
      }
      if (patched) render();
    },
    resync() {
      reload.now();
    },
    unmount() {
      reload.stop();
    },
  };
}
