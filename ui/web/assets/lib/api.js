// The one way the UI talks to the server: same-origin JSON over fetch, with
// the session cookie (HttpOnly, SameSite=Strict; the UI never sees it).
// Every failure becomes an ApiError carrying the server's error code, so
// screens can explain it (see errors.js) instead of showing raw text.

export class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message || code);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter; // seconds, when the server sent Retry-After
  }
}

let onUnauthenticated = () => {};

/** Called with the ApiError whenever a request answers 401 unauthenticated. */
export function setUnauthenticatedHandler(fn) {
  onUnauthenticated = fn;
}

/**
 * `api('GET', '/api/vault')`, `api('POST', '/api/vault', {...})`.
 * Resolves to the parsed JSON body (or null for 204), rejects with ApiError.
 */
export async function api(method, path, body, { quiet401 = false } = {}) {
  const init = {
    method,
    credentials: 'same-origin',
    cache: 'no-store',
    headers: { Accept: 'application/json' },
  };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    throw new ApiError(0, 'network', 'Latchkey did not answer. Is it still running?');
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    const retry = Number.parseInt(res.headers.get('Retry-After') || '', 10);
    const err = new ApiError(
      res.status,
      (data && data.error) || `http_${res.status}`,
      (data && data.message) || res.statusText,
      Number.isFinite(retry) ? retry : undefined,
    );
    if (res.status === 401 && err.code === 'unauthenticated' && !quiet401) onUnauthenticated(err);
    throw err;
  }
  return data;
}

/** Builds `path?a=1&b=2`, leaving out empty values. */
export function withQuery(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}
