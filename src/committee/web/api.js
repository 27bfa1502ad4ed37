// The REST side of the server, and the token every request carries.

const TOKEN_KEY = "committee.token";

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const token = {
  get: () => localStorage.getItem(TOKEN_KEY) ?? "",
  set: (value) => localStorage.setItem(TOKEN_KEY, value),
  clear: () => localStorage.removeItem(TOKEN_KEY),
};

// A link with ?token=... signs this browser in; the token then leaves the address bar (and
// the history entry) so it is not shared by copying the URL.
export function takeTokenFromUrl() {
  const url = new URL(location.href);
  if (!url.searchParams.has("token")) return;
  const value = url.searchParams.get("token").trim();
  if (value) token.set(value);
  url.searchParams.delete("token");
  history.replaceState(history.state, "", url.pathname + url.search + url.hash);
}

// Set by the app: resolves once the user has given a (new) token.
let askForToken = async () => {
  throw new ApiError(401, "unauthorized", "a token is required");
};
export function onTokenRequired(ask) {
  askForToken = ask;
}

export function signIn(reason) {
  token.clear();
  return askForToken(reason);
}

async function errorOf(response) {
  try {
    const body = await response.json();
    return new ApiError(response.status, body.code ?? "error", body.message ?? response.statusText);
  } catch {
    return new ApiError(response.status, "error", `${response.status} ${response.statusText}`);
  }
}

async function request(method, path, { body, signal } = {}) {
  for (;;) {
    const headers = { Accept: "application/json" };
    const current = token.get();
    if (current) headers.Authorization = `Bearer ${current}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      signal,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status !== 401) {
      if (!response.ok) throw await errorOf(response);
      return response;
    }
    await signIn(current ? "That token was not accepted." : "");
  }
}

const json = async (...args) => (await request(...args)).json();
const runPath = (runId) => `/api/runs/${encodeURIComponent(runId)}`;

export const api = {
  runs: () => json("GET", "/api/runs"),
  run: (runId) => json("GET", runPath(runId)),
  submit: (runRequest) => json("POST", "/api/runs", { body: runRequest }),
  cancel: (runId) => json("POST", `${runPath(runId)}/cancel`),
  // The whole stored log as a Response whose body the caller streams (it may be 100 MB).
  log: (runId, sha, signal) =>
    request("GET", `${runPath(runId)}/commits/${encodeURIComponent(sha)}/log`, { signal }),
};

export function wsUrl() {
  const url = new URL("/ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const current = token.get();
  if (current) url.searchParams.set("token", current);
  return url.href;
}
