// The portal's JSON API as the console calls it: same origin, the session
// in an HttpOnly cookie the script cannot read, and the CSRF token (from
// GET /v1/console/session) on every state-changing call.
let csrf = '';
let operatorCsrf = '';

export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.reason = e.reason || '';
  }
}

export function setCsrf(token) { csrf = token || ''; }
export function setOperatorCsrf(token) { operatorCsrf = token || ''; }

export async function call(method, path, body, { operator = false, raw = null, headers = {} } = {}) {
  const h = { ...headers };
  const token = operator ? operatorCsrf : csrf;
  if (method !== 'GET' && method !== 'HEAD' && token) h['X-CSRF-Token'] = token;
  let payload;
  if (raw !== null) {
    payload = raw;
    h['Content-Type'] = 'application/octet-stream';
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    h['Content-Type'] = 'application/json';
  }
  const res = await fetch(path, { method, headers: h, body: payload, credentials: 'same-origin' });
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : {}; } catch { json = null; }
  if (!res.ok) throw new ApiError(res.status, json);
  return json;
}

export const get = (path, opts) => call('GET', path, undefined, opts);
export const post = (path, body, opts) => call('POST', path, body === undefined ? {} : body, opts);
export const del = (path, opts) => call('DELETE', path, undefined, opts);
