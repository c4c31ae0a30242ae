// dmq console: a single page, routed by the address's #fragment. Everything on screen
// is built with DOM calls (record contents are always text, never markup).

const main = document.getElementById("main");
const live = document.getElementById("live");
let timer = null;          // the current page's refresh timer
let charts = [];           // the current page's charts (destroyed on leaving it)
let visit = 0;             // bumps on every navigation: late answers of old pages are dropped

// ---- helpers --------------------------------------------------------------------------
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : String(kid));
  }
  return el;
}

async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, opts);
  } catch (e) {
    throw new Error("this node did not answer (is it running?)");
  }
  let data = null;
  try { data = await resp.json(); } catch (e) { /* not JSON */ }
  if (!resp.ok) {
    const why = data && data.error ? data.error : `${resp.status} ${resp.statusText}`;
    throw new Error(why);
  }
  return data;
}

const enc = encodeURIComponent;

// What the logged-in user may do (GET /api/v1/auth/me): actions it may not are hidden.
// Until it is known, or if it cannot be read, nothing is hidden: the node refuses (403).
// The banner says what this node runs with (GET /ui/api/security), or that security is off.
let me = { principal: null, aclsEnforced: false, cluster: {} };
async function whoami() {
  const banner = document.getElementById("security");
  let sec = null;
  try { sec = await api("GET", "/ui/api/security"); } catch (e) { /* said below */ }
  try { me = await api("GET", "/api/v1/auth/me"); } catch (e) { /* nothing hidden: the node refuses */ }
  if (sec && !sec.enabled) {
    banner.replaceChildren(h("strong", {}, "Security is off."),
      " Anyone who can reach this port can see and change the cluster: topics, records and group offsets. "
      + "This node has no TLS, no login and no ACLs (see the README's Security section).");
    return;
  }
  if (!sec) {
    banner.textContent = "Could not read this node's security settings (GET /ui/api/security).";
    return;
  }
  const parts = [
    sec.tls ? `TLS on every listener (client certificates ${sec.clientAuth})` : "no TLS",
    sec.saslMechanisms.length ? `SASL ${sec.saslMechanisms.join(", ")}${sec.saslOnProtocolPort ? " on the Kafka and dmq ports" : " on the Kafka listener"}` : "no SASL",
    sec.httpLogin ? "HTTP login required" : "no HTTP login",
    sec.authorizer ? "ACLs enforced" : "no ACLs"];
  banner.replaceChildren(h("strong", {}, "Security is on: "), `${parts.join(" · ")}.`,
    sec.httpLogin && me.principal ? ` Logged in as ${me.principal}.` : "",
    me.aclsEnforced ? " This console shows only what your ACLs allow you to see and do."
      : sec.httpLogin ? " Every logged-in user may do everything." : "");
  banner.classList.add("info");
}
const mayCluster = (what) => !me.aclsEnforced || me.cluster[what] !== false;
const may = (obj, what) => !obj || !obj.may || obj.may[what] !== false;
const fmtInt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en"));
function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : Math.round(n)} ${units[i]}`;
}
const fmtRate = (n) => (n === null || n === undefined ? "–" : n < 10 ? n.toFixed(1) : fmtInt(Math.round(n)));
const fmtTime = (ms) => (ms ? new Date(ms).toLocaleTimeString() : "–");
function ago(ms) {
  if (ms === null || ms === undefined) return "never";
  return ms < 1000 ? `${ms} ms ago` : `${(ms / 1000).toFixed(1)} s ago`;
}
function badge(text, cls) { return h("span", { class: `badge ${cls}` }, text); }

function table(headers, rows, opts = {}) {
  const head = h("tr", {}, headers.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, c.label || c)));
  const body = rows.length
    ? rows
    : [h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, opts.empty || "None."))];
  return h("div", { class: "table-wrap" },
    h("table", { "aria-label": opts.label || null }, h("thead", {}, head), h("tbody", {}, body)));
}
function td(v, num) { return h("td", { class: num ? "num" : null }, v); }

function message(el, text, kind) {
  el.replaceChildren();
  if (!text) return;
  el.append(h("div", { class: `msg ${kind}`, role: kind === "error" ? "alert" : "status" }, text));
}

function field(label, input) { return h("label", {}, label, input); }

function submitForm(form, out, action) {
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const button = form.querySelector("button[type=submit]");
    if (button) button.disabled = true;
    message(out, "");
    try {
      const done = await action(new FormData(form));
      if (done) message(out, done, "done");
    } catch (e) {
      message(out, e.message, "error");
    } finally {
      if (button) button.disabled = false;
    }
  });
}

// A line chart over time: each dataset's data is [[ms, value], ...] (value may be null).
function chart(canvasLabel, datasets, yTitle) {
  const canvas = h("canvas", { role: "img", "aria-label": canvasLabel });
  const box = h("div", { class: "chart" }, canvas);
  if (typeof Chart === "undefined") {
    box.replaceChildren(h("p", { class: "muted" }, "Chart library not loaded."));
    return box;
  }
  const dark = matchMedia("(prefers-color-scheme: dark)").matches;
  const fg = dark ? "#e6edf3" : "#1b1f24";
  const grid = dark ? "#30363d" : "#d0d7de";
  charts.push(new Chart(canvas, {
    type: "line",
    data: { datasets: datasets.map((d) => ({ ...d, data: d.data.map(([x, y]) => ({ x, y })), pointRadius: 2, borderWidth: 2, spanGaps: true })) },
    options: {
      animation: false, responsive: true, maintainAspectRatio: false,
      plugins: {
        legend: { labels: { color: fg } }, title: { display: true, text: canvasLabel, color: fg },
        tooltip: { callbacks: { title: (items) => (items.length ? fmtTime(items[0].parsed.x) : "") } },
      },
      scales: {
        x: { type: "linear", ticks: { color: fg, maxTicksLimit: 7, callback: (v) => fmtTime(v) }, grid: { color: grid } },
        y: { beginAtZero: true, title: { display: !!yTitle, text: yTitle, color: fg }, ticks: { color: fg }, grid: { color: grid } },
      },
    },
  }));
  return box;
}
const PALETTE = ["#0b7de0", "#e0530b", "#2ca02c", "#9467bd", "#d62728", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

function setTitle(text) {
  document.title = `${text} · dmq console`;
}

// Rebuild the current page a moment after a change (the metadata takes that long to
// reach every node), unless the user has gone to another page meanwhile.
function refreshSoon() {
  const mine = visit;
  setTimeout(() => { if (mine === visit) route(); }, 800);
}

function every(ms, fn) {
  const mine = visit;
  const tick = async () => {
    if (mine !== visit) return;
    try { await fn(); } catch (e) { /* the page shows its own error */ }
    if (mine === visit) timer = setTimeout(tick, ms);
  };
  timer = setTimeout(tick, ms);
}

// ---- Cluster --------------------------------------------------------------------------
async function pageCluster() {
  setTitle("Cluster");
  const body = h("div", {});
  const status = h("div", {});
  main.replaceChildren(h("h1", {}, "Cluster ", h("span", { class: "muted", id: "updated" })), status, body);
  const render = async () => {
    let d;
    try {
      d = await api("GET", "/ui/api/overview");
    } catch (e) {
      message(status, `Cannot read the cluster: ${e.message}`, "error");
      return;
    }
    message(status, "");
    document.getElementById("node").textContent = `· node ${d.nodeId}`;
    const online = d.brokers.filter((b) => b.state === "ONLINE").length;
    const cards = h("div", { class: "cards" },
      card("Active controller", d.controllerId >= 0 ? `node ${d.controllerId}` : "none", d.controllerId >= 0 ? "" : "bad"),
      card("Term", fmtInt(d.controllerTerm)),
      card("Brokers online", `${online} / ${d.brokers.length}`, online < d.brokers.length ? "bad" : "ok"),
      card("Topics", fmtInt(d.topics)),
      card("Partitions", fmtInt(d.partitions)),
      card("Under-replicated", fmtInt(d.underReplicated.length), d.underReplicated.length ? "warn" : "ok"),
      card("Offline partitions", fmtInt(d.offline.length), d.offline.length ? "bad" : "ok"));
    const ctl = table(
      ["Node", "Address", "Raft role", { label: "Term", num: 1 }, { label: "Commit index", num: 1 }, { label: "Last applied", num: 1 }],
      d.controllers.map((c) => h("tr", { class: c.role === "UNREACHABLE" ? "bad" : null },
        td(h("span", {}, `${c.id}`, c.active ? " " : "", c.active ? badge("active", "ok") : "")),
        td(c.host ? `${c.host}:${c.port}` : "–"),
        td(badge(c.role || "?", c.role === "LEADER" ? "ok" : c.role === "UNREACHABLE" ? "bad" : "")),
        td(fmtInt(c.term), 1), td(fmtInt(c.commitIndex), 1), td(fmtInt(c.lastApplied), 1))),
      { label: "Controllers" });
    const brk = table(
      ["Broker", "State", "Address", "Rack", "Last heartbeat", { label: "Leads", num: 1 }, { label: "Hosts", num: 1 }],
      d.brokers.map((b) => {
        const cls = b.state === "ONLINE" ? "ok" : b.state === "SHUTTING_DOWN" ? "warn" : "bad";
        return h("tr", { class: cls === "ok" ? null : cls, "data-broker": b.id, "data-state": b.state },
          td(String(b.id)), td(badge(b.state === "ONLINE" ? "online" : `offline (${b.state.toLowerCase()})`, cls)),
          td(`${b.host}:${b.port}`), td(b.rack || "–"), td(ago(b.lastHeartbeatMsAgo)),
          td(fmtInt(b.leaders), 1), td(fmtInt(b.partitions), 1));
      }),
      { label: "Brokers", empty: "No broker has registered." });
    const bad = [...d.offline.map((p) => ({ ...p, kind: "offline" })), ...d.underReplicated.map((p) => ({ ...p, kind: "under-replicated" }))];
    const parts = table(["Partition", "Problem", "Leader", "Replicas", "ISR"],
      bad.map((p) => h("tr", { class: p.kind === "offline" ? "bad" : "warn" },
        td(h("a", { href: `#/topics/${enc(p.topic)}` }, `${p.topic}-${p.partition}`)),
        td(badge(p.kind, p.kind === "offline" ? "bad" : "warn")),
        td(p.leader >= 0 ? String(p.leader) : "none"), td(p.replicas.join(", ")), td(p.isr.join(", ")))),
      { label: "Partitions needing attention", empty: "Every partition has a leader and a full ISR." });
    body.replaceChildren(cards, h("h2", {}, "Controllers"), ctl, h("h2", {}, "Brokers"), brk,
      h("h2", {}, "Partitions needing attention"), parts);
    document.getElementById("updated").textContent = `· updated ${fmtTime(d.timestamp)}`;
  };
  await render();
  every(2000, render);
}
function card(label, value, cls) {
  return h("div", { class: "card" }, h("div", { class: "muted" }, label), h("div", { class: `n ${cls || ""}` }, value));
}

