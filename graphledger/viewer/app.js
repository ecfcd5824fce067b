// The graphledger viewer: runs, a run's record and replay, spend. Plain ES modules, no build step.
// Every figure comes from the guarded API routes of this server, fetched with the Authorization
// header kept in sessionStorage (set by the login form). Data is put into the page as text, never as HTML.

import { api, assistantNames, signIn, signOut, authorization, Unauthorized } from "/ui/api.js";
import { spendView } from "/ui/spend.js";
import { h, clear, badge, fmtInt, fmtTime, fmtDuration, fmtCost, errorBox } from "/ui/dom.js";

const main = document.getElementById("main");
const STATUSES = ["pending", "running", "success", "error", "timeout", "interrupted"];

// -- routing ---------------------------------------------------------------------------------

function route() {
  const hash = location.hash.replace(/^#/, "") || "/runs";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === (parts[0] === "run" ? "runs" : parts[0]));
  }
  if (parts[0] === "run" && parts.length === 3) return show(() => runView(parts[1], parts[2]));
  if (parts[0] === "spend") return show(() => spendView(main, params));
  if (parts[0] === "runs" || parts.length === 0) return show(() => runsView(params));
  clear(main).append(errorBox(`No such page: ${hash}`));
}

let current = 0;

async function show(render) {
  const mine = ++current;
  stopReplay();
  clear(main).append(h("p", { class: "muted" }, "Loading…"));
  try {
    await render();
  } catch (error) {
    if (mine !== current) return;
    if (error instanceof Unauthorized) return loginView(error.message);
    clear(main).append(errorBox(error.message));
  }
}

function updateWho() {
  const signedIn = authorization() !== null;
  document.getElementById("signout").hidden = !signedIn;
  document.getElementById("who").textContent = signedIn ? "signed in" : "";
}

document.getElementById("signout").addEventListener("click", () => {
  signOut();
  updateWho();
  loginView("Signed out.");
});

// -- login -----------------------------------------------------------------------------------

function loginView(reason) {
  stopReplay();
  updateWho();
  const token = h("input", { name: "token", type: "password", autocomplete: "off", placeholder: "a token, or a whole header such as Basic …" });
  const user = h("input", { name: "username", autocomplete: "username" });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password" });
  const message = h("p", { class: "error", hidden: !reason }, reason || "");
  const form = h("form", { class: "login", id: "login" },
    h("p", {}, "This server asks who you are. Give the credentials its authentication accepts; they are kept in this tab only (sessionStorage) and sent as the Authorization header of every request."),
    h("label", {}, "Token (sent as Bearer, unless it names its scheme)", token),
    h("details", {}, h("summary", {}, "Username and password instead (Basic)"),
      h("label", {}, "Username", user), h("label", {}, "Password", password)),
    h("button", { type: "submit", class: "primary" }, "Sign in"),
    message);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let header = token.value.trim();
    if (!header && user.value) header = "Basic " + btoa(unescape(encodeURIComponent(`${user.value}:${password.value}`)));
    else if (header && !/\s/.test(header)) header = `Bearer ${header}`;
    if (!header) { message.hidden = false; message.textContent = "Give a token, or a username and password."; return; }
    try {
      await signIn(header);
    } catch (error) {
      message.hidden = false;
      message.textContent = error.message;
      return;
    }
    updateWho();
    route();
  });
  clear(main).append(h("h1", {}, "Sign in"), form);
  token.focus();
}

// -- runs list -------------------------------------------------------------------------------

function toIso(local) {
  return local ? new Date(local).toISOString() : "";
}

