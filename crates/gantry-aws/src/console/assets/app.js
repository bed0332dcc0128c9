// Gantry console: a single-page app over the console's read-only API. Everything shown is
// built with DOM calls and textContent (never innerHTML from data), so no value can inject.
"use strict";

const COLORS = ["#3358d4", "#1f9d55", "#d98a00", "#d64545", "#7b4fd6", "#138a99", "#b3418f", "#5d6b82"];
const main = () => document.getElementById("main");
// Replaces the page's content (absent parts, null or false, are left out).
const show = (...nodes) => main().replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined && n !== false));
let tailTimer = null;

// ---- DOM and formatting helpers ----
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "onclick" || k === "onsubmit") el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const svg = (tag, attrs) => {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  return el;
};
const pct = (v, digits = 2) => (v === null || v === undefined ? "–" : (v * 100).toFixed(digits) + "%");
const bytes = (v) => (v >= 1 << 20 ? (v / (1 << 20)).toFixed(1) + " MiB" : v >= 1024 ? (v / 1024).toFixed(1) + " KiB" : v.toFixed(0) + " B");
const INSIGHTS_OFF = "No data: Container Insights is off for this cluster (update-cluster-settings containerInsights=enabled).";
const dollars = (v) => "$" + (v || 0).toFixed(v >= 1 ? 2 : 4);
const when = (secs) => (secs ? new Date(secs * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z" : "–");
const lastPart = (arn) => (arn || "").split("/").pop();
const taskId = (arn) => lastPart(arn);
function table(headers, rows, attrs) {
  return h("table", attrs || {}, h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows.length ? rows : [h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, "None"))]));
}
function bar(fraction, cls) {
  const outer = h("span", { class: "bar" });
  const inner = h("span", { class: cls || "" });
  inner.style.width = Math.max(0, Math.min(1, fraction || 0)) * 100 + "%";
  outer.append(inner);
  return outer;
}
function pill(text, kind) { return h("span", { class: "pill " + (kind || "") }, text); }
function statusKind(s) {
  if (["RUNNING", "ACTIVE", "COMPLETED", "HEALTHY", "healthy", "OK"].includes(s)) return "ok";
  if (["STOPPED", "FAILED", "UNHEALTHY", "unhealthy", "ALARM", "INACTIVE"].includes(s)) return "bad";
  return "warn";
}

// A line chart: series [{name, points: [[t, v]...]}], with optional horizontal lines.
function chart(series, opts) {
  const W = opts.width || 560, H = opts.height || 170, L = 46, R = 10, T = 10, B = 22;
  const all = series.flatMap((s) => s.points);
  const t0 = opts.start ?? Math.min(...all.map((p) => p[0])), t1 = opts.end ?? Math.max(...all.map((p) => p[0]));
  let yMin = opts.yMin ?? 0;
  let yMax = opts.yMax ?? Math.max(...all.map((p) => p[1]), ...(opts.lines || []).map((l) => l.y), 0);
  if (!(yMax > yMin)) yMax = yMin + 1;
  const x = (t) => L + ((t - t0) / Math.max(1, t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - (v - yMin) / (yMax - yMin)) * (H - T - B);
  const el = svg("svg", { class: "chart", width: W, height: H, viewBox: `0 0 ${W} ${H}`, "data-chart": opts.id || "" });
  for (let i = 0; i <= 4; i++) {
    const v = yMin + ((yMax - yMin) * i) / 4;
    el.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#eef0f5" }));
    const label = svg("text", { x: L - 4, y: y(v) + 3, "text-anchor": "end" });
    label.textContent = (opts.yFmt || ((n) => +n.toFixed(2)))(v);
    el.append(label);
  }
  for (const [t, anchor] of [[t0, "start"], [t1, "end"]]) {
    const label = svg("text", { x: x(t), y: H - 6, "text-anchor": anchor });
    label.textContent = new Date(t * 1000).toISOString().slice(5, 16).replace("T", " ");
    el.append(label);
  }
  for (const l of opts.lines || []) {
    el.append(svg("line", { x1: L, x2: W - R, y1: y(l.y), y2: y(l.y), stroke: l.color || "#d64545", "stroke-dasharray": "4 3" }));
  }
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const color = s.color || COLORS[i % COLORS.length];
    const d = s.points.map((p, j) => (j ? "L" : "M") + x(p[0]).toFixed(1) + " " + y(p[1]).toFixed(1)).join(" ");
    el.append(svg("path", { d, fill: "none", stroke: color, "stroke-width": 2, "data-series": s.name }));
    for (const p of s.points.length < 40 ? s.points : []) el.append(svg("circle", { cx: x(p[0]), cy: y(p[1]), r: 2.5, fill: color }));
  });
  const wrap = h("div", { class: "chart-wrap" });
  if (opts.title) wrap.append(h("div", { class: "muted" }, opts.title));
  if (!all.length) {
    wrap.append(h("div", { class: "muted", "data-empty-chart": opts.id || "" }, opts.empty || "No data in this window."));
    return wrap;
  }
  if (series.length > 1 || opts.legend) {
    wrap.append(h("div", { class: "legend" }, series.map((s, i) =>
      h("span", {}, (() => { const sw = h("i"); sw.style.background = s.color || COLORS[i % COLORS.length]; return sw; })(), s.name))));
  }
  wrap.append(el);
  return wrap;
}

