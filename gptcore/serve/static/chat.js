// The chat page: keeps the conversation, sends it to /v1/chat/completions with stream: true, and shows the
// reply as the server-sent events arrive. Stop aborts the request; the server then frees its place in the batch.
"use strict";

const $ = (id) => document.getElementById(id);
const messages = [];  // the conversation so far, as the API takes it
let modelName = null;
let controller = null;  // the AbortController of the reply being streamed, if any

async function loadModel() {
  try {
    const health = await (await fetch("/health")).json();
    modelName = health.model;
    $("model").textContent = modelName;
  } catch (e) {
    $("model").textContent = "server unreachable";
  }
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  div.append(body);
  $("log").append(div);
  div.scrollIntoView({block: "end"});
  return div;
}

function note(div, text, cls = "note") {
  const span = document.createElement("div");
  span.className = cls;
  span.textContent = text;
  div.append(span);
}

function number(id, parse) {
  const value = $(id).value.trim();
  return value === "" ? undefined : parse(value);
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

// Yields the JSON of each `data:` event of a text/event-stream response, until `data: [DONE]`.
async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function send(text) {
  messages.push({role: "user", content: text});
  bubble("user", text);
  const reply = bubble("assistant", "");
  const body = reply.querySelector(".text");
  reply.classList.add("streaming");
  setBusy(true);
  controller = new AbortController();
  const headers = {"Content-Type": "application/json"};
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  const request = {
    model: modelName, messages, stream: true,
    temperature: number("temperature", parseFloat),
    top_k: number("top-k", (v) => parseInt(v, 10)),
    max_tokens: number("max-tokens", (v) => parseInt(v, 10)),
  };
  let finish = null;
  try {
    const response = await fetch("/v1/chat/completions",
                                 {method: "POST", headers, body: JSON.stringify(request), signal: controller.signal});
    if (!response.ok) {
      const error = await response.json();
      throw new Error(error.error ? error.error.message : response.statusText);
    }
    for await (const chunk of events(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      for (const choice of chunk.choices) {
        if (choice.delta.content) {
          body.textContent += choice.delta.content;
          reply.scrollIntoView({block: "end"});
        }
        finish = choice.finish_reason || finish;
      }
    }
    if (finish === "length") note(reply, "(max tokens reached)");
  } catch (e) {
    if (e.name === "AbortError") note(reply, "(stopped)");
    else note(reply, `error: ${e.message}`, "error");
  } finally {
    reply.classList.remove("streaming");
    reply.dataset.done = "true";
    controller = null;
    setBusy(false);
  }
  if (body.textContent) messages.push({role: "assistant", content: body.textContent});
  else messages.pop();  // nothing came back: the question can be asked again
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || controller) return;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("clear").addEventListener("click", () => {
  if (controller) controller.abort();
  messages.length = 0;
  $("log").replaceChildren();
});
loadModel();
