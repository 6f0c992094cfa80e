// The Weft dashboard: namespaces → workloads with golden metrics (the rows of `weft stat`, from the
// server's /api/summary, which runs the same Go code), charts of their recent history (uPlot), the
// topology of who sends to which Service (SVG), each workload's mTLS share, and a live tap (server-sent
// events from /api/tap, which the server relays from weft-control's Tap API).
"use strict";

(function () {
  const params = new URLSearchParams(location.search);
  const refreshMs = Math.max(1000, Number(params.get("refresh") || 5000));
  const maxPoints = 120;
  const state = {
    namespace: params.get("namespace") || "",
    window: params.get("window") || "1m",
    history: { t: [], series: new Map() }, // name → {rps: [], success: [], p99: []}
    charts: {},
    chartNames: "",
    tap: null,
    refreshes: 0,
  };
  const $ = (sel) => document.querySelector(sel);
  const el = (tag, attrs, ...children) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
    return e;
  };

  // Formatting, as `weft stat` prints its table.
  const pct = (v) => (v == null ? "-" : (v * 100).toFixed(2) + "%");
  const num = (v, d) => (v == null ? "-" : Number(v).toFixed(d));
  const rateClass = (v) => (v == null ? "" : v >= 0.99 ? "good" : v >= 0.9 ? "warn" : "bad");

  function cell(field, value, text, cls) {
    const td = el("td", { "data-field": field, class: cls || "" }, text);
    td.dataset.value = value == null ? "" : String(value);
    return td;
  }

  function showError(msg) {
    const box = $("#error");
    box.hidden = !msg;
    box.textContent = msg || "";
  }

  async function getJSON(url) {
    const resp = await fetch(url, { headers: { Accept: "application/json" } });
    const body = await resp.json().catch(() => ({ error: resp.status + " " + resp.statusText }));
    if (!resp.ok || body.error) throw new Error(body.error || resp.status + " " + resp.statusText);
    return body;
  }

  async function refresh() {
    const q = new URLSearchParams({ window: state.window });
    if (state.namespace) q.set("namespace", state.namespace);
    let s;
    try {
      s = await getJSON("api/summary?" + q);
    } catch (err) {
      showError(String(err.message || err));
      $("#status").textContent = "no data";
      return;
    }
    showError("");
    state.namespace = s.namespace;
    renderNamespaces(s.namespaces || []);
    renderWorkloads(s);
    record(s);
    renderCharts();
    renderTopology(s);
    state.refreshes++;
    document.body.dataset.at = s.at;
    document.body.dataset.namespace = s.namespace;
    document.body.dataset.refreshes = String(state.refreshes);
    $("#status").textContent = "Prometheus " + s.prometheus + " · at " + new Date(s.at).toLocaleTimeString();
  }

  function renderNamespaces(rows) {
    const tb = $("#namespaces tbody");
    tb.replaceChildren();
    for (const r of rows) {
      const tr = el("tr", { "data-namespace": r.name, class: r.name === state.namespace ? "selected" : "",
        onclick: () => { state.namespace = r.name; resetHistory(); refresh(); } },
        el("td", {}, r.name),
        cell("success", r.success, pct(r.success), rateClass(r.success)),
        cell("rps", r.rps, num(r.rps, 2)),
        cell("latencyMsP99", r.latencyMsP99, num(r.latencyMsP99, 0)));
      tb.append(tr);
    }
  }

  function mtlsBadge(share) {
    if (share == null) return el("span", { class: "muted" }, "-");
    if (share >= 0.999) return el("span", { class: "badge good", title: "every request in the window was mutual TLS" }, "mTLS");
    if (share > 0) return el("span", { class: "badge warn", title: "part of the requests were plaintext" }, "mTLS " + (share * 100).toFixed(0) + "%");
    return el("span", { class: "badge bad", title: "no request in the window was mutual TLS" }, "plaintext");
  }

  function renderWorkloads(s) {
    $("#ns-name").textContent = s.namespace || "(none)";
    const tb = $("#workloads tbody");
    tb.replaceChildren();
    const rows = s.workloads || [];
    for (const r of rows) {
      const mt = (s.mtls || {})[r.name];
      const meshed = r.totalPods >= 0 ? r.meshedPods + "/" + r.totalPods : r.meshedPods > 0 ? "✔" : "-";
      const tapBtn = el("button", { "data-tap": r.name, onclick: () => startTap(s.namespace, r.name) }, "tap");
      const mtTd = el("td", { "data-field": "mtls" }, mtlsBadge(mt));
      mtTd.dataset.value = mt == null ? "" : String(mt);
      tb.append(el("tr", { "data-workload": r.name },
        el("td", {}, r.name),
        cell("meshed", meshed, meshed),
        mtTd,
        cell("success", r.success, pct(r.success), rateClass(r.success)),
        cell("rps", r.rps, num(r.rps, 2)),
        cell("latencyMsP50", r.latencyMsP50, num(r.latencyMsP50, 0)),
        cell("latencyMsP95", r.latencyMsP95, num(r.latencyMsP95, 0)),
        cell("latencyMsP99", r.latencyMsP99, num(r.latencyMsP99, 0)),
        cell("tcpConnections", r.tcpConnections, num(r.tcpConnections, 0)),
        el("td", {}, tapBtn)));
    }
    $("#no-traffic").hidden = rows.some((r) => r.requests > 0 || r.tcpConnections > 0);
  }

  function resetHistory() {
    state.history = { t: [], series: new Map() };
  }

  function record(s) {
    const h = state.history;
    h.t.push(Date.parse(s.at) / 1000);
    const names = new Set((s.workloads || []).map((r) => r.name));
    for (const n of names) {
      if (!h.series.has(n)) h.series.set(n, { rps: h.t.slice(1).map(() => null), success: h.t.slice(1).map(() => null), p99: h.t.slice(1).map(() => null) });
    }
    for (const [n, ser] of h.series) {
      const r = (s.workloads || []).find((w) => w.name === n);
      ser.rps.push(r ? r.rps : null);
      ser.success.push(r && r.success != null ? r.success * 100 : null);
      ser.p99.push(r ? r.latencyMsP99 : null);
    }
    if (h.t.length > maxPoints) {
      h.t.shift();
      for (const ser of h.series.values()) { ser.rps.shift(); ser.success.shift(); ser.p99.shift(); }
    }
  }

  const palette = ["#3558d4", "#1e8e3e", "#c5221f", "#c77700", "#8430ce", "#00838f", "#5f6368"];

  function renderCharts() {
    if (typeof uPlot === "undefined") return;
    const h = state.history;
    const names = [...h.series.keys()].sort();
    const key = names.join(",");
    const defs = [
      ["rps", "#chart-rps", "RPS"],
      ["success", "#chart-success", "%"],
      ["p99", "#chart-p99", "ms"],
    ];
    for (const [field, sel, unit] of defs) {
      const data = [h.t.slice(), ...names.map((n) => h.series.get(n)[field].slice())];
      const box = $(sel);
      if (state.chartNames !== key || !state.charts[field]) {
        if (state.charts[field]) state.charts[field].destroy();
        const width = Math.max(260, box.clientWidth || 300);
        state.charts[field] = new uPlot({
          width, height: 170,
          legend: { show: names.length > 0, live: false },
          scales: { x: { time: true } },
          axes: [{}, { label: unit, size: 50 }],
          series: [{}, ...names.map((n, i) => ({ label: n, stroke: palette[i % palette.length], width: 2, spanGaps: true }))],
        }, data, box);
      } else {
        state.charts[field].setData(data);
      }
    }
    state.chartNames = key;
  }

  function renderTopology(s) {
    const svg = $("#topology");
    const NS = "http://www.w3.org/2000/svg";
    const mk = (tag, attrs, text) => {
      const e = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
      if (text != null) e.textContent = text;
      return e;
    };
    svg.replaceChildren();
    const defs = mk("defs", {});
    for (const [id, color] of [["arrow-secured", "#1e8e3e"], ["arrow-plain", "#c5221f"]]) {
      const m = mk("marker", { id, viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" });
      m.append(mk("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: color }));
      defs.append(m);
    }
    svg.append(defs);
    const edges = (s.edges || []).filter((e) => e.srcNamespace === s.namespace || e.dstNamespace === s.namespace);
    const nodes = new Map();
    const add = (ns, name) => {
      const id = ns + "/" + name;
      if (!nodes.has(id)) nodes.set(id, { id, label: ns === s.namespace ? name : name + "." + ns });
      return id;
    };
    for (const w of s.workloads || []) add(w.namespace, w.name);
    for (const e of edges) { add(e.srcNamespace, e.src); add(e.dstNamespace, e.dst); }
    const list = [...nodes.values()].sort((a, b) => a.id.localeCompare(b.id));
    const W = 640, H = 320, R = Math.min(W, H) / 2 - 50;
    list.forEach((n, i) => {
      const a = (2 * Math.PI * i) / Math.max(1, list.length) - Math.PI / 2;
      n.x = W / 2 + (list.length > 1 ? R * Math.cos(a) * 1.5 : 0);
      n.y = H / 2 + (list.length > 1 ? R * Math.sin(a) : 0);
    });
    const seconds = parseWindow(s.window);
    for (const e of edges) {
      const a = nodes.get(e.srcNamespace + "/" + e.src), b = nodes.get(e.dstNamespace + "/" + e.dst);
      if (!a || !b || a === b) continue;
      const dx = b.x - a.x, dy = b.y - a.y, d = Math.hypot(dx, dy) || 1, r = 24;
      const x1 = a.x + (dx / d) * r, y1 = a.y + (dy / d) * r, x2 = b.x - (dx / d) * r, y2 = b.y - (dy / d) * r;
      const cls = e.secured ? "secured" : "plain";
      const line = mk("line", { x1, y1, x2, y2, class: "edge " + cls, "marker-end": "url(#arrow-" + cls + ")",
        "data-src": e.src, "data-dst": e.dst });
      line.append(mk("title", {}, e.src + " → " + e.dst + (e.secured ? " (mTLS: " + e.clientId + " → " + e.serverId + ")" : " (plaintext)")));
      svg.append(line);
      const rps = seconds > 0 ? e.requests / seconds : 0;
      const label = e.requests > 0 ? rps.toFixed(1) + " rps" : (e.connections || 0) + " conn";
      svg.append(mk("text", { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 5, class: "edge-label" }, label + (e.secured ? " · mTLS" : " · plaintext")));
    }
    for (const n of list) {
      const g = mk("g", { class: "node", "data-node": n.id });
      g.append(mk("circle", { cx: n.x, cy: n.y, r: 22 }));
      g.append(mk("text", { x: n.x, y: n.y + 38 }, n.label));
      svg.append(g);
    }
    if (list.length === 0) svg.append(mk("text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#6b7385" }, "no traffic"));
  }

  // shortID is a SPIFFE ID as <namespace>/<service account> (the whole ID is the cell's title).
  function shortID(id) {
    const m = /\/ns\/([^/]+)\/sa\/([^/]+)$/.exec(id || "");
    return m ? m[1] + "/" + m[2] : id || "?";
  }

  function parseWindow(w) {
    const m = /^(\d+)(s|m|h)$/.exec(w || "");
    if (!m) return 60;
    return Number(m[1]) * { s: 1, m: 60, h: 3600 }[m[2]];
  }

  function stopTap(msg) {
    if (state.tap) { state.tap.close(); state.tap = null; }
    $("#tap-stop").disabled = true;
    if (msg) $("#tap-state").textContent = msg;
  }

  function startTap(namespace, name) {
    stopTap();
    const tb = $("#tap tbody");
    tb.replaceChildren();
    const q = new URLSearchParams({ namespace, kind: "deployment", name });
    const path = $("#tap-path").value.trim(), method = $("#tap-method").value.trim();
    if (path) q.set("path", path);
    if (method) q.set("method", method);
    $("#tap-target").textContent = "deploy/" + name + " in " + namespace;
    $("#tap-state").textContent = "tapping…";
    $("#tap-stop").disabled = false;
    let count = 0;
    const es = new EventSource("api/tap?" + q);
    state.tap = es;
    es.addEventListener("tap", (m) => {
      const ev = JSON.parse(m.data);
      const req = ev.request || {}, resp = ev.response || {};
      const status = resp.status || 0;
      const tr = el("tr", { "data-tap-event": String(++count) },
        el("td", {}, ev.startTime ? new Date(ev.startTime).toLocaleTimeString() : ""),
        el("td", {}, ev.proxy || ""),
        el("td", {}, (ev.direction || "").replace("DIRECTION_", "").toLowerCase()),
        el("td", {}, req.method || ""),
        el("td", {}, req.authority || ""),
        el("td", { class: "path", title: req.path || "" }, req.path || ""),
        el("td", { class: status >= 500 ? "bad" : status >= 400 ? "warn" : "good" }, String(status) + (resp.weftError ? " (" + resp.weftError + ")" : "")),
        el("td", {}, ev.latency ? (parseFloat(ev.latency) * 1000).toFixed(1) : ""),
        el("td", {}, ev.tls ? "✔" : "-"),
        el("td", { class: "ids", title: ev.tls ? (ev.clientId || "?") + " → " + (ev.serverId || "?") : "" },
          ev.tls ? shortID(ev.clientId) + " → " + shortID(ev.serverId) : ""));
      tb.prepend(tr);
      while (tb.children.length > 200) tb.lastChild.remove();
      $("#tap-state").textContent = count + " requests";
    });
    es.addEventListener("notice", (m) => { $("#tap-state").textContent = m.data; });
    es.addEventListener("end", (m) => stopTap(m.data || "tap ended"));
    es.onerror = () => stopTap("tap ended (" + count + " requests)");
  }

  $("#tap-stop").addEventListener("click", () => stopTap("stopped"));
  $("#window").value = state.window;
  $("#window").addEventListener("change", (e) => { state.window = e.target.value; resetHistory(); refresh(); });
  refresh();
  setInterval(refresh, refreshMs);
})();
