// The dashboard's only script: draws the page's Plotly figures and keeps live parts fresh.
// Charts are drawn by Plotly.js; this file only fetches (same origin, the session cookie).
"use strict";

const REFRESH_MS = 2000;

function draw(figures) {
  for (const f of figures) {
    const el = document.getElementById("chart-" + f.id);
    if (el) Plotly.react(el, f.data, f.layout, {displaylogo: false, responsive: true});
  }
}

async function fetchOk(url, kind) {
  const answer = await fetch(url, {credentials: "same-origin", redirect: "manual"});
  if (answer.type === "opaqueredirect" || answer.status === 401) {
    window.location.reload(); // signed out: the server shows the sign-in page
    return null;
  }
  return answer.ok ? (kind === "json" ? answer.json() : answer.text()) : null;
}

function refreshTables() {
  for (const el of document.querySelectorAll("[data-refresh]")) {
    setInterval(async () => {
      const ticked = new Set([...el.querySelectorAll("input.pick:checked")].map((i) => i.value));
      const html = await fetchOk(el.dataset.refresh, "text");
      if (html === null) return;
      el.innerHTML = html;
      for (const box of el.querySelectorAll("input.pick")) box.checked = ticked.has(box.value);
    }, REFRESH_MS);
  }
}

function followRun() {
  const facts = document.querySelector("[data-live]");
  if (!facts) return;
  const terminal = new Set(facts.dataset.terminal.split(","));
  const timer = setInterval(async () => {
    const d = await fetchOk(facts.dataset.live, "json");
    if (d === null) return;
    document.getElementById("status").textContent = d.status;
    document.getElementById("epochs").textContent = d.epochs_done + "/" + d.epochs;
    document.getElementById("restarts").textContent = d.restarts;
    document.getElementById("deployment").textContent = d.deployment || "none";
    document.getElementById("log").textContent = d.log;
    document.getElementById("checkpoints").textContent =
      d.checkpoints.length ? d.checkpoints.map((e) => "epoch " + e).join(", ") : "none yet";
    draw(d.charts);
    if (terminal.has(d.status)) {
      clearInterval(timer);
      window.location.reload(); // the buttons change with the status
    }
  }, REFRESH_MS);
  if (terminal.has(document.getElementById("status").textContent)) clearInterval(timer);
}

function compareTicked() {
  const form = document.getElementById("compare-form");
  if (!form) return;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const ids = [...form.querySelectorAll("input.pick:checked")].map((i) => i.value);
    window.location.href = form.action + "?ids=" + encodeURIComponent(ids.join(","));
  });
}

function pickTenant() {
  const select = document.getElementById("pick-tenant");
  if (select) select.addEventListener("change", () => select.form.submit());
}

document.addEventListener("DOMContentLoaded", () => {
  pickTenant();
  const data = document.getElementById("charts-data");
  if (data) draw(JSON.parse(data.textContent));
  refreshTables();
  followRun();
  compareTicked();
});
