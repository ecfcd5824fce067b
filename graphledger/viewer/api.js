// Requests to this server's API, with the Authorization header the login form keeps for this tab.

const KEY = "graphledger.authorization";

export class Unauthorized extends Error {}

export function authorization() {
  return sessionStorage.getItem(KEY);
}

export function signOut() {
  sessionStorage.removeItem(KEY);
}

async function detail(response) {
  try {
    const body = await response.json();
    if (body && typeof body.detail === "string") return body.detail;
  } catch (_) { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}

// GET path; the parsed JSON (or a Blob with {blob: true}). Unauthorized on 401, Error(detail) on any other failure.
export async function api(path, { blob = false, header = authorization() } = {}) {
  const headers = { Accept: blob ? "*/*" : "application/json" };
  if (header) headers.Authorization = header;
  const response = await fetch(path, { headers, cache: "no-store" });
  if (response.status === 401) throw new Unauthorized(await detail(response));
  if (!response.ok) {
    const message = await detail(response);
    throw new Error(response.status === 403 ? `Not allowed: ${message}` : message);
  }
  return blob ? response.blob() : response.json();
}

// Check a header against a guarded route; keep it for this tab when the server accepts it.
export async function signIn(header) {
  try {
    await api("/runs?limit=1", { header });
  } catch (error) {
    throw new Error(error instanceof Unauthorized ? `Not accepted: ${error.message}` : error.message);
  }
  sessionStorage.setItem(KEY, header);
}
