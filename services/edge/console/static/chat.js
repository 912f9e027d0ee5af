// "Try a model": a streaming chat with the signed-in key, through /v1/chat/completions.

import { ApiError, sseData, v1 } from "./api.js";
import { $, fmtInt, fmtMs, h, replace, showAlert } from "./dom.js";

const els = {};
let history = []; // {role, content} of the conversation, without the system prompt
let running = null; // the AbortController of the answer being streamed

function modelGroup(id) {
  if (id.startsWith("openai/")) return "OpenAI (the organization's key)";
  if (id.startsWith("anthropic/")) return "Anthropic (the organization's key)";
  return "Hosted by Sluice";
}

/** Fills the model picker from /v1/models: hosted models first, then the organization's own. */
export async function loadModels() {
  showAlert(els.modelsError, "");
  let list;
  try {
    list = await v1.get("/models");
  } catch (err) {
    showAlert(els.modelsError, err.message);
    return;
  }
  const previous = els.model.value;
  const groups = new Map();
  for (const model of list.data ?? []) {
    const group = modelGroup(model.id);
    if (!groups.has(group)) groups.set(group, []);
    groups.get(group).push(model.id);
  }
  replace(
    els.model,
    [...groups].map(([label, ids]) => h("optgroup", { label }, ids.map((id) => h("option", { value: id }, id)))),
  );
  const ids = (list.data ?? []).map((m) => m.id);
  if (ids.includes(previous)) els.model.value = previous;
}

function numberOrNull(input) {
  const raw = input.value.trim();
  return raw === "" ? null : Number(raw);
}

function request() {
  const system = els.system.value.trim();
  const body = {
    model: els.model.value,
    messages: [...(system ? [{ role: "system", content: system }] : []), ...history],
    stream: true,
    stream_options: { include_usage: true },
  };
  const temperature = numberOrNull(els.temperature);
  const maxTokens = numberOrNull(els.maxTokens);
  if (temperature !== null) body.temperature = temperature;
  if (maxTokens !== null) body.max_tokens = maxTokens;
  return body;
}

function bubble(role, text) {
  const content = h("div", { class: "content" }, text);
  const meta = h("div", { class: "meta" });
  const item = h("li", { class: `msg ${role}` }, h("div", { class: "role" }, role), content, meta);
  els.log.append(item);
  els.empty.hidden = true;
  item.scrollIntoView({ block: "end" });
  return { item, content, meta };
}

/** The answer's footer: the exact model that answered, the tokens billed and the timings. */
function describe(meta, { model, usage, finish, requestId, ttft, total }) {
  const parts = [];
  if (model) {
    const at = model.indexOf("@");
    const pinned = at >= 0
      ? h("span", { class: "pin", title: model }, h("b", null, model.slice(0, at)), h("code", null, model.slice(at)))
      : h("span", { class: "pin", title: model }, h("b", null, model));
    parts.push(h("span", { class: "model" }, pinned));
  }
  if (usage) {
    parts.push(
      h(
        "span",
        { class: "usage" },
        `${fmtInt(usage.prompt_tokens)} prompt + ${fmtInt(usage.completion_tokens)} completion = `,
        h("b", null, `${fmtInt(usage.total_tokens)} tokens`),
      ),
    );
  }
  const timing = [];
  if (ttft !== null) timing.push(`first token ${fmtMs(ttft)}`);
  if (total !== null) timing.push(`total ${fmtMs(total)}`);
  if (finish) timing.push(`finish: ${finish}`);
  if (timing.length) parts.push(h("span", { class: "timing" }, timing.join(" · ")));
  if (requestId) parts.push(h("span", { class: "request-id" }, h("code", null, requestId)));
  replace(meta, parts);
}

async function send(text) {
  history.push({ role: "user", content: text });
  bubble("user", text);
  const answer = bubble("assistant", "");
  answer.item.classList.add("streaming");
  const info = { model: "", usage: null, finish: "", requestId: "", ttft: null, total: null };
  let output = "";
  running = new AbortController();
  els.send.disabled = true;
  els.stop.disabled = false;
  const started = performance.now();
  try {
    const response = await v1.raw("POST", "/chat/completions", { body: request(), signal: running.signal });
    info.requestId = response.headers.get("x-request-id") || "";
    for await (const data of sseData(response.body)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(chunk.error.message, 0, chunk.error.code || "");
      if (chunk.model) info.model = chunk.model;
      if (chunk.usage) info.usage = chunk.usage;
      for (const choice of chunk.choices ?? []) {
        const piece = choice.delta?.content;
        if (piece) {
          if (info.ttft === null) info.ttft = performance.now() - started;
          output += piece;
          answer.content.textContent = output;
        }
        if (choice.finish_reason) info.finish = choice.finish_reason;
      }
    }
    info.total = performance.now() - started;
    history.push({ role: "assistant", content: output });
  } catch (err) {
    info.total = null;
    const stopped = err.name === "AbortError";
    if (stopped && output) history.push({ role: "assistant", content: output });
    else history.pop(); // the question goes unanswered: take it back out of the history
    answer.item.classList.add("error");
    answer.item.append(h("p", { class: "alert" }, stopped ? "Stopped." : err.message));
  } finally {
    answer.item.classList.remove("streaming");
    describe(answer.meta, info);
    running = null;
    els.send.disabled = false;
    els.stop.disabled = true;
    answer.item.scrollIntoView({ block: "end" });
  }
}

function reset() {
  running?.abort();
  history = [];
  els.log.replaceChildren();
  els.empty.hidden = false;
}

export function initChat() {
  Object.assign(els, {
    model: $("chat-model"),
    system: $("chat-system"),
    temperature: $("chat-temperature"),
    maxTokens: $("chat-max-tokens"),
    log: $("chat-log"),
    empty: $("chat-empty"),
    form: $("chat-form"),
    input: $("chat-input"),
    send: $("chat-send"),
    stop: $("chat-stop"),
    modelsError: $("chat-models-error"),
  });
  els.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = els.input.value.trim();
    if (!text || running) return;
    if (!els.model.value) {
      showAlert(els.modelsError, "Pick a model first (the model list has not loaded).");
      return;
    }
    els.input.value = "";
    send(text);
  });
  els.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      els.form.requestSubmit();
    }
  });
  els.stop.addEventListener("click", () => running?.abort());
  $("chat-reset").addEventListener("click", reset);
}

/** Forgets the conversation (on sign-out). */
export const clearChat = reset;
