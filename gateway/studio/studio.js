// servegate studio: plain ES module, no dependencies. Every read and action goes through
// the management API with the signed-in token, so the page shows and does only what the
// token's roles allow (buttons for actions the principal lacks are not drawn).

const TOKEN_KEY = "servegate-token";
const PKCE_KEY = "servegate-sign-in"; // the verifier and state of a sign-in under way
let oidc = null; // the identity provider the studio may sign in at (GET sign-in)
const REFRESH_MS = 1000;
const COLORS = ["#2f6fb3", "#2f8f5b", "#b36b2f", "#7a4bb3", "#b32f5b", "#5b7a2f"];

const $ = (selector) => document.querySelector(selector);
let me = null; // the principal (access/whoami)
let timer = null;
const history = new Map(); // deployment -> [{t, requests, errors, counts}]

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "onclick") node.addEventListener("click", value);
    else if (key === "style") node.style.cssText = value; // CSSOM: allowed by the CSP
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// A name (an endpoint's, a job's) or a hash route goes into an API path as one encoded
// segment: a '/', '?', '#' or '..' in it can never reach another route.
const path = (strings, ...values) =>
  strings.reduce((out, text, i) => out + text + (i < values.length ? encodeURIComponent(String(values[i])) : ""), "");

async function api(method, route, body) {
  const response = await fetch(`/management${route}`, {
    method,
    headers: {
      Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY)}`,
      ...(body ? { "Content-Type": "application/json" } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const error = new Error(data && data.error ? data.error : `${response.status}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function can(permission) {
  return me !== null && me.permissions.includes(permission);
}

function showError(message) {
  const box = $("#error");
  box.textContent = message || "";
  box.hidden = !message;
}

function table(headers, rows) {
  return el("table", {}, el("tr", {}, headers.map((h) => el("th", {}, h))), rows);
}

function trafficBar(traffic, mirror) {
  const entries = Object.entries(traffic).filter(([, percent]) => percent > 0);
  const bar = el("div", { class: "bar", "data-traffic": JSON.stringify(traffic) });
  entries.forEach(([name, percent], i) => {
    bar.append(
      el("span", { style: `width:${percent}%;background:${COLORS[i % COLORS.length]}`, title: `${name} ${percent}%` }, `${name} ${percent}%`),
    );
  });
  const mirrored = Object.entries(mirror || {}).filter(([, p]) => p > 0);
  return el("div", {}, bar, mirrored.length ? el("div", { class: "hint" }, `mirror: ${mirrored.map(([n, p]) => `${n} ${p}%`).join(", ")}`) : null);
}

function progressBar(done, total) {
  const percent = total ? Math.round((100 * done) / total) : 0;
  return el("div", { class: "progress", title: `${percent}%`, "data-percent": String(percent) }, el("span", { style: `width:${percent}%` }));
}

// -- pages -------------------------------------------------------------------------------
async function endpointsPage(page) {
  const endpoints = await api("GET", "/endpoints");
  page.replaceChildren(
    el("h2", {}, "Endpoints"),
    table(
      ["name", "auth", "traffic", "deployments"],
      endpoints.map((e) =>
        el(
          "tr",
          { "data-endpoint": e.name },
          el("td", {}, el("a", { href: path`#/endpoint/${e.name}` }, e.name)),
          el("td", {}, e.auth_mode),
          el("td", {}, trafficBar(e.traffic, e.mirror_traffic)),
          el("td", {}, e.deployments.map((d) => el("a", { href: path`#/endpoint/${e.name}` }, d, " "))),
        ),
      ),
    ),
  );
}

function quantile(bounds, counts, q) {
  const total = counts.reduce((a, b) => a + b, 0);
  if (!total) return null;
  let below = 0;
  const rank = q * total;
  for (let i = 0; i < counts.length; i++) {
    if (counts[i] && below + counts[i] >= rank) {
      const low = i ? bounds[i - 1] : 0;
      if (i === bounds.length) return low;
      return low + ((bounds[i] - low) * (rank - below)) / counts[i];
    }
    below += counts[i];
  }
  return bounds[bounds.length - 1];
}

function sparkline(values, label) {
  const canvas = el("canvas", { width: "220", height: "50" });
  const g = canvas.getContext("2d");
  const finite = values.filter((v) => v !== null && Number.isFinite(v));
  const top = Math.max(1e-9, ...finite);
  g.strokeStyle = "#2f6fb3";
  g.beginPath();
  values.forEach((v, i) => {
    const x = (i / Math.max(1, values.length - 1)) * 218 + 1;
    const y = 48 - ((v || 0) / top) * 46;
    if (i) g.lineTo(x, y);
    else g.moveTo(x, y);
  });
  g.stroke();
  const last = finite.length ? finite[finite.length - 1] : null;
  return el("div", { class: "chart" }, el("div", {}, `${label}: ${last === null ? "-" : last.toFixed(2)}`), canvas);
}

function liveRates(key, stat) {
  const now = performance.now() / 1000;
  const samples = history.get(key) || [];
  samples.push({ t: now, requests: stat.requests, errors: stat.errors, counts: stat.latency_counts, batches: stat.batches, rows: stat.batch_rows });
  while (samples.length > 61) samples.shift();
  history.set(key, samples);
  const series = { rps: [], errors: [], p50: [], p99: [], batch: [] };
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1];
    const b = samples[i];
    const dt = Math.max(1e-3, b.t - a.t);
    const requests = b.requests - a.requests;
    const delta = b.counts.map((c, j) => c - (a.counts[j] || 0));
    series.rps.push(requests / dt);
    series.errors.push(requests ? (b.errors - a.errors) / requests : 0);
    series.p50.push(quantile(stat.latency_bounds_ms, delta, 0.5));
    series.p99.push(quantile(stat.latency_bounds_ms, delta, 0.99));
    const batches = b.batches - a.batches;
    series.batch.push(batches ? (b.rows - a.rows) / batches : null);
  }
  return series;
}