// ---- API ----
class SignedOut extends Error {}
async function request(method, path, body) {
  const r = await fetch(path, {
    method, credentials: "same-origin",
    headers: { "X-Gantry-Console": "1", "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await r.json().catch(() => ({}));
  if (r.status === 401) throw new SignedOut(data.message || "Sign in.");
  if (!r.ok) throw new Error((data.__type || r.status) + ": " + (data.message || r.statusText));
  return data;
}
const call = (service, op, input) => request("POST", `/console/api/call/${service}/${op}`, input || {});
const ecs = (op, input) => call("ecs", op, input);
const dashboard = (name, params) => request("GET", `/console/api/dashboard/${name}?` + new URLSearchParams(params));

// ---- sign-in ----
function loginPage(message) {
  document.getElementById("top").hidden = true;
  const err = h("div", { class: "error", id: "login-error" }, message || "");
  const form = h("form", { class: "login", id: "login" },
    h("h1", {}, "Sign in to Gantry"),
    h("p", { class: "muted" }, "Use an access key of this Gantry (gantry dev prints where its profile is)."),
    h("label", { for: "akid" }, "Access key ID"), h("input", { id: "akid", name: "akid", autocomplete: "username", required: true }),
    h("label", { for: "secret" }, "Secret access key"),
    h("input", { id: "secret", name: "secret", type: "password", autocomplete: "current-password", required: true }),
    h("label", { for: "region" }, "Region"), h("input", { id: "region", name: "region", value: "us-east-1" }),
    h("button", { type: "submit", id: "signin" }, "Sign in"), err);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      await request("POST", "/console/login", {
        accessKeyId: form.akid.value.trim(), secretAccessKey: form.secret.value, region: form.region.value.trim() || "us-east-1",
      });
      route();
    } catch (x) {
      err.textContent = x.message;
    }
  });
  show(form);
}

// ---- pages ----
function windowLinks(current, base) {
  return h("p", { class: "muted" }, "Window: ", ["1h", "6h", "24h", "7d", "30d"].flatMap((w) =>
    [w === current ? h("strong", {}, w) : h("a", { href: `${base}?window=${w}` }, w), " "]));
}

