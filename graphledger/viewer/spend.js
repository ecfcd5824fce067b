// Spend: token usage and cost over time by model, assistant or user (GET /usage), and latency percentiles per model.
// Charts are uPlot (vendor/uPlot.iife.min.js, loaded by index.html as window.uPlot).

import { api, assistantNames } from "/ui/api.js";
import { h, clear, fmtInt, fmtCost } from "/ui/dom.js";

const GROUPS = [["model", "Model"], ["assistant", "Assistant"], ["identity", "User"], ["provider", "Provider"], ["caller", "Caller"], ["status", "Run status"]];
const RANGES = [["1d", "Last 24 hours", "hour"], ["7d", "Last 7 days", "day"], ["30d", "Last 30 days", "day"], ["90d", "Last 90 days", "week"]];
const BUCKETS = ["hour", "day", "week", "month"];
const COLORS = ["#2d6cdf", "#e8590c", "#2f9e44", "#ae3ec9", "#f08c00", "#0c8599", "#c2255c", "#5c940d", "#1864ab", "#862e9c"];
const INPUT = "gen_ai.usage.input_tokens";
const OUTPUT = "gen_ai.usage.output_tokens";
const LATENCY = "gen_ai.client.operation.duration";
const charts = [];

function zone() {
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  } catch (_) {
    return "UTC";
  }
}

// The starts of the buckets of [since, until) in the browser's time zone (the one the query names), in seconds.
function buckets(since, until, bucket) {
  const start = new Date(since);
  start.setMinutes(0, 0, 0);
  if (bucket !== "hour") start.setHours(0);
  if (bucket === "week") start.setDate(start.getDate() - ((start.getDay() + 6) % 7)); // weeks start on Monday
  if (bucket === "month") start.setDate(1);
  const found = [];
  for (const d = start; d < new Date(until) && found.length < 5000; ) {
    found.push(d.getTime() / 1000);
    if (bucket === "hour") d.setHours(d.getHours() + 1);
    else if (bucket === "day") d.setDate(d.getDate() + 1);
    else if (bucket === "week") d.setDate(d.getDate() + 7);
    else d.setMonth(d.getMonth() + 1);
  }
  return found;
}

// The rows of one /usage answer as aligned series: x (every bucket's start, in seconds) and one y array per group value.
function series(answer, value, label, empty) {
  const key = answer.group_by[0];
  const starts = answer.rows.map((r) => Date.parse(r.start) / 1000);
  const xs = [...new Set([...buckets(answer.since, answer.until, answer.bucket), ...starts])].sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const groups = new Map();
  for (const row of answer.rows) {
    const name = key === undefined ? "all" : row[key] === null || row[key] === undefined ? "(none)" : String(row[key]);
    if (!groups.has(name)) groups.set(name, new Array(xs.length).fill(empty));
    const v = value(row);
    if (v !== null && v !== undefined) groups.get(name)[index.get(Date.parse(row.start) / 1000)] = v;
  }
  const names = [...groups.keys()].sort();
  return { xs, names, labels: names.map(label), ys: names.map((n) => groups.get(n)) };
}

// An axis label: whole numbers grouped, small ones (a cost under a cent, a latency) with three significant digits.
function tick(v) {
  if (v === 0 || Math.abs(v) >= 1000) return fmtInt(v);
  return String(Number(v.toPrecision(3)));
}

