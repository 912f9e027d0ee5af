// The console's only way to the server: the public HTTP API, with the user's API key on /v1 and
// the operator token on /admin/v1, each sent as a bearer token and never put in a URL.

/** An error answer of the API; `message` is the API's own `error.message`. */
export class ApiError extends Error {
  constructor(message, status = 0, code = "") {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

// Secrets live in this tab's sessionStorage (gone when the tab closes), never in local storage,
// cookies or the address bar.
const STORE = { key: "sluice.console.apiKey", admin: "sluice.console.adminToken" };

export const credentials = {
  get apiKey() {
    return sessionStorage.getItem(STORE.key) || "";
  },
  set apiKey(value) {
    if (value) sessionStorage.setItem(STORE.key, value);
    else sessionStorage.removeItem(STORE.key);
  },
  get adminToken() {
    return sessionStorage.getItem(STORE.admin) || "";
  },
  set adminToken(value) {
    if (value) sessionStorage.setItem(STORE.admin, value);
    else sessionStorage.removeItem(STORE.admin);
  },
};

/** A short, non-secret way to show which key is in use: its last four characters. */
export function keyHint(secret) {
  return secret ? `…${secret.slice(-4)}` : "";
}

/** The API's error from a failed response: OpenAI's {"error": {"message"}} shape. */
export async function errorOf(response) {
  let message = "";
  let code = "";
  try {
    const body = await response.json();
    message = body?.error?.message || "";
    code = body?.error?.code || "";
  } catch {
    // Not JSON (a proxy's page, say): fall back to the status line.
  }
  return new ApiError(message || `${response.status} ${response.statusText}`, response.status, code);
}

function query(params) {
  const q = new URLSearchParams();
  for (const [name, value] of Object.entries(params ?? {})) {
    if (value !== undefined && value !== null && value !== "") q.set(name, String(value));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

async function send(token, method, path, { params, body, signal, raw } = {}) {
  const headers = { authorization: `Bearer ${token}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  let response;
  try {
    response = await fetch(path + query(params), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      credentials: "omit",
      cache: "no-store",
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(`Could not reach the server (${err.message}).`);
  }
  if (!response.ok) throw await errorOf(response);
  return raw ? response : response.json();
}

/** /v1 with the signed-in API key. */
export const v1 = {
  get: (path, params) => send(credentials.apiKey, "GET", `/v1${path}`, { params }),
  raw: (method, path, options) => send(credentials.apiKey, method, `/v1${path}`, { ...options, raw: true }),
};

/** /admin/v1 with the operator token. */
export const admin = {
  get: (path, params) => send(credentials.adminToken, "GET", `/admin/v1${path}`, { params }),
  post: (path, body = {}) => send(credentials.adminToken, "POST", `/admin/v1${path}`, { body }),
  patch: (path, body) => send(credentials.adminToken, "PATCH", `/admin/v1${path}`, { body }),
  put: (path, body) => send(credentials.adminToken, "PUT", `/admin/v1${path}`, { body }),
  delete: (path) => send(credentials.adminToken, "DELETE", `/admin/v1${path}`),
};

/** Checks a token before keeping it: an API key against /v1/models, the operator's against
 * /admin/v1/plans. */
export async function verifyApiKey(secret) {
  return send(secret, "GET", "/v1/models");
}

export async function verifyAdminToken(token) {
  return send(token, "GET", "/admin/v1/plans");
}

/**
 * Data strings of a server-sent event stream, as they arrive. Events are separated by a blank
 * line; an event's `data:` lines are joined with newlines; other fields are ignored.
 */
export async function* sseData(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  const line = (text) => {
    if (text === "") {
      const event = data.length ? data.join("\n") : null;
      data = [];
      return event;
    }
    if (text.startsWith("data:")) data.push(text.slice(text.startsWith("data: ") ? 6 : 5));
    return null;
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    // A lone "\r" at the end may be the first half of "\r\n": keep it for the next read.
    let end;
    while ((end = buffer.search(/\r\n|\r(?!$)|\n/)) >= 0) {
      const text = buffer.slice(0, end);
      buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
      const event = line(text);
      if (event !== null) yield event;
    }
  }
  const last = line(buffer) ?? line("");
  if (last !== null) yield last;
}

/** Saves a text response as a file, through a blob URL (so the token never enters a URL). */
export async function download(response, filename) {
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  window.setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