async function endpointPage(page, name) {
  const [endpoint, deployments, stats] = await Promise.all([
    api("GET", path`/endpoints/${name}`),
    api("GET", path`/endpoints/${name}/deployments`),
    api("GET", "/stats"),
  ]);
  const cards = [];
  for (const d of deployments) {
    const stat = stats.find((s) => s.endpoint === name && s.deployment === d.name);
    const series = stat ? liveRates(`${name}/${d.name}`, stat) : { rps: [], errors: [], p50: [], p99: [], batch: [] };
    let logs = [];
    try {
      logs = await api("GET", path`/endpoints/${name}/deployments/${d.name}/logs?lines=20`);
    } catch (error) {
      logs = [{ at: "", line: `(logs: ${error.message})` }];
    }
    const model = d.model ? `${d.model.name}:${d.model.version}` : d.url || "script";
    cards.push(
      el(
        "div",
        { class: "card", "data-deployment": d.name },
        el("h3", {}, d.name),
        el("div", {}, `model ${model} · runtime ${d.runtime} · host ${d.host || "thread"} · ${d.provisioning_state} · instances ready ${d.instances_ready}`),
        stat ? el("div", { class: "hint" }, `in flight ${stat.in_flight} · queued ${stat.queued} · requests ${stat.requests}`) : null,
        el(
          "div",
          { class: "charts" },
          sparkline(series.rps, "requests/s"),
          sparkline(series.errors, "error rate"),
          sparkline(series.p50, "p50 ms"),
          sparkline(series.p99, "p99 ms"),
          sparkline(series.batch, "rows per batch"),
        ),
        el("pre", { class: "logs" }, logs.length ? logs.map((l) => `${l.at} ${l.line}\n`).join("") : "(no log lines: a deployment in worker processes logs what its script prints)"),
      ),
    );
  }
  page.replaceChildren(el("h2", {}, `Endpoint ${name}`), trafficBar(endpoint.traffic, endpoint.mirror_traffic), ...cards);
}

async function rolloutsPage(page) {
  const endpoints = await api("GET", "/endpoints");
  const rows = [];
  for (const e of endpoints) {
    let status;
    try {
      status = await api("GET", path`/endpoints/${e.name}/rollouts/status`);
    } catch (error) {
      if (error.status === 404) continue; // no rollout on this endpoint
      throw error;
    }
    const active = status.state === "mirroring" || status.state === "stepping";
    const steps = (status.plan.steps || []).map((s, i) => el("span", { class: i === status.step && active ? "state-ok" : "" }, `${s}% `));
    const gates = status.judgement ? Object.entries(status.judgement).map(([k, v]) => `${k}=${typeof v === "number" ? Number(v.toFixed ? v.toFixed(4) : v) : JSON.stringify(v)}`).join(" · ") : "";
    rows.push(
      el(
        "tr",
        { "data-rollout": status.id, "data-endpoint": e.name },
        el("td", {}, e.name),
        el("td", {}, `${status.from} → ${status.to}`),
        el("td", { class: `state-${status.state}`, "data-state": status.state }, status.state),
        el("td", {}, steps),
        el("td", {}, el("div", { class: "hint" }, gates), el("div", { class: "hint" }, (status.events || []).slice(-3).map((ev) => ev.message).join(" | "))),
        el(
          "td",
          {},
          active && can("operate")
            ? el("button", { "data-action": "abort", onclick: () => act(() => api("POST", path`/endpoints/${e.name}/rollouts/abort`)) }, "Abort")
            : null,
        ),
      ),
    );
  }
  page.replaceChildren(el("h2", {}, "Rollouts"), table(["endpoint", "from → to", "state", "steps", "gates and events", ""], rows));
}