function fromIso(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

async function runsView(params) {
  const query = new URLSearchParams();
  for (const name of ["status", "thread_id", "assistant_id", "since", "until"]) {
    if (params.get(name)) query.set(name, params.get(name));
  }
  query.set("limit", "50");
  const [first, names] = await Promise.all([api(`/runs?${query}`), assistantNames()]);

  const status = h("select", { name: "status" }, h("option", { value: "" }, "any"), ...STATUSES.map((s) => h("option", { value: s }, s)));
  status.value = params.get("status") || "";
  const thread = h("input", { name: "thread_id", size: 38, placeholder: "thread id", value: params.get("thread_id") || "" });
  const assistant = h("input", { name: "assistant_id", placeholder: "assistant / graph", value: params.get("assistant_id") || "" });
  const since = h("input", { name: "since", type: "datetime-local", value: fromIso(params.get("since")) });
  const until = h("input", { name: "until", type: "datetime-local", value: fromIso(params.get("until")) });
  const filters = h("form", { class: "filters", id: "filters" },
    h("label", {}, "Status", status), h("label", {}, "Thread", thread), h("label", {}, "Assistant", assistant),
    h("label", {}, "Created from", since), h("label", {}, "Created before", until),
    h("button", { type: "submit", class: "primary" }, "Filter"),
    h("button", { type: "button", id: "clear-filters" }, "Clear"));
  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    if (status.value) next.set("status", status.value);
    if (thread.value.trim()) next.set("thread_id", thread.value.trim());
    if (assistant.value.trim()) next.set("assistant_id", assistant.value.trim());
    if (since.value) next.set("since", toIso(since.value));
    if (until.value) next.set("until", toIso(until.value));
    location.hash = `#/runs?${next}`;
  });
  filters.querySelector("#clear-filters").addEventListener("click", () => { location.hash = "#/runs"; });

  const withCost = first.runs.some((r) => r.cost !== undefined && r.cost !== null);
  const body = h("tbody");
  const more = h("button", { type: "button", id: "more" }, "More");
  const table = h("table", { id: "runs" },
    h("thead", {}, h("tr", {},
      h("th", {}, "Status"), h("th", {}, "Run"), h("th", {}, "Thread"), h("th", {}, "Assistant"), h("th", {}, "Created"),
      h("th", { class: "num" }, "Duration"), h("th", { class: "num" }, "LLM calls"), h("th", { class: "num" }, "Input"),
      h("th", { class: "num" }, "Output"), h("th", { class: "num" }, "Tokens"),
      ...(withCost ? [h("th", { class: "num" }, "Cost")] : []))),
    body);
  const add = (page) => {
    for (const run of page.runs) {
      body.append(h("tr", { "data-run": run.run_id },
        h("td", {}, badge(run.status)),
        h("td", {}, h("a", { href: `#/run/${run.thread_id}/${run.run_id}`, class: "mono" }, run.run_id.slice(0, 8))),
        h("td", {}, h("a", { href: `#/runs?thread_id=${run.thread_id}`, class: "mono" }, run.thread_id.slice(0, 8))),
        h("td", { title: run.assistant_id || "" }, names.get(run.assistant_id) || run.assistant_id || "—"),
        h("td", {}, fmtTime(run.created_at)),
        h("td", { class: "num" }, fmtDuration(run.duration_ms)),
        h("td", { class: "num" }, fmtInt(run.llm_calls)),
        h("td", { class: "num" }, fmtInt(run.input_tokens)),
        h("td", { class: "num" }, fmtInt(run.output_tokens)),
        h("td", { class: "num" }, fmtInt(run.total_tokens)),
        ...(withCost ? [h("td", { class: "num cost", title: (run.cost_sources || []).join(", ") }, fmtCost(run.cost))] : [])));
    }
    more.hidden = !page.next;
    more.dataset.cursor = page.next || "";
  };
  more.addEventListener("click", async () => {
    const next = new URLSearchParams(query);
    next.set("cursor", more.dataset.cursor);
    add(await api(`/runs?${next}`));
  });
  add(first);
  const empty = first.runs.length === 0 ? h("p", { class: "muted" }, "No runs match.") : null;
  clear(main).append(h("h1", {}, "Runs"), filters, table, ...(empty ? [empty] : []), h("p", {}, more));
}

// -- one run ---------------------------------------------------------------------------------

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

async function allEvents(base) {
  const events = [];
  let after = 0;
  for (;;) {
    const page = await api(`${base}/events?after=${after}&limit=1000`);
    events.push(...page.events);
    if (!page.has_more) return events;
    after = page.next_after;
  }
}

function summarize(event) {
  const d = event.data;
  if (event.kind === "llm.usage") {
    const u = d.usage || {};
    return `${d.model || "model?"} · ${d.caller || ""} · in ${u.input_tokens ?? "?"} out ${u.output_tokens ?? "?"}${d.latency_ms != null ? ` · ${Math.round(d.latency_ms)} ms` : ""}`;
  }
  if (event.kind === "stream:messages" && Array.isArray(d)) {
    const text = messageText(d[0]);
    return text ? JSON.stringify(text) : (d[0] && d[0].type) || "";
  }
  if (event.kind === "run.failed") return `${d.error_type || d.type || ""}: ${d.message || d.error || ""}`;
  if (event.kind === "run.started") return `worker ${d.worker || "?"}, attempt ${d.attempt ?? 1}`;
  if (event.kind.startsWith("stream:updates") && d && typeof d === "object") return Object.keys(d).join(", ");
  if (event.kind.startsWith("stream:values") && d && Array.isArray(d.messages)) return `${d.messages.length} messages`;
  return "";
}