async function executivePage(params) {
  const win = params.get("window") || "24h";
  const d = await dashboard("executive", { window: win });
  const meeting = d.services.filter((s) => s.meetsSlo).length;
  const cost = d.services.reduce((a, s) => a + s.cost, 0);
  const cards = d.services.map((s) => {
    const kind = s.meetsSlo ? "ok" : "bad";
    return h("div", { class: "card", "data-service": `${s.cluster}/${s.service}` },
      h("h3", {}, h("a", { href: `#/services/${s.cluster}/${s.service}` }, s.service), " ", h("span", { class: "muted" }, s.cluster)),
      h("div", {}, h("span", { class: "big " + kind, "data-availability": s.availability }, pct(s.availability, 3)),
        " ", h("span", { class: "muted" }, `vs SLO ${pct(s.slo, 2)} (${s.source === "requests" ? "request success" : "running / desired tasks"})`)),
      s.errorBudgetLeft === null ? h("div", { class: "muted" }, "No requests in this window: no error budget spent.")
        : h("div", {}, "Error budget left: ", bar(s.errorBudgetLeft, s.errorBudgetLeft > 0.25 ? "" : "bad"), " ",
          h("span", { "data-budget": s.errorBudgetLeft },
            s.errorBudgetLeft >= 0 ? pct(s.errorBudgetLeft, 1) : `overspent: ${(1 - s.errorBudgetLeft).toFixed(1)}× the budget`)),
      s.availabilitySeries.length ? chart([{ name: "availability", points: s.availabilitySeries }],
        { width: 280, height: 110, start: d.start, end: d.end, yMin: Math.min(s.slo - 0.01, ...s.availabilitySeries.map((p) => p[1])),
          yMax: 1, yFmt: (v) => (v * 100).toFixed(1), lines: [{ y: s.slo }], id: "availability" }) : null,
      h("div", { class: "muted" }, `Tasks ${s.runningCount}/${s.desiredCount} · cost ${dollars(s.cost)} over ${win}`));
  });
  show(
    h("h1", {}, "Executive"), windowLinks(win, "#/"),
    h("div", { class: "cards" },
      h("div", { class: "card" }, h("h3", {}, "Services meeting their SLO"),
        h("div", { class: "big " + (meeting === d.services.length ? "ok" : "bad"), id: "slo-summary" }, `${meeting} / ${d.services.length}`)),
      h("div", { class: "card" }, h("h3", {}, `Cost over ${win}`), h("div", { class: "big", id: "cost-total" }, dollars(cost)))),
    h("h2", {}, "Availability against SLO"), h("div", { class: "cards", id: "services" }, cards),
    h("h2", {}, "Cost trend by service"),
    chart(d.services.map((s) => ({ name: `${s.cluster}/${s.service}`, points: s.costSeries })),
      { width: 900, height: 220, start: d.start, end: d.end, yFmt: (v) => "$" + v.toFixed(4), legend: true, id: "cost",
        empty: "No cost metered yet (each minute is metered after it ends)." }));
}

async function oncallPage() {
  const d = await dashboard("oncall", {});
  const section = (title, id, headers, rows) => [h("h2", {}, title, " ", pill(String(rows.length), rows.length ? "bad" : "ok")),
    table(headers, rows, { "data-section": id })];
  show(h("h1", {}, "On-call"),
    ...section("Burning SLOs", "burning", ["Service", "SLO", "Burn 5m", "Burn 1h", "Burn 6h", "Page"], d.burningSlos.map((b) =>
      h("tr", {}, h("td", {}, h("a", { href: `#/services/${b.cluster}/${b.service}` }, `${b.cluster}/${b.service}`)), h("td", {}, pct(b.slo)),
        ["5m", "1h", "6h"].map((w) => h("td", {}, b.burnRates[w] === null ? "–" : b.burnRates[w].toFixed(1) + "×")),
        h("td", {}, b.page ? pill("page", "bad") : pill("ticket", "warn"))))),
    ...section("Alarms in ALARM", "alarms", ["Alarm", "Metric", "Reason", "Since"], (d.alarms || []).map((a) =>
      h("tr", {}, h("td", {}, a.AlarmName), h("td", {}, `${a.Namespace || ""} ${a.MetricName || "(math)"}`), h("td", {}, a.StateReason),
        h("td", {}, when(a.StateUpdatedTimestamp))))),
    ...section("Failing deployments", "deployments", ["Service", "Deployment", "State", "Failed tasks", "Reason"], d.failingDeployments.map((x) =>
      h("tr", {}, h("td", {}, h("a", { href: `#/services/${x.cluster}/${x.service}` }, `${x.cluster}/${x.service}`)), h("td", {}, x.deployment),
        h("td", {}, pill(x.rolloutState, statusKind(x.rolloutState))), h("td", {}, x.failedTasks), h("td", {}, x.rolloutStateReason || "")))),
    ...section("Unhealthy targets", "targets", ["Target group", "Target", "State", "Reason"], d.unhealthyTargets.map((t) =>
      h("tr", {}, h("td", {}, t.targetGroup), h("td", {}, `${t.target}:${t.port}`), h("td", {}, pill(t.state, statusKind(t.state))),
        h("td", {}, `${t.reason || ""} ${t.description || ""}`)))),
    ...section("Restart loops", "loops", ["Service", "Failed stops", "Within"], d.restartLoops.map((l) =>
      h("tr", {}, h("td", {}, h("a", { href: `#/services/${l.cluster}/${l.service}` }, `${l.cluster}/${l.service}`)),
        h("td", {}, l.failedStops), h("td", {}, `${l.withinSeconds / 60} min`)))),
    ...section("Recent task failures", "failures", ["Task", "Group", "Stop code", "Reason", "Exit codes", "Stopped"], d.taskFailures.map((t) =>
      h("tr", {}, h("td", {}, h("a", { href: `#/tasks/${t.cluster}/${taskId(t.taskArn)}` }, taskId(t.taskArn))), h("td", {}, t.group || ""),
        h("td", {}, t.stopCode || ""), h("td", { "data-stopped-reason": "" }, t.stoppedReason || ""),
        h("td", {}, t.containers.map((c) => `${c.name}=${c.exitCode ?? "–"}`).join(" ")), h("td", {}, when(t.stoppedAt))))));
}