// Stacked bars (sums: tokens, cost) or lines with points (percentiles, which do not add up).
function chart(id, title, data, unit, width, { stacked = true } = {}) {
  const holder = h("div", { class: "chart", id });
  if (!window.uPlot) {
    holder.append(h("p", { class: "error" }, "The chart library did not load."));
    return holder;
  }
  if (data.names.length === 0) {
    holder.append(h("h2", {}, title), h("p", { class: "muted" }, "No LLM calls in this range."));
    return holder;
  }
  holder.dataset.series = JSON.stringify(data.labels);
  let ys = data.ys;
  let order = data.ys.map((_, i) => i);
  if (stacked) {
    // Each series is drawn as the sum of itself and those before it, the tallest first, so each shows as its own band.
    ys = data.ys.map((_, i) => data.xs.map((__, j) => data.ys.slice(0, i + 1).reduce((sum, y) => sum + (y[j] || 0), 0)));
    order = order.reverse();
  }
  const step = data.xs.length > 1 ? data.xs[1] - data.xs[0] : 3600;
  const bars = window.uPlot.paths.bars({ size: [0.7, 60] });
  const opts = {
    title,
    width,
    height: 280,
    scales: { x: { time: true, range: () => [data.xs[0] - step / 2, data.xs[data.xs.length - 1] + step / 2] } },
    axes: [{}, { label: unit, size: 80, values: (u, ticks) => ticks.map(tick) }],
    legend: { live: true },
    series: [
      {},
      ...order.map((i) => ({
        label: data.labels[i],
        stroke: COLORS[i % COLORS.length],
        fill: stacked ? COLORS[i % COLORS.length] : undefined,
        width: stacked ? 0 : 2,
        paths: stacked ? bars : undefined,
        points: { show: !stacked, size: 7 },
        value: (u, v, si, idx) => (idx === null || idx === undefined ? "--" : String(data.ys[i][idx] ?? "--")),
      })),
    ],
  };
  // Drawn once the holder is in the page.
  requestAnimationFrame(() => new window.uPlot(opts, [data.xs, ...order.map((i) => ys[i])], holder));
  return holder;
}

function totalsTable(answer, label) {
  const key = answer.group_by[0];
  const totals = new Map();
  for (const row of answer.rows) {
    const name = key === undefined ? "all" : row[key] === null || row[key] === undefined ? "(none)" : String(row[key]);
    const t = totals.get(name) || { calls: 0, runs: 0, input: 0, output: 0, total: 0, cost: 0, priced: false, unpriced: 0 };
    t.calls += row.calls || 0;
    t.runs += row.runs || 0;
    t.input += row[INPUT] || 0;
    t.output += row[OUTPUT] || 0;
    t.total += row.total_tokens || 0;
    if (row.cost !== null && row.cost !== undefined) { t.cost += row.cost; t.priced = true; }
    t.unpriced += (row.unpriced && row.unpriced.calls) || 0;
    totals.set(name, t);
  }
  return h("table", { id: "spend-totals" },
    h("thead", {}, h("tr", {}, h("th", {}, "Group"), h("th", { class: "num" }, "Runs"), h("th", { class: "num" }, "LLM calls"),
      h("th", { class: "num" }, "Input"), h("th", { class: "num" }, "Output"), h("th", { class: "num" }, "Tokens"),
      h("th", { class: "num" }, "Cost"), h("th", { class: "num" }, "Unpriced calls"))),
    h("tbody", {}, ...[...totals.entries()].sort((a, b) => b[1].total - a[1].total).map(([name, t]) =>
      h("tr", {}, h("td", {}, label(name)), h("td", { class: "num" }, fmtInt(t.runs)), h("td", { class: "num" }, fmtInt(t.calls)),
        h("td", { class: "num" }, fmtInt(t.input)), h("td", { class: "num" }, fmtInt(t.output)), h("td", { class: "num" }, fmtInt(t.total)),
        h("td", { class: "num" }, t.priced ? fmtCost(t.cost) : "—"), h("td", { class: "num" }, fmtInt(t.unpriced))))));
}

function seconds(v) {
  return v === null || v === undefined ? "—" : v < 1 ? `${Math.round(v * 1000)} ms` : `${v.toFixed(2)} s`;
}