async function jobsPage(page) {
  const jobs = await api("GET", "/batch/jobs");
  const rows = [];
  for (const job of jobs.slice(0, 20)) {
    const detail = await api("GET", path`/batch/jobs/${job.id}`);
    const states = detail.mini_batch_states || {};
    const total = Object.values(states).reduce((a, b) => a + b, 0);
    const done = states.done || 0;
    const buttons = can("operate")
      ? ["cancel", "resume", "retry"].map((action) =>
          el("button", { "data-action": action, onclick: () => act(() => api("POST", path`/batch/jobs/${job.id}/${action}`)) }, action === "retry" ? "Retry failed" : action[0].toUpperCase() + action.slice(1)),
        )
      : [];
    rows.push(
      el(
        "tr",
        { "data-job": job.id },
        el("td", {}, job.id),
        el("td", {}, job.endpoint),
        el("td", { class: `state-${job.state}` }, job.state),
        el("td", {}, progressBar(done, total), el("div", { class: "hint" }, Object.entries(states).map(([s, n]) => `${s} ${n}`).join(" · "))),
        el("td", {}, (detail.errors || []).slice(0, 3).map((err) => el("div", { class: "hint" }, JSON.stringify(err)))),
        el("td", {}, buttons),
      ),
    );
  }
  page.replaceChildren(el("h2", {}, "Batch jobs"), table(["job", "endpoint", "state", "progress", "failures", ""], rows));
}

async function modelsPage(page) {
  const models = await api("GET", "/models");
  page.replaceChildren(
    el("h2", {}, "Models"),
    table(
      ["name", "version", "runtime", "inputs", "outputs"],
      models.map((m) =>
        el(
          "tr",
          {},
          el("td", {}, m.name),
          el("td", {}, m.version),
          el("td", {}, m.runtime),
          el("td", {}, ((m.signature || {}).inputs || []).map((t) => `${t.name} ${t.datatype} [${t.shape}]`).join(", ")),
          el("td", {}, ((m.signature || {}).outputs || []).map((t) => `${t.name} ${t.datatype} [${t.shape}]`).join(", ")),
        ),
      ),
    ),
  );
}

async function auditPage(page) {
  const target = sessionStorage.getItem("audit-target") || "";
  const actor = sessionStorage.getItem("audit-actor") || "";
  const entries = await api("GET", `/audit?limit=200${target ? `&target=${encodeURIComponent(target)}` : ""}`);
  const shown = entries.filter((e) => !actor || e.actor.includes(actor));
  const filter = (key) => el("input", { value: sessionStorage.getItem(key) || "", placeholder: key.replace("audit-", ""), "data-filter": key });
  const form = el("form", { id: "audit-filter" }, filter("audit-target"), " ", filter("audit-actor"), " ", el("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    for (const input of form.querySelectorAll("input")) sessionStorage.setItem(input.dataset.filter, input.value);
    render();
  });
  page.replaceChildren(
    el("h2", {}, "Audit log"),
    form,
    table(["at", "actor", "action", "target", "reason"], shown.map((e) => el("tr", {}, el("td", {}, e.at), el("td", {}, e.actor), el("td", {}, e.action), el("td", {}, e.target), el("td", {}, e.reason)))),
  );
}

async function monitorsPage(page) {
  const monitors = await api("GET", "/monitors");
  const cards = [];
  for (const m of monitors) {
    const runs = await api("GET", path`/monitors/${m.name}/runs?limit=20`);
    const last = runs[0];
    const features = last && last.result.features ? [...last.result.features, ...(last.result.predictions || [])] : [];
    const top = Math.max(m.thresholds.psi, ...features.map((f) => f.psi));
    cards.push(
      el(
        "div",
        { class: "card", "data-monitor": m.name },
        el("h3", {}, `${m.name} (${m.endpoint_name}/${m.deployment_name})`),
        el("div", { class: last ? `state-${last.state}` : "" }, last ? `last run: ${last.state}, ${last.result.rows} rows` : "no run yet"),
        table(
          ["feature", "PSI", "JS distance", "null rate", "out of range", "breaches"],
          features.map((f) =>
            el(
              "tr",
              {},
              el("td", {}, f.feature),
              el("td", {}, el("div", { class: "progress", title: f.psi.toFixed(3) }, el("span", { style: `width:${Math.min(100, (100 * f.psi) / top)}%;background:${f.breaches.length ? "#a32020" : "#2f8f5b"}` })), f.psi.toFixed(3)),
              el("td", {}, f.js_distance.toFixed(3)),
              el("td", {}, f.null_rate.toFixed(3)),
              el("td", {}, f.out_of_range_rate.toFixed(3)),
              el("td", {}, f.breaches.join(", ")),
            ),
          ),
        ),
        sparkline(runs.slice().reverse().map((r) => Math.max(0, ...((r.result.features || []).map((f) => f.psi)))), "largest PSI per run"),
      ),
    );
  }
  page.replaceChildren(el("h2", {}, "Monitoring"), ...cards);
}