async function listAll(op, input, key) {
  let out = [], token;
  do {
    const page = await ecs(op, { ...input, ...(token ? { nextToken: token } : {}) });
    out = out.concat(page[key] || []);
    token = page.nextToken;
  } while (token);
  return out;
}

async function clustersPage() {
  const arns = await listAll("ListClusters", {}, "clusterArns");
  const d = arns.length ? await ecs("DescribeClusters", { clusters: arns }) : { clusters: [] };
  show(h("h1", {}, "Clusters"), table(["Cluster", "Status", "Services", "Running tasks", "Pending tasks"],
    d.clusters.map((c) => h("tr", { "data-cluster": c.clusterName },
      h("td", {}, h("a", { href: `#/clusters/${c.clusterName}` }, c.clusterName)), h("td", {}, pill(c.status, statusKind(c.status))),
      h("td", {}, c.activeServicesCount), h("td", {}, c.runningTasksCount), h("td", {}, c.pendingTasksCount)))));
}

function deploymentRows(s) {
  return (s.deployments || []).map((d) => h("tr", { "data-deployment": d.id },
    h("td", {}, d.status), h("td", {}, lastPart(d.taskDefinition)),
    h("td", {}, bar(d.desiredCount ? d.runningCount / d.desiredCount : 1), ` ${d.runningCount}/${d.desiredCount}`),
    h("td", {}, pill(d.rolloutState || "", statusKind(d.rolloutState))), h("td", {}, d.failedTasks), h("td", {}, d.rolloutStateReason || "")));
}

async function clusterPage(cluster) {
  const serviceArns = await listAll("ListServices", { cluster }, "serviceArns");
  let services = [];
  for (let i = 0; i < serviceArns.length; i += 10) {
    services = services.concat((await ecs("DescribeServices", { cluster, services: serviceArns.slice(i, i + 10) })).services);
  }
  const taskArns = await listAll("ListTasks", { cluster }, "taskArns");
  const tasks = taskArns.length ? (await ecs("DescribeTasks", { cluster, tasks: taskArns.slice(0, 100) })).tasks : [];
  show(h("h1", {}, `Cluster ${cluster}`),
    h("h2", {}, "Services"), table(["Service", "Status", "Desired", "Running", "Pending", "Deployment"], services.map((s) => {
      const primary = (s.deployments || []).find((d) => d.status === "PRIMARY") || {};
      return h("tr", { "data-service": s.serviceName, "data-running": s.runningCount },
        h("td", {}, h("a", { href: `#/services/${cluster}/${s.serviceName}` }, s.serviceName)), h("td", {}, pill(s.status, statusKind(s.status))),
        h("td", {}, s.desiredCount), h("td", {}, s.runningCount), h("td", {}, s.pendingCount),
        h("td", {}, bar(primary.desiredCount ? primary.runningCount / primary.desiredCount : 1), " ", pill(primary.rolloutState || "", statusKind(primary.rolloutState))));
    })),
    h("h2", {}, "Tasks"), taskTable(cluster, tasks));
}