function messageText(message) {
  if (!message) return "";
  const content = message.content;
  if (typeof content === "string") return content;
  if (Array.isArray(content)) return content.map((part) => (typeof part === "string" ? part : part.text || "")).join("");
  return "";
}

function messageView(m) {
  const data = m.data || {};
  const text = messageText(data);
  const calls = (data.tool_calls || []).map((c) => `→ ${c.name}(${JSON.stringify(c.args)})`).join("\n");
  return h("div", { class: `msg ${m.type}`, "data-message": m.id },
    h("span", { class: "type" }, data.name ? `${m.type} · ${data.name}` : m.type),
    [text, calls].filter(Boolean).join("\n") || h("span", { class: "muted" }, "(no text)"));
}

async function runView(threadId, runId) {
  if (!UUID.test(threadId) || !UUID.test(runId)) throw new Error(`Not a run: thread ${threadId}, run ${runId} (ids are UUIDs)`);
  const base = `/threads/${threadId}/runs/${runId}`;
  const run = await api(base);
  const [events, messages, usage, chain, names] = await Promise.all([
    allEvents(base), api(`${base}/messages?limit=1000`), api(`${base}/usage`), api(`${base}/verify`), assistantNames(),
  ]);
  const created = events.length ? Date.parse(events[0].ts) : 0;
  const ended = events.length ? Date.parse(events[events.length - 1].ts) : 0;
  const span = Math.max(ended - created, 1);
  const totals = usage.totals || {};
  const cost = usage.cost;

  const cards = h("div", { class: "cards", id: "summary" },
    card("Status", badge(run.status)),
    card("Assistant", names.get(run.assistant_id) || run.assistant_id || "—"),
    card("Created", fmtTime(run.created_at)),
    card("Duration", fmtDuration(ended - created)),
    card("LLM calls", fmtInt(totals.calls)),
    card("Input tokens", fmtInt(totals.input_tokens)),
    card("Output tokens", fmtInt(totals.output_tokens)),
    card("Total tokens", fmtInt(totals.total_tokens)),
    ...(cost !== undefined && cost !== null ? [card("Cost", h("span", { id: "cost" }, fmtCost(cost)))] : []),
    ...(usage.unpriced_calls ? [card("Unpriced calls", fmtInt(usage.unpriced_calls))] : []),
    card("Chain", chain.ok
      ? h("span", { class: "ok", id: "chain" }, `verified (${chain.events} events)`)
      : h("span", { class: "bad", id: "chain" }, `broken at seq ${chain.first_bad_seq}: ${chain.reason}`)));

  const exportButton = h("button", { type: "button", id: "export" }, "Download export (NDJSON)");
  const exportNote = h("span", { class: "muted" });
  exportButton.addEventListener("click", async () => {
    exportNote.textContent = "…";
    try {
      const blob = await api(`${base}/export`, { blob: true });
      const link = h("a", { href: URL.createObjectURL(blob), download: `run-${runId}.ndjson` });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
      exportNote.textContent = `${fmtInt(blob.size)} bytes`;
    } catch (error) {
      exportNote.textContent = error.message;
      exportNote.className = "bad";
    }
  });

  let previous = created;
  const timeline = h("table", { id: "timeline" },
    h("thead", {}, h("tr", {}, h("th", { class: "num" }, "Seq"), h("th", { class: "num" }, "At"), h("th", { class: "num" }, "Δ"),
      h("th", {}, ""), h("th", {}, "Kind"), h("th", {}, "Detail"))),
    h("tbody", {}, ...events.map((event) => {
      const at = Date.parse(event.ts) - created;
      const delta = Date.parse(event.ts) - previous;
      previous = Date.parse(event.ts);
      return h("tr", { "data-seq": event.seq },
        h("td", { class: "num" }, String(event.seq)),
        h("td", { class: "num" }, `+${fmtDuration(at)}`),
        h("td", { class: "num" }, fmtDuration(delta)),
        h("td", {}, h("div", { class: "bartrack" }, h("div", { class: "bar", style: `margin-left:${(100 * at) / span}%;width:${Math.max((100 * delta) / span, 0.5)}%` }))),
        h("td", { class: "mono" }, event.kind),
        h("td", {}, summarize(event)));
    })));

  const byModel = (usage.by_model || []).length
    ? h("table", { id: "by-model" }, h("thead", {}, h("tr", {}, h("th", {}, "Model"), h("th", { class: "num" }, "Calls"),
        h("th", { class: "num" }, "Input"), h("th", { class: "num" }, "Output"), h("th", { class: "num" }, "Total"))),
      h("tbody", {}, ...usage.by_model.map((row) => h("tr", {}, h("td", {}, row.model || "—"), h("td", { class: "num" }, fmtInt(row.calls)),
        h("td", { class: "num" }, fmtInt(row.input_tokens)), h("td", { class: "num" }, fmtInt(row.output_tokens)),
        h("td", { class: "num" }, fmtInt(row.total_tokens))))))
    : h("p", { class: "muted" }, "No LLM calls recorded.");

  clear(main).append(
    h("h1", {}, "Run ", h("span", { class: "mono" }, runId)),
    h("p", { class: "muted" }, "Thread ", h("a", { class: "mono", href: `#/runs?thread_id=${threadId}` }, threadId)),
    cards,
    h("p", {}, exportButton, " ", exportNote),
    h("h2", {}, "Tokens by model"), byModel,
    h("h2", {}, "Replay"), replayPanel(events),
    h("h2", {}, "Messages"),
    h("div", { class: "messages", id: "messages" }, ...(messages.messages.length ? messages.messages.map(messageView) : [h("p", { class: "muted" }, "No messages.")])),
    h("h2", {}, `Timeline (${events.length} events)`), timeline);
}