const PAGES = {
  endpoints: endpointsPage,
  endpoint: endpointPage,
  rollouts: rolloutsPage,
  jobs: jobsPage,
  models: modelsPage,
  audit: auditPage,
  monitors: monitorsPage,
};

async function act(action) {
  try {
    await action();
    showError("");
  } catch (error) {
    showError(error.message);
  }
  render();
}

let rendering = false;
async function render() {
  if (rendering || me === null) return;
  rendering = true;
  const [, name = "endpoints", arg] = location.hash.split("/");
  for (const link of document.querySelectorAll("#nav a")) link.classList.toggle("current", link.getAttribute("href") === `#/${name}`);
  try {
    await (PAGES[name] || endpointsPage)($("#page"), arg && decodeURIComponent(arg));
    if (!$("#error").dataset.sticky) showError("");
  } catch (error) {
    showError(error.message);
  } finally {
    rendering = false;
  }
}

function showSignIn(shown) {
  $("#signin").hidden = !shown;
  $("#provider").hidden = !(shown && oidc);
}

async function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    me = await api("GET", "/access/whoami");
  } catch (error) {
    sessionStorage.removeItem(TOKEN_KEY);
    me = null;
    showError(`sign-in failed: ${error.message}`);
    showSignIn(true);
    return;
  }
  showSignIn(false);
  $("#nav").hidden = false;
  $("#who").replaceChildren(
    `${me.actor} (${me.roles.join(", ") || "no role"})`,
    el("button", { id: "signout", onclick: () => { sessionStorage.removeItem(TOKEN_KEY); location.reload(); } }, "Sign out"),
  );
  showError("");
  render();
  clearInterval(timer);
  timer = setInterval(render, REFRESH_MS);
}

// -- signing in at the identity provider: authorization code with PKCE (a public client,
// as a single-page app signs in to Entra ID, Okta or Keycloak) ------------------------
function base64url(bytes) {
  return btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
const randomText = (count) => base64url(crypto.getRandomValues(new Uint8Array(count)));
const redirectUri = () => `${location.origin}${location.pathname}`;

async function toProvider() {
  if (!crypto.subtle) throw new Error("signing in at the identity provider needs HTTPS (or localhost)");
  const verifier = randomText(48);
  const state = randomText(16);
  const challenge = base64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  sessionStorage.setItem(PKCE_KEY, JSON.stringify({ verifier, state, hash: location.hash }));
  const url = new URL(oidc.authorization_endpoint);
  url.search = new URLSearchParams({
    response_type: "code",
    client_id: oidc.client_id,
    redirect_uri: redirectUri(),
    scope: oidc.scope,
    state,
    code_challenge: challenge,
    code_challenge_method: "S256",
  });
  location.assign(url.toString());
}

async function redeem(params) {
  const pending = JSON.parse(sessionStorage.getItem(PKCE_KEY) || "null");
  sessionStorage.removeItem(PKCE_KEY);
  window.history.replaceState(null, "", `${location.pathname}${(pending && pending.hash) || ""}`);
  if (params.get("error")) throw new Error(`the identity provider says: ${params.get("error_description") || params.get("error")}`);
  if (!oidc) throw new Error("this gateway has no identity provider client (--oidc-client-id)");
  if (!pending || pending.state !== params.get("state")) throw new Error("the answer does not match a sign-in from this tab");
  const response = await fetch(oidc.token_endpoint, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "authorization_code",
      code: params.get("code"),
      redirect_uri: redirectUri(),
      client_id: oidc.client_id,
      code_verifier: pending.verifier,
    }),
  });
  const tokens = await response.json();
  if (!response.ok) throw new Error(`the identity provider refused the code: ${tokens.error_description || tokens.error || response.status}`);
  return tokens.access_token;
}

async function start() {
  try {
    oidc = (await (await fetch("sign-in")).json()).oidc;
  } catch {
    // an older gateway, or none: admin tokens only
  }
  if (oidc) {
    $("#provider-signin").addEventListener("click", () => toProvider().catch((error) => showError(error.message)));
  }
  const params = new URLSearchParams(location.search);
  if (params.has("code") || params.has("error")) {
    try {
      await signIn(await redeem(params));
    } catch (error) {
      showError(`sign-in failed: ${error.message}`);
      showSignIn(true);
    }
    return;
  }
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
  else showSignIn(true);
}

window.addEventListener("hashchange", render);
$("#signin").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn($("#token").value.trim());
});
start();