function taskTable(cluster, tasks) {
  return table(["Task", "Definition", "Last status", "Health", "Started", "Stop reason"], tasks.map((t) =>
    h("tr", { "data-task": taskId(t.taskArn), "data-last-status": t.lastStatus },
      h("td", {}, h("a", { href: `#/tasks/${cluster}/${taskId(t.taskArn)}` }, taskId(t.taskArn))), h("td", {}, lastPart(t.taskDefinitionArn)),
      h("td", {}, pill(t.lastStatus, statusKind(t.lastStatus))), h("td", {}, t.healthStatus || ""), h("td", {}, when(t.startedAt)),
      h("td", {}, t.stoppedReason || ""))));
}

async function servicePage(cluster, name, params) {
  const win = params.get("window") || "1h";
  const d = await dashboard("service", { cluster, service: name, window: win });
  const s = d.service, ser = d.series, range = { start: d.start, end: d.end };
  const events = (s.events || []).slice(0, 20);
  show(h("h1", {}, `Service ${name}`, " ", pill(s.status, statusKind(s.status))),
    h("p", { id: "counts" }, `Desired ${s.desiredCount} · running ${s.runningCount} · pending ${s.pendingCount} · `,
      h("span", { class: "muted" }, s.taskDefinition)),
    windowLinks(win, `#/services/${cluster}/${name}`),
    h("h2", {}, "Deployments"), table(["Status", "Task definition", "Progress", "Rollout", "Failed tasks", "Reason"], deploymentRows(s), { id: "deployments" }),
    h("h2", {}, "Utilisation"),
    h("div", { class: "cards" },
      chart([{ name: "CPU", points: ser.cpu }, { name: "memory", points: ser.memory }],
        { ...range, width: 420, yMax: 100, yFmt: (v) => v.toFixed(0) + "%", legend: true, id: "utilisation", title: "CPU and memory (% of reserved)" }),
      chart([{ name: "requests", points: ser.requests }, { name: "5XX", points: ser.failures, color: "#d64545" }],
        { ...range, width: 420, legend: true, id: "requests", title: "Requests per period", empty: "No load balancer traffic." }),
      chart([{ name: "p95", points: ser.latencyP95 || [] }],
        { ...range, width: 420, yFmt: (v) => (v * 1000).toFixed(0) + " ms", id: "latency", title: "Target response time p95", empty: "No load balancer traffic." }),
      chart([{ name: "cost", points: ser.cost }], { ...range, width: 420, yFmt: (v) => "$" + v.toFixed(4), id: "service-cost", title: "Cost per period" }),
      chart([{ name: "received", points: ser.networkRx }, { name: "sent", points: ser.networkTx }],
        { ...range, width: 420, legend: true, yFmt: bytes, id: "network", title: "Network per task (bytes/s)", empty: INSIGHTS_OFF }),
      chart([{ name: "read", points: ser.storageRead }, { name: "written", points: ser.storageWrite }],
        { ...range, width: 420, legend: true, yFmt: bytes, id: "storage", title: "Disk I/O per period", empty: INSIGHTS_OFF })),
    h("h2", {}, "Tasks"), taskTable(cluster, d.tasks),
    h("h2", {}, "Events"), table(["Time", "Message"], events.map((e) => h("tr", {}, h("td", {}, when(e.createdAt)), h("td", {}, e.message))), { id: "events" }));
}

// Start-time phases of a task, as a timeline: provisioning, pull, start.
function phases(t) {
  const marks = [["created", t.createdAt], ["pull", t.pullStartedAt], ["pulled", t.pullStoppedAt],
    ["connected", t.connectivityAt], ["started", t.startedAt]];
  const known = marks.filter((m) => m[1]);
  if (known.length < 2) return h("p", { class: "muted" }, "The task has not started yet.");
  const t0 = known[0][1], t1 = known[known.length - 1][1], span = Math.max(t1 - t0, 0.001);
  const line = h("div", { class: "timeline", id: "phases" });
  const colors = ["#5d6b82", "#d98a00", "#7b4fd6", "#1f9d55"];
  const names = ["provisioning", "image pull", "sandbox", "starting"];
  const rows = [];
  for (let i = 0; i < marks.length - 1; i++) {
    const [a, b] = [marks[i][1], marks[i + 1][1]];
    if (!a || !b) continue;
    const seg = h("span", { "data-phase": names[i] }, names[i]);
    seg.style.left = ((a - t0) / span) * 100 + "%";
    seg.style.width = Math.max(((b - a) / span) * 100, 0.5) + "%";
    seg.style.background = colors[i];
    line.append(seg);
    rows.push(h("tr", {}, h("td", {}, names[i]), h("td", {}, ((b - a) * 1000).toFixed(0) + " ms")));
  }
  return h("div", {}, line, table(["Phase", "Took"], rows, { id: "phase-table" }),
    h("p", { class: "muted" }, `Created to started: ${((t1 - t0) * 1000).toFixed(0)} ms`));
}