// ---- Topics ---------------------------------------------------------------------------
async function pageTopics() {
  setTitle("Topics");
  const list = h("div", {});
  const out = h("div", {});
  const form = h("form", { "aria-label": "Create a topic", id: "create-topic", novalidate: true },
    field("Name", h("input", { name: "name", id: "topic-name", autocomplete: "off", placeholder: "orders" })),
    field("Partitions", h("input", { name: "partitions", id: "topic-partitions", inputmode: "numeric", value: "3", size: 6 })),
    field("Replication factor", h("input", { name: "replicationFactor", id: "topic-rf", inputmode: "numeric", value: "3", size: 6 })),
    field("Configs (name=value per line)", h("textarea", { name: "configs", rows: 2, placeholder: "retention.ms=86400000" })),
    h("button", { type: "submit" }, "Create topic"));
  submitForm(form, out, async (fd) => {
    const name = fd.get("name").trim();
    const configs = parseLines(fd.get("configs"), "=");
    await api("POST", "/ui/api/topics", {
      name, partitions: fd.get("partitions"), replicationFactor: fd.get("replicationFactor"), configs,
    });
    await render();
    return `Topic ${name} created.`;
  });
  main.replaceChildren(h("h1", {}, "Topics"),
    ...(mayCluster("createTopics") ? [h("h2", {}, "Create a topic"), form, out] : []),
    h("h2", {}, "All topics"), list);
  const render = async () => {
    let d;
    try { d = await api("GET", "/ui/api/topics"); } catch (e) {
      message(list, `Cannot list topics: ${e.message}`, "error");
      return;
    }
    list.replaceChildren(table(
      ["Topic", { label: "Partitions", num: 1 }, { label: "RF", num: 1 }, "Health", { label: "Size", num: 1 },
        { label: "Records/s in", num: 1 }, { label: "Bytes/s in", num: 1 },
        { label: "Records/s out", num: 1 }, { label: "Bytes/s out", num: 1 }],
      d.topics.map((t) => h("tr", { "data-topic": t.name, class: t.offline ? "bad" : t.underReplicated ? "warn" : null },
        td(h("a", { href: `#/topics/${enc(t.name)}` }, t.name)), td(fmtInt(t.partitions), 1),
        td(fmtInt(t.replicationFactor), 1),
        td(t.offline ? badge(`${t.offline} offline`, "bad") : t.underReplicated ? badge(`${t.underReplicated} under-replicated`, "warn") : badge("ok", "ok")),
        td(fmtBytes(t.sizeBytes), 1), td(fmtRate(t.recordsInPerSec), 1), td(fmtBytes(t.bytesInPerSec), 1),
        td(fmtRate(t.recordsOutPerSec), 1), td(fmtBytes(t.bytesOutPerSec), 1))),
      { label: "Topics", empty: "No topics yet." }),
      h("p", { class: "muted" }, "Rates are from the last sample of the brokers' metrics (every 5 s). In: appended by the partition leaders; out: sent to consumers (replication not counted)."));
  };
  await render();
  every(5000, render);
}