function card(label, value) {
  return h("div", { class: "card" }, h("div", { class: "label" }, label), h("div", { class: "value" }, value));
}

// -- replay: the stored stream, paced by the recorded timestamps ------------------------------

let replayTimer = null;

function stopReplay() {
  if (replayTimer !== null) clearTimeout(replayTimer);
  replayTimer = null;
}

function replayPanel(events) {
  const speed = h("select", { id: "replay-speed" },
    ...[["0.25", "¼×"], ["0.5", "½×"], ["1", "1× (as recorded)"], ["2", "2×"], ["5", "5×"], ["10", "10×"], ["100", "100×"], ["0", "at once"]]
      .map(([value, label]) => h("option", { value }, label)));
  speed.value = "1";
  const play = h("button", { type: "button", id: "replay-play", class: "primary" }, "Play");
  const stop = h("button", { type: "button", id: "replay-stop" }, "Stop");
  const state = h("span", { class: "muted", id: "replay-state" }, "");
  const out = h("div", { class: "replay-out", id: "replay-out" });
  const frames = h("div", { class: "replay-frames", id: "replay-frames" });
  const shown = events.filter((e) => e.kind.startsWith("stream:") || e.kind.startsWith("run."));

  play.addEventListener("click", () => {
    stopReplay();
    clear(out);
    clear(frames);
    const factor = Number(speed.value);
    const bubbles = new Map();
    let i = 0;
    const step = () => {
      const event = shown[i];
      const at = ((Date.parse(event.ts) - Date.parse(shown[0].ts)) / 1000).toFixed(3);
      frames.append(h("div", {}, `+${at}s  ${event.kind}  ${summarize(event)}`));
      frames.scrollTop = frames.scrollHeight;
      if (event.kind.startsWith("stream:messages") && Array.isArray(event.data)) {
        const chunk = event.data[0] || {};
        const key = chunk.id || `m${i}`;
        if (!bubbles.has(key)) {
          const text = h("span", { class: "text" });
          bubbles.set(key, text);
          out.append(h("div", { class: `msg ${(chunk.type || "").replace("Chunk", "").toLowerCase()}` }, h("span", { class: "type" }, chunk.type || "message"), text));
        }
        bubbles.get(key).textContent += messageText(chunk);
      }
      i += 1;
      state.textContent = `${i} / ${shown.length} frames`;
      if (i >= shown.length) {
        replayTimer = null;
        state.textContent = `replay finished: ${shown.length} frames`;
        return;
      }
      const wait = factor > 0 ? (Date.parse(shown[i].ts) - Date.parse(event.ts)) / factor : 0;
      replayTimer = setTimeout(step, wait);
    };
    if (shown.length === 0) { state.textContent = "nothing to replay"; return; }
    state.textContent = "replaying…";
    replayTimer = setTimeout(step, 0);
  });
  stop.addEventListener("click", () => { stopReplay(); state.textContent = "stopped"; });
  return h("div", { id: "replay" }, h("div", { class: "replay-controls" }, h("label", {}, "Speed ", speed), play, stop, state), out, frames);
}

window.addEventListener("hashchange", route);
updateWho();
route();
