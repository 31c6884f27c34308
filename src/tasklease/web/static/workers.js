// Workers: load, capacity, running tasks, heartbeat age, draining; the drain action.
import {api, refresher} from './api.js';
import {fmtAgo, fmtTime, h, syncList, table, taskLink} from './dom.js';

const WORKER_FIELDS = ['host', 'pid', 'queues', 'capacity', 'running', 'assigned', 'free', 'cpu', 'memory', 'tags',
  'types', 'version', 'started_at', 'heartbeat_at', 'draining', 'completed'];

function fmtNumber(x, digits = 1) {
  return typeof x === 'number' && isFinite(x) ? x.toFixed(digits) : '—';
}

function usage(w) {
  return `cpu ${fmtNumber(w.cpu)} · mem ${fmtNumber(w.memory)}`;
}

function list(x) {
  if (Array.isArray(x)) return x.join(', ');
  if (x && typeof x === 'object') return Object.entries(x).map(([k, v]) => `${k}=${v}`).join(', ');
  return x === null || x === undefined ? '' : String(x);
}

export function mount(root, ctx, route) {
  const focus = route.params.get('focus');
  const body = h('tbody');
  const empty = h('p', {class: 'muted', hidden: true, testid: 'no-workers'}, 'No live workers.');
  const summary = h('p', {class: 'muted', testid: 'workers-summary'});
  const workerTable = table('worker-list', ['worker', 'host', 'queues', 'load', 'free', 'heartbeat', 'state',
    'completed', 'running tasks', 'started', 'version', ''], body);
  root.append(
    h('h1', null, 'Workers'),
    summary,
    workerTable,
    empty,
  );

  const workers = new Map();

  function drainButton(w) {
    const b = h('button', {type: 'button', class: 'btn btn-warn btn-small', testid: 'action-drain',
      'data-worker': w.id}, 'Drain');
    b.addEventListener('click', async () => {
      const r = await ctx.act(b, () => api(`/api/workers/${encodeURIComponent(w.id)}/drain`, {method: 'POST', body: {}}),
        `worker ${w.id} is draining`);
      if (r) {
        const cur = workers.get(w.id);
        if (cur) {
          workers.set(w.id, {...cur, draining: true});
          render();
        }
      }
    });
    return b;
  }

  function workerRow(w) {
    const capacity = Number(w.capacity) || 0;
    const running = Number(w.running) || 0;
    const pct = capacity ? Math.min(100, Math.round((running / capacity) * 100)) : 0;
    const meter = h('meter', {min: '0', max: String(capacity || 1), value: String(running), 'aria-label': 'load'});
    const tasks = Array.isArray(w.tasks) ? w.tasks : [];
    return h('tr', {testid: `worker-row-${w.id}`, 'data-worker': w.id,
      class: [w.draining ? 'draining' : '', focus === w.id ? 'focus' : ''].join(' ').trim() || null},
    h('td', {class: 'mono', testid: 'worker-id'}, w.id),
    h('td', null, `${w.host ?? ''}${w.pid ? ` (pid ${w.pid})` : ''}`),
    h('td', null, list(w.queues)),
    h('td', {class: 'nowrap', testid: 'worker-load'}, meter, ` ${running}/${capacity} (${pct} %)`,
      h('div', {class: 'small muted', testid: 'worker-usage', 'data-usage': ''}, usage(w))),
    h('td', {class: 'num', testid: 'worker-free'}, String(w.free ?? '—')),
    h('td', {class: 'nowrap', testid: 'worker-heartbeat', 'data-hb': String(w.heartbeat_at ?? '')},
      fmtAgo(ctx.serverNow() - w.heartbeat_at)),
    h('td', {testid: 'worker-draining'}, w.draining ? h('span', {class: 'badge badge-warn'}, 'draining')
      : h('span', {class: 'badge badge-ok'}, 'active')),
    h('td', {class: 'num'}, String(w.completed ?? 0)),
    h('td', {testid: 'worker-tasks'}, tasks.length ? tasks.slice(0, 20).map((id, i) => [i ? ' ' : '', taskLink(id)])
      : h('span', {class: 'muted'}, '—'), tasks.length > 20 ? ` +${tasks.length - 20}` : ''),
    h('td', {class: 'nowrap small'}, fmtTime(w.started_at)),
    h('td', {class: 'small'}, w.version ?? ''),
    h('td', null, ctx.canAct && !w.draining ? drainButton(w) : null));
  }

  function render() {
    const items = [...workers.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    // A heartbeat changes its time and the cpu and memory figures: the row's signature leaves them out
    // (the row, its button included, stays the same element) and their cells are updated in place.
    const signatures = items.map((w) => {
      const {heartbeat_at: at, heartbeat_age_s: age, cpu, memory, ...rest} = w;
      return rest;
    });
    syncList(body, signatures, (w) => w.id, (w) => workerRow(workers.get(w.id)));
    for (const row of body.children) {
      const w = workers.get(row.getAttribute('data-worker'));
      if (!w) continue;
      const hb = row.querySelector('[data-hb]');
      if (hb) hb.setAttribute('data-hb', String(w.heartbeat_at ?? ''));
      const use = row.querySelector('[data-usage]');
      if (use) use.textContent = usage(w);
    }
    tick();
    empty.hidden = items.length > 0;
    workerTable.hidden = items.length === 0;
    const capacity = items.reduce((n, w) => n + (Number(w.capacity) || 0), 0);
    const running = items.reduce((n, w) => n + (Number(w.running) || 0), 0);
    const draining = items.filter((w) => w.draining).length;
    summary.textContent = `${items.length} live, ${running} of ${capacity} slots busy, ${draining} draining`;
  }

  function tick() {
    const now = ctx.serverNow();
    for (const el of body.querySelectorAll('[data-hb]')) {
      const at = Number(el.getAttribute('data-hb'));
      el.textContent = at ? fmtAgo(now - at) : '—';
      el.classList.toggle('stale', at > 0 && now - at > 10);
    }
  }

  const reload = refresher(async () => {
    try {
      const data = await api('/api/workers');
      workers.clear();
      for (const w of Array.isArray(data) ? data : []) {
        if (typeof w.heartbeat_at === 'number' && typeof w.heartbeat_age_s === 'number') {
          ctx.setServerTime(w.heartbeat_at + w.heartbeat_age_s);
        }
        workers.set(w.id, w);
      }
      render();
    } catch (err) {
      ctx.flash(err.message);
    }
  }, 1000);
  reload.now();

  return {
    changes(changes) {
      let changed = false;
      for (const c of changes) {
        if (c.kind === 'worker') {
          const old = workers.get(c.id);
          const w = old ? {...old} : {id: c.id, tasks: []};
          for (const f of WORKER_FIELDS) if (f in c) w[f] = c[f];
          workers.set(c.id, w);
          changed = true;
          if (!old) reload.request();
        } else if (c.kind === 'worker_gone') {
          changed = workers.delete(c.id) || changed;
        } else if (c.kind === 'task') {
          reload.request(); // assignments moved: each worker's task list
        }
      }
      if (changed) render();
    },
    resync() {
      reload.now();
    },
    tick,
    unmount() {
      reload.stop();
    },
  };
}