function latencyTable(answer) {
  const key = answer.group_by[0];
  const rows = [...answer.rows].sort((a, b) => (b.start < a.start ? -1 : b.start > a.start ? 1 : String(a[key]).localeCompare(String(b[key]))));
  return h("table", { id: "spend-latency" },
    h("thead", {}, h("tr", {}, h("th", {}, "Bucket"), h("th", {}, "Model"), h("th", { class: "num" }, "Calls"),
      h("th", { class: "num" }, "p50"), h("th", { class: "num" }, "p95"), h("th", { class: "num" }, "p99"),
      h("th", { class: "num" }, "First token p50"))),
    h("tbody", {}, ...rows.map((row) => {
      const d = row[LATENCY] || {};
      const ttft = row.time_to_first_token || {};
      return h("tr", {}, h("td", {}, new Date(row.start).toLocaleString()), h("td", {}, row[key] ?? "(none)"),
        h("td", { class: "num" }, fmtInt(row.calls)), h("td", { class: "num" }, seconds(d.p50)), h("td", { class: "num" }, seconds(d.p95)),
        h("td", { class: "num" }, seconds(d.p99)), h("td", { class: "num" }, seconds(ttft.p50)));
    })));
}

export async function spendView(main, params) {
  const range = params.get("range") || "7d";
  const group = params.get("group_by") || "model";
  const preset = RANGES.find(([value]) => value === range);
  const bucket = params.get("bucket") || (preset ? preset[2] : "day");
  const tz = zone();
  const query = new URLSearchParams({ bucket, group_by: group, since: range, tz });
  const latencyQuery = new URLSearchParams({ bucket, group_by: "model", since: range, tz, percentiles: "true" });
  const [usage, latency, names] = await Promise.all([api(`/usage?${query}`), api(`/usage?${latencyQuery}`), assistantNames()]);
  const label = group === "assistant" ? (id) => names.get(id) || id : (value) => value;

  const rangeSelect = h("select", { name: "range" }, ...RANGES.map(([value, text]) => h("option", { value }, text)));
  rangeSelect.value = preset ? range : "7d";
  const groupSelect = h("select", { name: "group_by" }, ...GROUPS.map(([value, text]) => h("option", { value }, text)));
  groupSelect.value = group;
  const bucketSelect = h("select", { name: "bucket" }, ...BUCKETS.map((b) => h("option", { value: b }, b)));
  bucketSelect.value = bucket;
  const form = h("form", { class: "filters", id: "spend-filters" },
    h("label", {}, "Range", rangeSelect), h("label", {}, "Per", bucketSelect), h("label", {}, "By", groupSelect),
    h("button", { type: "submit", class: "primary" }, "Show"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = `#/spend?${new URLSearchParams({ range: rangeSelect.value, bucket: bucketSelect.value, group_by: groupSelect.value })}`;
  });
  rangeSelect.addEventListener("change", () => {
    const chosen = RANGES.find(([value]) => value === rangeSelect.value);
    if (chosen) bucketSelect.value = chosen[2];
  });

  const width = Math.max(Math.min(main.clientWidth - 20, 1300), 320);
  const groupName = GROUPS.find(([value]) => value === group)[1].toLowerCase();
  const tokens = series(usage, (r) => r.total_tokens, label, 0);
  const cost = series(usage, (r) => r.cost, label, null);
  const p95 = series(latency, (r) => (r[LATENCY] ? r[LATENCY].p95 : null), (v) => v, null);
  const anyCost = cost.ys.some((ys) => ys.some((v) => v !== null));
  clear(main).append(
    h("h1", {}, "Spend"),
    form,
    h("p", { class: "muted" }, `Per ${bucket} in ${tz}, from ${new Date(usage.since).toLocaleString()} to ${new Date(usage.until).toLocaleString()}. Cost in ${usage.currency}, where the model's price is known.`),
    chart("spend-tokens", `Tokens per ${bucket} by ${groupName}`, tokens, "tokens", width),
    anyCost ? chart("spend-cost", `Cost per ${bucket} by ${groupName} (${usage.currency})`, cost, usage.currency, width)
      : h("p", { class: "muted", id: "spend-cost" }, "No cost: no model in this range has a known price."),
    totalsTable(usage, label),
    h("h2", {}, "Latency by model"),
    chart("spend-latency-chart", `p95 latency per ${bucket} by model (seconds)`, p95, "seconds", width, { stacked: false }),
    latencyTable(latency));
}
