// The REST API (docs/api.md). Errors are {"error": "one line"}; they reach the user via flash().

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export async function api(path, {method = 'GET', body} = {}) {
  const options = {method, headers: {Accept: 'application/json'}, credentials: 'same-origin', cache: 'no-store'};
  if (method !== 'GET') {
    // The CSRF check: JSON content type plus the custom header a cross-site form cannot send.
    options.headers['Content-Type'] = 'application/json';
    options.headers['X-Tasklease-Request'] = '1';
    options.body = JSON.stringify(body ?? {});
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new ApiError(0, `cannot reach the server (${err.message || err})`);
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch (err) {
      data = null;
    }
  }
  if (!response.ok) {
    const message = data && typeof data.error === 'string' ? data.error : `HTTP ${response.status}`;
    throw new ApiError(response.status, `${method} ${path.split('?')[0]}: ${message}`);
  }
  return data;
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== '') q.set(key, String(value));
  }
  const text = q.toString();
  return text ? `?${text}` : '';
}

/** Runs fn at most once per `ms`, never two at once; a request during a run schedules one more. */
export function refresher(fn, ms = 400) {
  let timer = null;
  let running = false;
  let again = false;
  let stopped = false;
  async function run() {
    timer = null;
    if (stopped) return;
    running = true;
    try {
      await fn();
    } finally {
      running = false;
      if (again && !stopped) {
        again = false;
        timer = setTimeout(run, ms);
      }
    }
  }
  return {
    request() {
      if (stopped) return;
      if (running) again = true;
      else if (timer === null) timer = setTimeout(run, ms);
    },
    now() {
      if (timer !== null) clearTimeout(timer);
      timer = null;
      if (running) again = true;
      else return run();
      return undefined;
    },
    stop() {
      stopped = true;
      if (timer !== null) clearTimeout(timer);
    },
  };
}
