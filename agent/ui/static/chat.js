// The chat page: sends a turn, reads its events as JSON lines while they come, and shows them.
// Everything from the model or a tool is set as text (textContent), except the answer's
// Markdown, which the server rendered with raw HTML off and sanitized (agent/ui/markdown.py);
// the page's Content-Security-Policy lets no inline script run and no request leave.
"use strict";

const csrf = document.querySelector('meta[name="csrf"]').content;
const log = document.getElementById("log");
const message = document.getElementById("message");
const sendButton = document.getElementById("send");
const stopButton = document.getElementById("stop");
const FOLD_LINES = 24;
let chatId = null;
let view = null; // where the current turn's events go

function post(url, data) {
  return fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", "x-agent-csrf": csrf },
    body: JSON.stringify(data || {}),
  });
}

function add(parent, tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  parent.appendChild(node);
  return node;
}

function scrollDown() {
  window.scrollTo(0, document.body.scrollHeight);
}

// One run's events, shown in order: thinking (folded), text segments, tool cards, notices.
class RunView {
  constructor() {
    this.root = add(log, "div", "run");
    this.segment = null; // the model's text since its last tool call
    this.thinking = null;
    this.tools = new Map();
    this.approval = null;
  }

  show(item) {
    const handler = this[`on_${item.type}`];
    if (handler) handler.call(this, item);
    scrollDown();
  }

  on_user(item) {
    add(this.root, "div", "user", item.text);
  }

  on_status(item) {
    add(this.root, "div", "status-line", item.message);
  }

  on_run_started(item) {
    document.getElementById("tools").textContent = item.tools.join(", ") || "none";
  }

  on_thinking(item) {
    if (!this.thinking) {
      const details = add(this.root, "details", "thinking");
      add(details, "summary", "", "thinking");
      this.thinking = add(details, "pre", "");
      this.segment = null;
    }
    this.thinking.textContent += item.delta;
  }

  on_text(item) {
    if (!this.segment) this.segment = add(this.root, "div", "assistant markdown");
    if (item.html !== undefined) this.segment.innerHTML = item.html; // sanitized by the server
    else this.segment.appendChild(document.createTextNode(item.delta)); // until it renders again
    this.thinking = null;
  }

  on_answer(item) {
    if (!this.segment) this.segment = add(this.root, "div", "assistant markdown");
    this.segment.innerHTML = item.html; // sanitized by the server
  }

  on_tool_call(item) {
    const card = add(this.root, "details", "tool");
    card.open = true;
    const summary = add(card, "summary", "");
    add(summary, "span", "tool-name", item.name);
    const state = add(summary, "span", "tool-state", "running…");
    add(card, "div", "tool-part", "arguments");
    add(card, "pre", "arguments", item.pretty);
    this.tools.set(item.call_id, { card, state });
    this.segment = null;
    this.thinking = null;
  }

  on_tool_result(item) {
    let found = this.tools.get(item.call_id);
    if (!found) {
      this.on_tool_call({ call_id: item.call_id, name: item.name, pretty: "" });
      found = this.tools.get(item.call_id);
    }
    const { card, state } = found;
    const took = item.duration_s == null ? "" : ` · ${item.duration_s.toFixed(2)} s`;
    state.textContent = (item.ok ? "ok" : "error") + took;
    if (!item.ok) card.classList.add("failed");
    add(card, "div", "tool-part", "result");
    const lines = item.pretty.split("\n");
    if (lines.length <= FOLD_LINES) {
      add(card, "pre", "result", item.pretty);
      return;
    }
    add(card, "pre", "result", lines.slice(0, FOLD_LINES).join("\n"));
    const fold = add(card, "details", "fold");
    add(fold, "summary", "", `show all ${lines.length} lines`);
    add(fold, "pre", "result", item.pretty);
  }

  on_approval(item) {
    const box = add(this.root, "div", "approval");
    add(box, "div", "", `Allow the call to ${item.name}?`);
    add(box, "pre", "arguments", item.pretty);
    const buttons = add(box, "div", "buttons");
    for (const [answer, label] of [["y", "Allow"], ["a", "Always allow"], ["n", "Deny"]]) {
      const button = add(buttons, "button", "", label);
      button.type = "button";
      button.dataset.answer = answer;
      button.addEventListener("click", () => {
        for (const each of buttons.querySelectorAll("button")) each.disabled = true;
        box.classList.add("answered");
        post(`/api/chats/${chatId}/approval`, { answer });
      });
    }
    this.approval = box;
  }

  on_approved(item) {
    if (this.approval) add(this.approval, "div", "status-line", `allowed: ${item.name}`);
  }

  on_refused(item) {
    if (this.approval) add(this.approval, "div", "status-line", `denied: ${item.name}`);
  }

  on_notice(item) {
    add(this.root, "div", "notice", `${item.kind}: ${item.message}`);
  }

  on_error(item) {
    add(this.root, "div", "error", `error: ${item.message}`);
  }

  on_run_finished(item) {
    const parts = [item.status];
    if (item.usage && item.usage.completion_tokens != null) {
      parts.push(`${item.usage.prompt_tokens} + ${item.usage.completion_tokens} tokens`);
    }
    if (item.timings && item.timings.total_s != null) parts.push(`${item.timings.total_s} s`);
    if (item.context && item.context.percent != null) parts.push(`context ${item.context.percent} %`);
    add(this.root, "div", "run-end", parts.join(" · "));
    this.segment = null;
  }
}

function showItems(items) {
  let current = null;
  for (const item of items) {
    if (item.type === "user" || !current) current = new RunView();
    current.show(item);
  }
}

async function startChat(resume) {
  log.replaceChildren();
  const reply = await post("/api/chats", resume ? { resume } : {});
  const data = await reply.json();
  if (!reply.ok) {
    add(log, "div", "error", `error: ${data.error}`);
    return post("/api/chats", {}).then((r) => r.json()).then((d) => (chatId = d.id));
  }
  chatId = data.id;
  showItems(data.items);
}

function busy(on) {
  sendButton.disabled = on;
  stopButton.disabled = !on;
}

async function send(text) {
  busy(true);
  view = new RunView();
  view.show({ type: "user", text });
  try {
    const reply = await post(`/api/chats/${chatId}/turns`, { text });
    if (!reply.ok) {
      view.show({ type: "error", message: (await reply.json()).error });
      return;
    }
    const reader = reply.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, end);
        buffered = buffered.slice(end + 1);
        if (line.trim()) view.show(JSON.parse(line));
      }
    }
  } catch (error) {
    view.show({ type: "error", message: `the page lost the agent: ${error}` });
  } finally {
    busy(false);
    message.focus();
  }
}

document.getElementById("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = message.value.trim();
  if (!text || sendButton.disabled || !chatId) return;
  message.value = "";
  send(text);
});

message.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    document.getElementById("composer").requestSubmit();
  }
});

stopButton.addEventListener("click", () => {
  stopButton.disabled = true;
  post(`/api/chats/${chatId}/stop`);
});

document.getElementById("new-chat").addEventListener("click", () => {
  history.replaceState(null, "", "/chat");
  startChat(null);
});

startChat(document.getElementById("chat").dataset.resume || null);
