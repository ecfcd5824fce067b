// The calls React's useStream makes, through the official JavaScript SDK, against a server at argv[2].
// Prints one JSON object on stdout for tests/http/test_js_sdk.py to check.
import { Client } from "@langchain/langgraph-sdk";

const client = new Client({ apiUrl: process.argv[2] });
const assistantId = process.argv[3] ?? "demo";
const input = { messages: [{ role: "user", content: "count these words please" }] };
const slow = { configurable: { tokens: 300, token_delay: 0.02 } };
const part = (p) => ({ event: p.event, id: p.id ?? null, data: p.data });

// useStream's submit: a thread first, then a run streamed with values and message tuples, resumable.
const thread = await client.threads.create({ metadata: { client: "js" } });
const threadId = thread.thread_id;
let created = null;
const streamed = [];
for await (const p of client.runs.stream(threadId, assistantId, {
  input,
  streamMode: ["values", "messages-tuple"],
  streamResumable: true,
  onDisconnect: "continue",
  onRunCreated: (meta) => { created = meta; },
})) {
  streamed.push(part(p));
}

// useStream loads the thread's history once the run is done.
const history = await client.threads.getHistory(threadId, { limit: 10 });

// A page reload mid-run: the stream is dropped, then joined again after the last event id seen.
let resumed = null;
const first = [];
for await (const p of client.runs.stream(threadId, assistantId, {
  input,
  config: slow,
  streamMode: ["values", "messages-tuple"],
  streamResumable: true,
  onDisconnect: "continue",
  onRunCreated: (meta) => { resumed = meta; },
})) {
  first.push(part(p));
  if (first.length === 30) break; // the connection is cut here
}
const rest = [];
for await (const p of client.runs.joinStream(threadId, resumed.run_id, { lastEventId: first[first.length - 1].id })) {
  rest.push(part(p));
}
const resumedRun = await client.runs.get(threadId, resumed.run_id);

// The stop button: cancel a running run.
const running = await client.runs.create(threadId, assistantId, { input, config: slow, streamMode: ["messages-tuple"] });
for await (const p of client.runs.joinStream(threadId, running.run_id, { lastEventId: "0" })) {
  if (p.event === "messages") break; // it is running: tokens arrive
}
const cancelled = await client.runs.cancel(threadId, running.run_id, true);
const stopped = await client.runs.get(threadId, running.run_id);
const finalState = await client.threads.getState(threadId);

const seen = JSON.stringify({
  thread,
  created,
  streamed,
  history,
  resume: { run_id: resumed.run_id, first, rest, status: resumedRun.status },
  cancel: { run_id: running.run_id, answered: cancelled.status, status: stopped.status },
  final_state: finalState,
});
// Exit once written: idle keep-alive connections would hold the process for seconds.
process.stdout.write(seen + "\n", () => process.exit(0));