async function taskPage(cluster, id) {
  const d = await ecs("DescribeTasks", { cluster, tasks: [id] });
  const t = (d.tasks || [])[0];
  if (!t) throw new Error(`Task ${id} not found in cluster ${cluster}.`);
  const td = (await ecs("DescribeTaskDefinition", { taskDefinition: t.taskDefinitionArn })).taskDefinition;
  const logs = h("div", { id: "task-logs" });
  show(h("h1", {}, `Task ${id}`, " ", pill(t.lastStatus, statusKind(t.lastStatus))),
    h("p", {}, `Definition ${lastPart(t.taskDefinitionArn)} · ${t.cpu} CPU units · ${t.memory} MiB · group ${t.group || "–"}`),
    t.stoppedReason ? h("p", { class: "bad", id: "stopped-reason" }, `${t.stopCode || ""}: ${t.stoppedReason}`) : null,
    h("h2", {}, "Start time"), phases(t),
    h("h2", {}, "Containers"), table(["Name", "Image", "Status", "Exit code", "Health", "Reason"], (t.containers || []).map((c) =>
      h("tr", {}, h("td", {}, c.name), h("td", {}, c.image), h("td", {}, pill(c.lastStatus, statusKind(c.lastStatus))),
        h("td", {}, c.exitCode ?? "–"), h("td", {}, c.healthStatus || ""), h("td", {}, c.reason || "")))),
    h("h2", {}, "Logs"), logs);
  for (const c of td.containerDefinitions || []) {
    const o = (c.logConfiguration || {}).options || {};
    if ((c.logConfiguration || {}).logDriver !== "awslogs" || !o["awslogs-group"]) continue;
    const stream = `${o["awslogs-stream-prefix"]}/${c.name}/${id}`;
    logs.append(h("h3", {}, c.name, " ", h("a", { href: `#/logs/${encodeURIComponent(o["awslogs-group"])}/${encodeURIComponent(stream)}` }, "open")));
    logs.append(tail(o["awslogs-group"], stream));
  }
}

// A live tail of one stream: polls GetLogEvents from the last forward token.
function tail(group, stream) {
  const pre = h("pre", { class: "logs", "data-stream": stream });
  let token;
  const poll = async () => {
    try {
      const r = await call("logs", "GetLogEvents", { logGroupName: group, logStreamName: stream, startFromHead: true, ...(token ? { nextToken: token } : {}) });
      for (const e of r.events || []) pre.append(new Date(e.timestamp).toISOString().slice(11, 19) + "  " + e.message + "\n");
      token = r.nextForwardToken;
      if ((r.events || []).length) pre.scrollTop = pre.scrollHeight;
    } catch (x) {
      if (!pre.textContent) pre.textContent = x.message.includes("ResourceNotFound") ? "(no output yet)\n" : x.message + "\n";
    }
  };
  poll();
  const timer = setInterval(() => (pre.isConnected ? poll() : clearInterval(timer)), 2000);
  tailTimer = timer;
  return pre;
}

async function taskdefsPage() {
  const arns = await listAll("ListTaskDefinitions", { sort: "DESC" }, "taskDefinitionArns");
  show(h("h1", {}, "Task definitions"), table(["Task definition"], arns.map((a) =>
    h("tr", {}, h("td", {}, h("a", { href: `#/taskdefs/${encodeURIComponent(lastPart(a))}` }, lastPart(a)))))));
}

