// The jobs page: "Run now" (a POST with the page's CSRF header); then the page reloads every
// few seconds until the new occurrence shows (for up to five minutes), and while one is queued
// or running, so each cell takes its colour.
"use strict";
const csrf = document.querySelector('meta[name="csrf"]').content;
const cellsOf = (name) =>
  document.querySelectorAll(`section.job[data-job="${CSS.escape(name)}"] .cell`).length;

for (const button of document.querySelectorAll("button.run-now")) {
  button.addEventListener("click", async () => {
    const state = button.parentElement.querySelector(".run-now-state");
    button.disabled = true;
    const name = button.dataset.job;
    const reply = await fetch(`/api/jobs/${encodeURIComponent(name)}/run`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-agent-csrf": csrf },
      body: "{}",
    });
    const data = await reply.json();
    state.textContent = reply.ok ? "started" : data.error;
    if (!reply.ok) {
      button.disabled = false;
      return;
    }
    sessionStorage.setItem("awaiting", JSON.stringify({ name, cells: cellsOf(name), tries: 0 }));
    setTimeout(() => location.reload(), 1500);
  });
}

const awaiting = JSON.parse(sessionStorage.getItem("awaiting") || "null");
if (awaiting && cellsOf(awaiting.name) <= awaiting.cells && awaiting.tries < 200) {
  sessionStorage.setItem("awaiting", JSON.stringify({ ...awaiting, tries: awaiting.tries + 1 }));
  setTimeout(() => location.reload(), 1500);
} else {
  sessionStorage.removeItem("awaiting");
  const pending = document.querySelector('.cell[data-status="queued"], .cell[data-status="running"]');
  if (pending) setTimeout(() => location.reload(), 2000);
}
