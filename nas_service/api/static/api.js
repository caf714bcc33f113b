// Talking to the REST API: JSON requests, readable errors, and the bearer token for changes.

const TOKEN_KEY = "nas-fpn.token";

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

/** GET a JSON resource; `signal` aborts it when the page that asked is gone. */
export async function getJson(path, signal) {
  const response = await fetch(path, { signal, headers: { Accept: "application/json" } });
  return parse(response);
}

/** A state-changing request, always declared JSON (the server refuses changes that are not, so that
 * no other site's form can make them); on 401 asks for the token once, stores it and retries. */
export async function send(method, path, body) {
  let response = await request(method, path, body);
  if (response.status === 401) {
    const token = await askToken();
    if (token) {
      localStorage.setItem(TOKEN_KEY, token);
      response = await request(method, path, body);
      if (response.status === 401) localStorage.removeItem(TOKEN_KEY);  // wrong token: ask again next time
    }
  }
  return parse(response);
}

function request(method, path, body) {
  const headers = { Accept: "application/json", "Content-Type": "application/json" };
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  return fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
}

async function parse(response) {
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, detailText(body, response));
  return body;
}

/** The API's `detail` (every error of ours has one, validation errors name their fields in it). */
function detailText(body, response) {
  const detail = body && body.detail;
  return typeof detail === "string" ? detail : `${response.status} ${response.statusText}`;
}

function askToken() {
  const dialog = document.getElementById("token-dialog");
  const input = dialog.querySelector("input[name=token]");
  input.value = "";
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => resolve(dialog.returnValue === "ok" && input.value.trim() ? input.value.trim() : null),
      { once: true },
    );
    dialog.showModal();
  });
}

/** True for an aborted fetch: the page went away, nothing to report. */
export function isAbort(error) {
  return error && error.name === "AbortError";
}
