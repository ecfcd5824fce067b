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

// GET (or POST a JSON body to) path; the parsed JSON (or a Blob with {blob: true}).
// Unauthorized on 401, Error(detail) on any other failure.
export async function api(path, { blob = false, header = authorization(), body = undefined } = {}) {
  const headers = { Accept: blob ? "*/*" : "application/json" };
  if (header) headers.Authorization = header;
  const init = { headers, cache: "no-store" };
  if (body !== undefined) {
    init.method = "POST";
    init.body = JSON.stringify(body);
    headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
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

// Assistants' names by id, for display; empty when the user may not search assistants.
export async function assistantNames() {
  try {
    const found = await api("/assistants/search", { body: { limit: 1000, select: ["assistant_id", "name"] } });
    return new Map(found.map((a) => [a.assistant_id, a.name]));
  } catch (error) {
    if (error instanceof Unauthorized) throw error;
    return new Map();
  }
}
