// The operator console. Everything it shows comes from /console/api/*,
// called with the operator's token as `Authorization: Bearer`; the token
// stays in this tab's sessionStorage only. Data is written as text nodes,
// never as markup.
"use strict";

const TOKEN_KEY = "tenx-operator-token";
const REFRESH_MS = 10000;
let timer = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  }
  return node;
}

const num = (value) => el("td", { class: "num" }, value);

function notice(text, isError) {
  const p = document.getElementById("notice");
  p.textContent = text;
  p.className = isError ? "error" : "";
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

async function api(path, options) {
  const response = await fetch(path, {
    ...options,
    headers: { "Authorization": "Bearer " + token(), "Content-Type": "application/json" },
    cache: "no-store",
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = body.error ? body.error.message : response.statusText;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return body;
}

function fill(id, rows) {
  const tbody = document.querySelector("#" + id + " tbody");
  tbody.replaceChildren(...rows);
}

function age(seconds) {
  if (!seconds) return "—";
  if (seconds < 120) return seconds.toFixed(1) + " s";
  return (seconds / 60).toFixed(1) + " min";
}

function renderStatus(status) {
  const circuits = Object.fromEntries(status.gateway.circuits.map((c) => [c.upstream, c.open]));
  const services = [], queues = [], caches = [], pools = [], slow = [];
  for (const answer of status.services) {
    const circuit = circuits[answer.service]
      ? el("span", { class: "bad" }, "open") : el("span", { class: "good" }, "closed");
    if (!answer.ok) {
      services.push(el("tr", { "data-service": answer.service, "data-ok": "false" },
        el("td", {}, answer.service), el("td", { class: "bad", colSpan: 5 }, "unreachable: " + answer.error),
        el("td", {}, circuit)));
      continue;
    }
    const s = answer.status;
    const failing = s.checks.filter((c) => !c.ok);
    const checks = failing.length === 0
      ? el("span", { class: "good" }, s.checks.map((c) => c.name).join(", ") + ": ok")
      : el("span", { class: "bad" }, failing.map((c) => c.name + ": " + c.reason).join("; "));
    const outbox = s.outbox;
    services.push(el("tr", { "data-service": s.service, "data-ok": String(failing.length === 0) },
      el("td", {}, s.service), el("td", {}, s.instance), el("td", {}, s.version), el("td", {}, checks),
      outbox ? num(outbox.pending) : el("td", { class: "warn" }, "unknown"),
      el("td", {}, outbox ? age(outbox.oldest_pending_age_seconds) : "unknown"),
      el("td", {}, circuit)));
    for (const q of s.queues) {
      const depthClass = q.kind === "dead_letter" && q.depth > 0 ? "num bad" : "num";
      queues.push(el("tr", { "data-queue": q.queue },
        el("td", {}, s.service), el("td", {}, el("code", {}, q.queue)), el("td", {}, q.kind),
        el("td", { class: depthClass }, q.depth), num(q.consumers)));
    }
    for (const c of s.caches) {
      const hits = c.in_process_hits + c.redis_hits, all = hits + c.loads;
      caches.push(el("tr", {}, el("td", {}, s.service), el("td", {}, c.cache), num(c.in_process_hits),
        num(c.redis_hits), num(c.loads), num(all ? (100 * hits / all).toFixed(1) + " %" : "—")));
    }
    for (const p of s.pools) {
      pools.push(el("tr", {}, el("td", {}, s.service), el("td", {}, p.pool), el("td", {}, p.role),
        num(p.in_use), num(p.idle), num(p.max),
        el("td", { class: p.waiting > 0 ? "num warn" : "num" }, p.waiting)));
    }
    for (const r of s.slow_requests) slow.push(slowRow(s.service, r));
  }
  for (const r of status.gateway.slow_requests) slow.push(slowRow("gateway", r));
  slow.sort((a, b) => Number(b.dataset.finished) - Number(a.dataset.finished));
  fill("services", services);
  fill("queues", queues);
  fill("caches", caches);
  fill("pools", pools);
  fill("slow", slow);
  return status.services.filter((a) => a.ok).map((a) => a.service);
}

function slowRow(where, r) {
  return el("tr", { "data-finished": String(r.finished_at_unix_ms) },
    el("td", {}, where), el("td", {}, el("code", {}, r.method)), num(r.code), num(r.duration_ms.toFixed(1)),
    el("td", {}, new Date(r.finished_at_unix_ms).toISOString()), el("td", {}, el("code", {}, r.trace_id || "—")));
}

async function renderDeadLetters(services) {
  const box = document.getElementById("dead-letters");
  const parts = [];
  // Every service also serves the unrouted queue they share: shown once.
  const shown = new Set();
  for (const service of services) {
    const listing = await api("/console/api/dead-letters?service=" + encodeURIComponent(service));
    for (const q of listing.queues) {
      if (shown.has(q.queue)) continue;
      shown.add(q.queue);
      const all = el("button", { type: "button", class: "redrive-all", disabled: q.depth === 0 }, "Redrive all");
      all.addEventListener("click", () => redrive(service, q.queue, { all: true }));
      parts.push(el("h3", { "data-dead-letter-queue": q.queue }, service + " · " + q.queue + " → " + q.work_queue + " (" + q.depth + ") "), all);
      if (q.messages.length === 0) {
        parts.push(el("p", {}, "empty"));
        continue;
      }
      const rows = q.messages.map((m) => {
        const button = el("button", { type: "button", class: "redrive" }, "Redrive");
        button.addEventListener("click", () => redrive(service, q.queue, { message_ids: [m.message_id] }));
        return el("tr", { "data-message-id": m.message_id },
          el("td", {}, el("code", {}, m.message_id)), el("td", {}, m.event_type), num(m.attempts),
          el("td", {}, m.last_error), num(m.size_bytes), el("td", {}, button));
      });
      parts.push(el("table", {},
        el("thead", {}, el("tr", {}, ...["message id", "event", "attempts", "last error", "bytes", ""].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...rows)));
    }
  }
  box.replaceChildren(...parts);
}

async function redrive(service, queue, selection) {
  try {
    const moved = await api("/console/api/dead-letters/redrive", {
      method: "POST",
      body: JSON.stringify({ service, queue, ...selection }),
    });
    notice(queue + ": redriven " + moved.redriven + ", remaining " + moved.remaining, false);
    await refresh(true);
  } catch (error) {
    failed(error);
  }
}

function failed(error) {
  if (error.status === 401 || error.status === 403) {
    notice("Not allowed: " + error.message + ". Paste an operator's token.", true);
    signOut(false);
  } else {
    notice("Failed: " + error.message, true);
  }
}

async function refresh(keepNotice) {
  try {
    const status = await api("/console/api/status");
    const reachable = renderStatus(status);
    await renderDeadLetters(reachable);
    document.getElementById("console").hidden = false;
    if (!keepNotice) notice("Updated " + new Date().toLocaleTimeString(), false);
    document.body.dataset.loaded = "true";
  } catch (error) {
    failed(error);
  }
}

function signedIn(on) {
  document.getElementById("sign-out").hidden = !on;
  document.getElementById("refresh").hidden = !on;
  document.getElementById("token").hidden = on;
  document.getElementById("sign-in").hidden = on;
  document.querySelector("label[for=token]").hidden = on;
}

function signOut(clearNotice) {
  sessionStorage.removeItem(TOKEN_KEY);
  clearInterval(timer);
  timer = null;
  document.getElementById("console").hidden = true;
  signedIn(false);
  if (clearNotice) notice("", false);
}

function start() {
  signedIn(true);
  refresh(false);
  clearInterval(timer);
  timer = setInterval(() => refresh(false), REFRESH_MS);
}

document.getElementById("sign-in-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("token");
  const value = input.value.trim();
  input.value = "";
  if (!value) return;
  sessionStorage.setItem(TOKEN_KEY, value);
  start();
});
document.getElementById("sign-out").addEventListener("click", () => signOut(true));
document.getElementById("refresh").addEventListener("click", () => refresh(false));
if (token()) start();
