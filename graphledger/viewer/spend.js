// Spend: token usage and cost over time by model, assistant and user; latency percentiles per model.
import { h, clear } from "/ui/dom.js";

export async function spendView(main) {
  clear(main).append(h("h1", {}, "Spend"), h("p", { class: "muted" }, "Not available yet."));
}
