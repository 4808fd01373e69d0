// The console's only way to the daemon: same-origin fetch with the session cookie, and on writes the
// CSRF header the daemon requires. Errors keep the server's {error, field}.

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error || `HTTP ${status}`);
    this.status = status;
    this.field = body?.field ?? null;
    this.code = body?.code ?? null;
  }
}

const listeners = new Set();
/** Called with no argument when a request finds the session gone (401). */
export function onLoggedOut(f) {
  listeners.add(f);
}

export async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (method !== "GET") init.headers["X-NetGuard-CSRF"] = "1";
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, { error: `the daemon is unreachable (${e.message})` });
  }
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { error: text };
  }
  if (!resp.ok) {
    const err = new ApiError(resp.status, data);
    if (resp.status === 401 && !path.endsWith("/session")) listeners.forEach((f) => f());
    throw err;
  }
  return data;
}

export const get = (p) => api("GET", p);