function parseLines(text, sep) {
  const out = {};
  for (const raw of String(text || "").split("\n")) {
    const line = raw.trim();
    if (!line) continue;
    const i = line.indexOf(sep);
    if (i <= 0) throw new Error(`"${line.slice(0, 40)}" is not name${sep}value`);
    out[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  return out;
}

async function pageTopic(name) {
  setTitle(`Topic ${name}`);
  const out = h("div", {});
  const body = h("div", {});
  main.replaceChildren(h("h1", {}, "Topic ", h("span", { class: "muted" }, name)), out, body);
  const mine = visit;
  let d;
  try { d = await api("GET", `/ui/api/topics/${enc(name)}`); } catch (e) {
    message(out, `Cannot read topic ${name}: ${e.message}`, "error");
    return;
  }
  if (mine !== visit) return;  // the user has moved on: leave their new page alone
  const parts = table(
    [{ label: "Partition", num: 1 }, "Leader", "Replicas", "ISR", { label: "Log start", num: 1 }, { label: "High watermark", num: 1 }, { label: "Size", num: 1 }, ""],
    d.partitions.map((p) => h("tr", { class: p.leader < 0 ? "bad" : p.isr.length < p.replicas.length ? "warn" : null },
      td(String(p.partition), 1), td(p.leader >= 0 ? String(p.leader) : badge("offline", "bad")),
      td(p.replicas.join(", ")), td(p.isr.join(", ")), td(fmtInt(p.logStartOffset), 1), td(fmtInt(p.highWatermark), 1),
      td(fmtBytes(p.sizeBytes), 1),
      td(may(d, "read") ? h("a", { href: `#/messages?topic=${enc(name)}&partition=${p.partition}` }, "Browse") : ""))),
    { label: `Partitions of ${name}` });
  const cfgRows = Object.entries(d.configs).sort().map(([k, v]) =>
    h("tr", {}, td(k), td(v), td(k in d.overrides ? badge("set", "ok") : h("span", { class: "muted" }, "default"))));
  const cfgOut = h("div", {});
  const cfgForm = h("form", { "aria-label": "Change configs", id: "alter-configs" },
    field("Config name", h("input", { name: "key", list: "config-names", autocomplete: "off" })),
    field("New value (empty: back to the default)", h("input", { name: "value", autocomplete: "off" })),
    h("datalist", { id: "config-names" }, Object.keys(d.configs).map((k) => h("option", { value: k }))),
    h("button", { type: "submit" }, "Apply"));
  submitForm(cfgForm, cfgOut, async (fd) => {
    const key = fd.get("key").trim();
    if (!key) throw new Error("config name is required");
    const value = fd.get("value").trim();
    await api("POST", `/ui/api/topics/${enc(name)}/configs`, { configs: { [key]: value === "" ? null : value } });
    refreshSoon();
    return value === "" ? `${key} is back to its default.` : `${key} set to ${value}.`;
  });
  const addOut = h("div", {});
  const addForm = h("form", { "aria-label": "Add partitions", id: "add-partitions" },
    field("New total partition count", h("input", { name: "count", inputmode: "numeric", value: String(d.partitions.length + 1), size: 8 })),
    h("button", { type: "submit" }, "Add partitions"));
  submitForm(addForm, addOut, async (fd) => {
    const r = await api("POST", `/ui/api/topics/${enc(name)}/partitions`, { count: fd.get("count") });
    refreshSoon();
    return `${name} now has ${r.partitions} partitions.`;
  });
  const delOut = h("div", {});
  const delForm = h("form", { "aria-label": "Delete the topic", id: "delete-topic" },
    field(`Type "${name}" to confirm`, h("input", { name: "confirm", autocomplete: "off" })),
    h("button", { type: "submit", class: "danger" }, "Delete topic"));
  submitForm(delForm, delOut, async (fd) => {
    if (fd.get("confirm") !== name) throw new Error(`Type the topic's exact name (${name}) to delete it.`);
    if (!window.confirm(`Delete topic ${name} and all its records?`)) return null;
    await api("DELETE", `/ui/api/topics/${enc(name)}?confirm=${enc(name)}`);
    location.hash = "#/topics";
    return null;
  });
  const r = d.rates || {};
  body.replaceChildren(
    h("div", { class: "row" }, h("span", {}, `id ${d.id}`),
      h("span", {}, `records/s in ${fmtRate(r.recordsInPerSec)}`), h("span", {}, `bytes/s in ${fmtBytes(r.bytesInPerSec)}`),
      h("span", {}, `records/s out ${fmtRate(r.recordsOutPerSec)}`), h("span", {}, `bytes/s out ${fmtBytes(r.bytesOutPerSec)}`),
      may(d, "read") ? h("a", { href: `#/messages?topic=${enc(name)}` }, "Browse messages") : ""),
    h("h2", {}, "Partitions"), parts,
    h("h2", {}, "Configs"),
    may(d, "describeConfigs") ? table(["Name", "Value", ""], cfgRows, { label: "Configs" })
      : h("p", { class: "muted" }, "You may not read this topic's configs."),
    ...(may(d, "alterConfigs") ? [cfgForm, cfgOut] : []),
    ...(may(d, "alter") ? [h("h2", {}, "Add partitions"), addForm, addOut] : []),
    ...(may(d, "delete") ? [h("h2", {}, "Delete"), delForm, delOut] : []));
}

// ---- Messages -------------------------------------------------------------------------
function decodeB64(b64) {
  if (b64 === null || b64 === undefined) return null;
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return bytes;
}
function show(bytes, how) {
  if (bytes === null) return h("span", { class: "muted" }, "null");
  if (how === "hex") {
    const parts = [];
    for (let i = 0; i < bytes.length; i++) parts.push(bytes[i].toString(16).padStart(2, "0"));
    return h("pre", { class: "value" }, parts.join(" ").replace(/((?:\S\S ){16})/g, "$1\n"));
  }
  const text = new TextDecoder("utf-8", { fatal: false }).decode(bytes);
  if (how === "json") {
    try { return h("pre", { class: "value" }, JSON.stringify(JSON.parse(text), null, 2)); } catch (e) {
      return h("pre", { class: "value", title: "not JSON: shown as text" }, text);
    }
  }
  return h("pre", { class: "value" }, text);
}

async function pageMessages(params) {
  setTitle("Messages");
  let topics = [];
  const out = h("div", {});
  const mine = visit;
  try { topics = (await api("GET", "/ui/api/topics")).topics; } catch (e) {
    message(out, `Cannot list topics: ${e.message}`, "error");
  }
  if (mine !== visit) return;  // the user has moved on: leave their new page alone
  const topic = params.get("topic") || (topics[0] && topics[0].name) || "";
  const sel = h("select", { name: "topic", id: "msg-topic" },
    topics.map((t) => h("option", { value: t.name, selected: t.name === topic }, t.name)));
  const modeSel = h("select", { name: "mode", id: "msg-mode" },
    h("option", { value: "newest" }, "Newest N"), h("option", { value: "offset" }, "From an offset"),
    h("option", { value: "timestamp" }, "From a time"));
  modeSel.value = params.get("mode") || "newest";
  const form = h("form", { "aria-label": "Browse records", id: "browse" },
    field("Topic", sel),
    field("Partition", h("input", { name: "partition", id: "msg-partition", inputmode: "numeric", value: params.get("partition") || "0", size: 6 })),
    field("Read", modeSel),
    field("Count", h("input", { name: "count", inputmode: "numeric", value: params.get("count") || "20", size: 6 })),
    field("Offset", h("input", { name: "offset", inputmode: "numeric", value: params.get("offset") || "", size: 10 })),
    field("Time (local)", h("input", { name: "time", type: "datetime-local", step: "1" })),
    h("fieldset", {}, h("legend", {}, "Show as"),
      ["text", "json", "hex"].map((f) => h("label", {}, h("input", { type: "radio", name: "format", value: f, checked: f === (params.get("format") || "text") }), ` ${f === "json" ? "JSON" : f}`))),
    h("button", { type: "submit" }, "Read"));
  const results = h("div", { id: "records" });
  let last = null;
  const renderRecords = () => {
    if (!last) return;
    const how = new FormData(form).get("format");
    results.replaceChildren(
      h("p", { class: "muted" }, `${last.topic}-${last.partition}: log start ${fmtInt(last.logStartOffset)}, high watermark ${fmtInt(last.highWatermark)}; ${last.records.length} record(s) from offset ${fmtInt(last.from)}.`, last.note ? ` ${last.note}` : ""),
      table([{ label: "Offset", num: 1 }, "Time", "Key", "Value", "Headers"],
        last.records.map((r) => h("tr", { "data-offset": r.offset },
          td(String(r.offset), 1), td(new Date(r.timestamp).toLocaleString()), td(show(decodeB64(r.key), how)),
          td(show(decodeB64(r.value), how)),
          td(r.headers.length ? h("ul", {}, r.headers.map(([k, v]) => h("li", {}, `${k}: `, h("code", {}, show(decodeB64(v), how === "hex" ? "hex" : "text").textContent)))) : h("span", { class: "muted" }, "–")))),
        { label: "Records", empty: "No records in that range." }));
  };
  form.addEventListener("change", (ev) => { if (ev.target.name === "format") renderRecords(); });
  submitForm(form, out, async (fd) => {
    const q = new URLSearchParams({ partition: fd.get("partition").trim(), mode: fd.get("mode"), count: fd.get("count").trim() });
    if (fd.get("mode") === "offset") q.set("offset", fd.get("offset").trim());
    if (fd.get("mode") === "timestamp") {
      const t = fd.get("time");
      if (!t) throw new Error("pick a time to read from");
      q.set("timestamp", String(new Date(t).getTime()));
    }
    if (!fd.get("topic")) throw new Error("there is no topic to read");
    last = await api("GET", `/ui/api/topics/${enc(fd.get("topic"))}/records?${q}`);
    renderRecords();
    return null;
  });
  const pout = h("div", {});
  const pform = h("form", { "aria-label": "Produce a test record", id: "produce", class: "stack" },
    h("div", { class: "row" },
      field("Partition (empty: by key)", h("input", { name: "partition", id: "produce-partition", inputmode: "numeric", size: 6 })),
      field("Key", h("input", { name: "key", id: "produce-key", autocomplete: "off" }))),
    field("Value", h("textarea", { name: "value", id: "produce-value", rows: 3 })),
    field("Headers (name: value per line)", h("textarea", { name: "headers", rows: 2 })),
    h("div", {}, h("button", { type: "submit" }, "Produce to the selected topic")));
  submitForm(pform, pout, async (fd) => {
    const t = sel.value;
    if (!t) throw new Error("there is no topic to write to");
    const headers = Object.entries(parseLines(fd.get("headers"), ":"));
    const r = await api("POST", `/ui/api/topics/${enc(t)}/records`, {
      partition: fd.get("partition").trim(), key: fd.get("key"), value: fd.get("value"), headers,
    });
    return `Written to ${r.topic}-${r.partition} at offset ${r.offset}.`;
  });
  const pbox = h("div", {});
  const browseButton = form.querySelector("button[type=submit]");
  const rights = () => {  // the selected topic's rights: the forms it allows
    const t = topics.find((x) => x.name === sel.value);
    browseButton.disabled = !may(t, "read");
    browseButton.title = may(t, "read") ? "" : "you may not read this topic";
    pbox.replaceChildren(...(may(t, "write") ? [h("h2", {}, "Produce a test record"), pform, pout]
      : [h("p", { class: "muted", id: "produce-refused" }, "You may not write to this topic.")]));
  };
  sel.addEventListener("change", rights);
  rights();
  main.replaceChildren(h("h1", {}, "Messages"), form, out, results, pbox);
  if (topic && topics.length && !browseButton.disabled) form.requestSubmit();
}

// ---- Consumer groups ------------------------------------------------------------------
function groupCls(state) {
  const s = String(state).toUpperCase();
  return s === "STABLE" ? "ok" : s === "EMPTY" ? "" : s === "DEAD" ? "bad" : "warn";
}
async function pageGroups() {
  setTitle("Consumer groups");
  const list = h("div", {});
  main.replaceChildren(h("h1", {}, "Consumer groups"), list);
  const render = async () => {
    let d;
    try { d = await api("GET", "/ui/api/groups"); } catch (e) {
      message(list, `Cannot list groups: ${e.message}`, "error");
      return;
    }
    list.replaceChildren(table(["Group", "State", { label: "Members", num: 1 }, { label: "Total lag", num: 1 }],
      d.groups.map((g) => h("tr", { "data-group": g.id },
        td(h("a", { href: `#/groups/${enc(g.id)}` }, g.id)), td(badge(g.state, groupCls(g.state))),
        td(fmtInt(g.members), 1), td(fmtInt(g.lag), 1))),
      { label: "Consumer groups", empty: "No consumer groups." }),
    h("p", { class: "muted" }, "Lag is sampled every 5 s while the console is open."));
  };
  await render();
  every(5000, render);
}

async function pageGroup(gid) {
  setTitle(`Group ${gid}`);
  const status = h("div", {});
  const body = h("div", {});
  const lagBox = h("div", {});
  const rout = h("div", {});
  let topicsOfGroup = [];
  const rhead = h("h2", {}, "Reset offsets");
  const rnote = h("p", { class: "muted" }, "Only a group with no members (EMPTY) can be reset.");
  const rform = h("form", { "aria-label": "Reset offsets", id: "reset-offsets" },
    field("Topic", h("select", { name: "topic", id: "reset-topic" })),
    field("To", h("select", { name: "to" }, ["earliest", "latest", "offset", "timestamp"].map((v) => h("option", { value: v }, v)))),
    field("Offset, or time in ms since the epoch", h("input", { name: "value", inputmode: "numeric", size: 16 })),
    h("button", { type: "submit" }, "Reset offsets"));
  submitForm(rform, rout, async (fd) => {
    const r = await api("POST", `/ui/api/groups/${enc(gid)}/reset`, { topic: fd.get("topic"), to: fd.get("to"), value: fd.get("value") });
    await render();
    return `Reset: ${r.offsets.map((o) => `${r.topic}-${o.partition} → ${o.offset}`).join(", ")}.`;
  });
  main.replaceChildren(h("h1", {}, "Group ", h("span", { class: "muted" }, gid)), status, body,
    h("h2", {}, "Lag over time"), lagBox,
    rhead, rnote, rform, rout);
  const render = async () => {
    let d;
    try { d = await api("GET", `/ui/api/groups/${enc(gid)}`); } catch (e) {
      message(status, `Cannot read group ${gid}: ${e.message}`, "error");
      return;
    }
    message(status, "");
    rform.hidden = rhead.hidden = rnote.hidden = !may(d, "read");
    const topics = [...new Set(d.partitions.map((p) => p.topic))];
    if (topics.join() !== topicsOfGroup.join()) {
      topicsOfGroup = topics;
      rform.querySelector("#reset-topic").replaceChildren(...topics.map((t) => h("option", { value: t }, t)));
    }
    body.replaceChildren(
      h("div", { class: "row" }, h("span", {}, "State ", badge(d.state, groupCls(d.state))),
        h("span", {}, `epoch ${d.epoch}`), h("span", {}, `assignor ${d.assignor || "–"}`),
        h("span", { id: "total-lag" }, `total lag ${fmtInt(d.totalLag)}`)),
      d.hiddenTopics ? h("p", { class: "muted", id: "hidden-topics" }, `This group also reads ${d.hiddenTopics} topic(s) you may not Describe: their offsets and lag are not shown, nor is the lag history.`) : "",
      h("h2", {}, "Members"),
      table(["Member", "Client", "Host", "Assigned partitions"], d.members.map((m) => h("tr", {},
        td(m.instanceId ? `${m.id} (${m.instanceId})` : m.id), td(m.clientId), td(m.host),
        td(m.assignment.map(([t, p]) => `${t}-${p}`).join(", ") || "none"))), { label: "Members", empty: "No members: the group is empty." }),
      h("h2", {}, "Offsets and lag"),
      table(["Partition", { label: "Committed", num: 1 }, { label: "Log end", num: 1 }, { label: "Lag", num: 1 }, "Owner"],
        d.partitions.map((p) => h("tr", {}, td(`${p.topic}-${p.partition}`), td(fmtInt(p.committed), 1),
          td(fmtInt(p.logEndOffset), 1), td(fmtInt(p.lag), 1), td(p.owner || "–"))), { label: "Offsets and lag" }));
    charts.forEach((c) => c.destroy());
    charts = [];
    const hist = d.lagHistory || [];
    lagBox.replaceChildren(chart(`Total lag of ${gid}`,
      [{ label: "lag (records)", data: hist, borderColor: PALETTE[0], backgroundColor: PALETTE[0] }], "records"));
  };
  await render();
  every(2000, render);
}

// ---- Throughput -----------------------------------------------------------------------
async function pageThroughput() {
  setTitle("Throughput");
  const body = h("div", {});
  main.replaceChildren(h("h1", {}, "Throughput ", h("span", { class: "muted" }, "· last hour, sampled every 5 s")), body);
  const render = async () => {
    let d;
    try { d = await api("GET", "/ui/api/throughput"); } catch (e) {
      message(body, `Cannot read throughput: ${e.message}`, "error");
      return;
    }
    charts.forEach((c) => c.destroy());
    charts = [];
    const sets = (group, metric) => Object.entries(group).map(([k, s], i) => ({
      label: k, data: (s[metric] || []).map((v, j) => [d.times[j], v]), borderColor: PALETTE[i % PALETTE.length], backgroundColor: PALETTE[i % PALETTE.length],
    }));
    const brokerNames = Object.fromEntries(Object.entries(d.brokers).map(([k, v]) => [`broker ${k}`, v]));
    body.replaceChildren(
      d.times.length < 2 ? h("p", { class: "muted" }, "Collecting samples: the first rates appear after two samples (about 10 s).") : "",
      Object.entries(d.unread || {}).map(([id, why]) => h("div", { class: "msg error", role: "alert" }, `Cannot read broker ${id}'s metrics: ${why}`)),
      h("h2", {}, "Per broker"),
      h("div", { class: "charts" },
        chart("Records/s in per broker", sets(brokerNames, "recordsIn"), "records/s"),
        chart("Bytes/s in per broker", sets(brokerNames, "bytesIn"), "bytes/s"),
        chart("Records/s out per broker", sets(brokerNames, "recordsOut"), "records/s"),
        chart("Bytes/s out per broker", sets(brokerNames, "bytesOut"), "bytes/s")),
      h("h2", {}, "Per topic"),
      h("div", { class: "charts" },
        chart("Records/s in per topic", sets(d.topics, "recordsIn"), "records/s"),
        chart("Bytes/s in per topic", sets(d.topics, "bytesIn"), "bytes/s"),
        chart("Records/s out per topic", sets(d.topics, "recordsOut"), "records/s"),
        chart("Bytes/s out per topic", sets(d.topics, "bytesOut"), "bytes/s")));
  };
  await render();
  every(5000, render);
}

// ---- router ---------------------------------------------------------------------------
async function route() {
  const mine = ++visit;
  delete document.body.dataset.page;  // set again once this page is built
  clearTimeout(timer);
  charts.forEach((c) => c.destroy());
  charts = [];
  const hash = location.hash.replace(/^#\/?/, "");
  const [pathPart, query] = hash.split("?");
  const parts = pathPart.split("/").filter(Boolean).map(decodeURIComponent);
  const page = parts[0] || "cluster";
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.page === page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const params = new URLSearchParams(query || "");
  try {
    if (page === "cluster") await pageCluster();
    else if (page === "topics" && parts[1]) await pageTopic(parts[1]);
    else if (page === "topics") await pageTopics();
    else if (page === "messages") await pageMessages(params);
    else if (page === "groups" && parts[1]) await pageGroup(parts[1]);
    else if (page === "groups") await pageGroups();
    else if (page === "throughput") await pageThroughput();
    else main.replaceChildren(h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/cluster" }, "Go to the cluster")));
  } catch (e) {
    main.replaceChildren(h("div", { class: "msg error", role: "alert" }, e.message));
  }
  if (mine !== visit) return;
  live.textContent = `${document.title} loaded`;
  document.body.dataset.page = page;
}

window.addEventListener("hashchange", () => { route(); main.focus(); });
whoami().then(route);