async function taskdefPage(name) {
  const td = (await ecs("DescribeTaskDefinition", { taskDefinition: name })).taskDefinition;
  show(h("h1", {}, `Task definition ${td.family}:${td.revision}`),
    h("p", {}, `${td.cpu || "–"} CPU units · ${td.memory || "–"} MiB · ${td.networkMode} · ${td.status}`),
    table(["Container", "Image", "Essential", "Ports", "Logs"], (td.containerDefinitions || []).map((c) =>
      h("tr", {}, h("td", {}, c.name), h("td", {}, c.image), h("td", {}, String(c.essential !== false)),
        h("td", {}, (c.portMappings || []).map((p) => `${p.containerPort}/${p.protocol || "tcp"}`).join(", ")),
        h("td", {}, ((c.logConfiguration || {}).options || {})["awslogs-group"] || "")))),
    h("h2", {}, "JSON"), h("pre", { class: "logs" }, JSON.stringify(td, null, 2)));
}

async function logsPage() {
  let groups = [], token;
  do {
    const r = await call("logs", "DescribeLogGroups", token ? { nextToken: token } : {});
    groups = groups.concat(r.logGroups || []);
    token = r.nextToken;
  } while (token);
  show(h("h1", {}, "Log groups"), table(["Group", "Stored bytes", "Retention"], groups.map((g) =>
    h("tr", { "data-group": g.logGroupName }, h("td", {}, h("a", { href: `#/logs/${encodeURIComponent(g.logGroupName)}` }, g.logGroupName)),
      h("td", {}, g.storedBytes ?? 0), h("td", {}, g.retentionInDays ? `${g.retentionInDays} days` : "never expires")))));
}

async function logGroupPage(group) {
  const r = await call("logs", "DescribeLogStreams", { logGroupName: group, orderBy: "LastEventTime", descending: true, limit: 50 });
  show(h("h1", {}, `Log group ${group}`), table(["Stream", "Last event"], (r.logStreams || []).map((s) =>
    h("tr", {}, h("td", {}, h("a", { href: `#/logs/${encodeURIComponent(group)}/${encodeURIComponent(s.logStreamName)}` }, s.logStreamName)),
      h("td", {}, s.lastEventTimestamp ? new Date(s.lastEventTimestamp).toISOString() : "–")))));
}

function logStreamPage(group, stream) {
  show(h("h1", {}, stream), h("p", { class: "muted" }, `${group} · live tail, every 2 s`), tail(group, stream));
}

// ---- routing ----
const routes = [
  [/^\/?$/, (m, p) => executivePage(p)],
  [/^\/oncall$/, () => oncallPage()],
  [/^\/clusters$/, () => clustersPage()],
  [/^\/clusters\/([^/]+)$/, (m) => clusterPage(m[1])],
  [/^\/services\/([^/]+)\/([^/]+)$/, (m, p) => servicePage(m[1], m[2], p)],
  [/^\/tasks\/([^/]+)\/([^/]+)$/, (m) => taskPage(m[1], m[2])],
  [/^\/taskdefs$/, () => taskdefsPage()],
  [/^\/taskdefs\/([^/]+)$/, (m) => taskdefPage(decodeURIComponent(m[1]))],
  [/^\/logs$/, () => logsPage()],
  [/^\/logs\/([^/]+)$/, (m) => logGroupPage(decodeURIComponent(m[1]))],
  [/^\/logs\/([^/]+)\/([^/]+)$/, (m) => logStreamPage(decodeURIComponent(m[1]), decodeURIComponent(m[2]))],
];

async function route() {
  if (tailTimer) clearInterval(tailTimer);
  const [path, query] = (location.hash.slice(1) || "/").split("?");
  const params = new URLSearchParams(query || "");
  try {
    const who = await request("GET", "/console/api/session");
    document.getElementById("top").hidden = false;
    document.getElementById("who").textContent = `${who.accessKeyId} · ${who.account} · ${who.region}`;
    for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", a.getAttribute("href") === "#" + path);
    const hit = routes.map(([re, page]) => [path.match(re), page]).find(([m]) => m);
    if (!hit) throw new Error(`No page at ${path}.`);
    show(h("p", { class: "muted" }, "Loading…"));
    await hit[1](hit[0], params);
    document.body.dataset.page = path;
  } catch (x) {
    if (x instanceof SignedOut) return loginPage(location.hash && x.message !== "Sign in to use the console." ? x.message : "");
    show(h("h1", {}, "Something went wrong"), h("p", { class: "error", id: "page-error" }, x.message));
  }
}

window.addEventListener("hashchange", route);
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("logout").addEventListener("click", async () => {
    await request("POST", "/console/logout").catch(() => {});
    location.hash = "";
    loginPage("Signed out.");
  });
  route();
});
