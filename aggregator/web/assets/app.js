// heartbeat dashboard: a live view of the aggregator's nodes.
//
// Data arrives by server-sent events (api/events): one "snapshot" of every
// node, then "delta"s. Every node-supplied string (nickname, head, miner)
// reaches the page through textContent or an attribute value, never as
// markup: there is no innerHTML in this file. Format characters in them
// (bidi overrides, zero-width ones) are shown, not obeyed (visible).
"use strict";

(function () {
  const PAGE_SIZE = 100;
  const STATES = ["up", "suspect", "down", "left", "joining", "unknown"];
  // Sort order of states: the ones that need attention first.
  const STATE_RANK = { down: 0, suspect: 1, unknown: 2, joining: 3, up: 4, left: 5 };
  const PALETTE = ["#2f6fde", "#8e44ad", "#d35400", "#16a085", "#c0392b", "#7f8c8d", "#b7950b", "#2c3e50"];
  const COLORS = { up: "#1a7f37", suspect: "#b35900", down: "#c62828", left: "#667085", joining: "#2f6fde", unknown: "#8a6d3b" };

  const nodes = new Map(); // peer -> node
  let summary = null;
  let startedMs = 0;
  let serverNowMs = 0; // the server's now at the last event...
  let receivedAt = 0; // ...and performance.now() when it arrived
  let hasHistory = false;
  let lastSeenResMs = 0; // the server sends a newer last-seen only past this
  let groups = []; // head groups of Up nodes, largest first
  let groupOf = new Map(); // group key -> group

  const view = { key: "state", dir: 1, text: "", state: "", group: "", page: 0 };

  const $ = (id) => document.getElementById(id);
  // visible shows Unicode format characters (category Cf: bidi overrides
  // and isolates, zero-width joiners and spaces) as ⟨U+202E⟩: obeyed, a
  // nickname with U+202E would show "mirrored" as "derorrim", and a
  // zero-width space would make two nicknames look alike.
  const FORMAT = /\p{Cf}/gu;
  const visible = (s) => typeof s === "string" ?
    s.replace(FORMAT, (c) => "⟨U+" + c.codePointAt(0).toString(16).toUpperCase().padStart(4, "0") + "⟩") : s;
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };

  function now() {
    return serverNowMs + (performance.now() - receivedAt);
  }

  function dur(ms) {
    if (!(ms >= 0)) ms = 0;
    let s = Math.floor(ms / 1000);
    if (s < 60) return s + "s";
    let m = Math.floor(s / 60); s %= 60;
    if (m < 60) return m + "m " + s + "s";
    let h = Math.floor(m / 60); m %= 60;
    if (h < 48) return h + "h " + m + "m";
    const d = Math.floor(h / 24); h %= 24;
    return d + "d " + h + "h";
  }

  function shortPeer(p) {
    // Ed25519 ids all start "12D3KooW": the tail tells them apart.
    return p.length > 14 ? p.slice(0, 4) + "…" + p.slice(-8) : p;
  }

  function groupKey(n) {
    return n.height + "\u0000" + n.head;
  }

  function groupLabel(i) {
    let s = "";
    i++;
    while (i > 0) {
      const r = (i - 1) % 26;
      s = String.fromCharCode(65 + r) + s;
      i = Math.floor((i - 1) / 26);
    }
    return s;
  }

  // ---- live connection ----

  let es = null;
  let retryMs = 1000;
  let connects = 0; // snapshots received: one per (re)connection

  function setConn(status, text) {
    const c = $("conn");
    c.dataset.status = status;
    c.textContent = text;
  }

  function connect() {
    es = new EventSource("api/events");
    es.addEventListener("snapshot", (m) => {
      const ev = JSON.parse(m.data);
      nodes.clear();
      apply(ev);
      retryMs = 1000;
      setConn("live", "live");
      connects++;
      $("conn").dataset.connects = String(connects);
    });
    es.addEventListener("delta", (m) => apply(JSON.parse(m.data)));
    es.onerror = () => {
      setConn("offline", "offline: reconnecting…");
      if (es.readyState === EventSource.CLOSED) {
        // The browser gives up after a non-200 answer (503 past the
        // subscriber bound): retry by hand, backing off.
        es.close();
        setTimeout(connect, retryMs);
        retryMs = Math.min(retryMs * 2, 15000);
      }
    };
  }

  function apply(ev) {
    serverNowMs = ev.now_ms;
    receivedAt = performance.now();
    startedMs = ev.started_ms;
    summary = ev.summary;
    const hadHistory = hasHistory;
    hasHistory = ev.history;
    lastSeenResMs = ev.last_seen_res_ms;
    for (const n of ev.nodes) {
      n.nickname = visible(n.nickname);
      n.head = visible(n.head);
      n.miner = visible(n.miner);
      nodes.set(n.peer, n);
    }
    if (ev.removed) for (const p of ev.removed) nodes.delete(p);
    regroup();
    schedule();
    if (openPeer && nodes.has(openPeer)) renderDetailFields();
    // Opened from a link (#node=…) before the first event said whether
    // there is a history source: load it now.
    if (openPeer && hasHistory && !hadHistory) loadHistory(openPeer);
  }

  function regroup() {
    const m = new Map();
    for (const n of nodes.values()) {
      if (n.state !== "up") continue;
      const k = groupKey(n);
      let g = m.get(k);
      if (!g) { g = { key: k, head: n.head, height: n.height, count: 0 }; m.set(k, g); }
      g.count++;
    }
    groups = Array.from(m.values()).sort((a, b) =>
      b.count - a.count || b.height - a.height || (a.head < b.head ? -1 : a.head > b.head ? 1 : 0));
    groups.forEach((g, i) => {
      g.label = groupLabel(i);
      g.color = PALETTE[Math.min(i, PALETTE.length - 1)];
    });
    groupOf = m;
  }

  // ---- rendering ----

  let pending = false;
  function schedule() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; render(); });
  }

  function render() {
    renderSummary();
    renderForks();
    renderTable();
  }

  function renderSummary() {
    if (!summary) return;
    const st = summary.states || {};
    $("sum-nodes").textContent = summary.nodes;
    for (const s of STATES) $("sum-" + s).textContent = st[s] || 0;
    $("sum-consensus").textContent = summary.in_consensus;
    $("sum-dispute").textContent = summary.in_dispute;
    $("sum-height").textContent = summary.in_consensus > 0 ? summary.consensus_height : "–";
    $("disrupted").hidden = summary.disrupted !== true;
    $("uptime").textContent = dur(now() - startedMs);
    document.title = "heartbeat: " + (st.up || 0) + " up, " + ((st.suspect || 0) + (st.down || 0)) + " not";
  }

  function renderForks() {
    const bar = $("forkbar"), legend = $("forklegend");
    bar.replaceChildren();
    legend.replaceChildren();
    const total = groups.reduce((a, g) => a + g.count, 0);
    groups.slice(0, 12).forEach((g, i) => {
      const seg = el("button");
      seg.type = "button";
      seg.style.flexGrow = String(g.count);
      seg.style.background = g.color;
      seg.title = g.label + ": " + g.count + " nodes at height " + g.height;
      seg.addEventListener("click", () => setGroup(g.key));
      bar.appendChild(seg);

      const item = el("button");
      item.type = "button";
      item.dataset.group = g.label;
      const sw = el("span", "swatch");
      sw.style.background = g.color;
      item.appendChild(sw);
      item.appendChild(document.createTextNode(
        g.label + " · " + g.height + " · " + abbrev(g.head, 24) + " · " + g.count + "/" + total +
        (i === 0 ? " (consensus)" : "")));
      item.title = g.head;
      item.addEventListener("click", () => setGroup(g.key));
      legend.appendChild(item);
    });
    if (groups.length > 12) legend.appendChild(el("span", "unknown", "+" + (groups.length - 12) + " more"));
    if (groups.length === 0) legend.appendChild(el("span", "unknown", "no Up node"));
  }

  function abbrev(s, n) {
    return s.length > n ? s.slice(0, n - 1) + "…" : s;
  }

  function setGroup(key) {
    view.group = key;
    view.page = 0;
    const g = groupOf.get(key);
    $("group-clear").hidden = !key;
    $("group-name").textContent = g ? g.label + " @ " + g.height : "";
    schedule();
  }

  function matches(n) {
    if (view.state && n.state !== view.state) return false;
    if (view.group && (n.state !== "up" || groupKey(n) !== view.group)) return false;
    if (view.text) {
      const t = view.text;
      if (n.nickname.toLowerCase().indexOf(t) < 0 && n.peer.toLowerCase().indexOf(t) < 0 &&
          n.head.toLowerCase().indexOf(t) < 0) return false;
    }
    return true;
  }

  function sortValue(n) {
    switch (view.key) {
      case "nickname": return n.nickname.toLowerCase();
      case "peer": return n.peer;
      case "state": return STATE_RANK[n.state] !== undefined ? STATE_RANK[n.state] : 9;
      case "height": return n.height;
      case "group": { const g = groupOf.get(groupKey(n)); return g && n.state === "up" ? g.label.length * 1000 + g.label.charCodeAt(0) : 1e9; }
      case "last_seen": return n.last_seen_ms;
      case "rtt": return n.rtt_ms < 0 ? Infinity : n.rtt_ms;
      case "uptime": return n.uptime_24h < 0 ? Infinity : n.uptime_24h;
    }
    return 0;
  }

  function renderTable() {
    const list = [];
    for (const n of nodes.values()) if (matches(n)) list.push(n);
    const dir = view.dir;
    const keyed = list.map((n) => [sortValue(n), n]);
    keyed.sort((a, b) => (a[0] < b[0] ? -dir : a[0] > b[0] ? dir :
      (a[1].nickname < b[1].nickname ? -1 : a[1].nickname > b[1].nickname ? 1 : (a[1].peer < b[1].peer ? -1 : 1))));
    const pages = Math.max(1, Math.ceil(keyed.length / PAGE_SIZE));
    if (view.page >= pages) view.page = pages - 1;
    const start = view.page * PAGE_SIZE;
    const t = now();
    const body = $("rows");
    const frag = document.createDocumentFragment();
    for (const [, n] of keyed.slice(start, start + PAGE_SIZE)) frag.appendChild(row(n, t));
    if (keyed.length === 0) {
      const tr = el("tr");
      const td = el("td", "empty", nodes.size === 0 ? "no nodes yet" : "no node matches the filter");
      td.colSpan = 8;
      tr.appendChild(td);
      frag.appendChild(tr);
    }
    body.replaceChildren(frag);
    $("count").textContent = keyed.length + " of " + nodes.size + " nodes";
    $("page").textContent = "page " + (view.page + 1) + " of " + pages;
    $("prev").disabled = view.page === 0;
    $("next").disabled = view.page >= pages - 1;
    for (const th of document.querySelectorAll("#nodes th")) {
      if (th.dataset.key === view.key) th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    }
  }

  function row(n, t) {
    const tr = el("tr");
    tr.dataset.peer = n.peer;
    tr.dataset.state = n.state;
    tr.appendChild(el("td", "nick", n.nickname || "—"));
    const peer = el("td", "peer", shortPeer(n.peer));
    peer.title = n.peer;
    tr.appendChild(peer);

    const st = el("td", "st");
    st.appendChild(el("span", "state " + (COLORS[n.state] ? n.state : ""), n.state));
    st.appendChild(el("span", "since", dur(t - n.since_ms)));
    if (n.flags) for (const f of n.flags) st.appendChild(el("span", "flag", f.replace(/_/g, " ")));
    tr.appendChild(st);

    tr.appendChild(el("td", "num height", String(n.height)));

    const gtd = el("td", "opt");
    const g = groupOf.get(groupKey(n));
    if (g && n.head) {
      const chip = el("span", "group", g.label + " " + abbrev(n.head, 18));
      chip.style.borderColor = g.color;
      chip.style.borderLeftWidth = "4px";
      chip.title = n.head;
      gtd.appendChild(chip);
    } else if (n.head) {
      const chip = el("span", "group unknown", abbrev(n.head, 20));
      chip.title = n.head;
      gtd.appendChild(chip);
    }
    tr.appendChild(gtd);

    tr.appendChild(el("td", "opt", lastSeen(n, t)));
    tr.appendChild(n.rtt_ms >= 0 ? el("td", "num opt", n.rtt_ms.toFixed(1) + " ms") : el("td", "num opt unknown", "–"));
    tr.appendChild(n.uptime_24h >= 0 ? el("td", "num opt", (100 * n.uptime_24h).toFixed(1) + "%") : el("td", "num opt unknown", "–"));
    return tr;
  }

  // lastSeen: a steady node's last-seen reaches the page at most once per
  // resolution, so an age below it reads "< resolution", not a number
  // that only looks precise.
  function lastSeen(n, t) {
    if (!n.last_seen_ms) return "never";
    const age = t - n.last_seen_ms;
    if (n.state === "up" && age < lastSeenResMs) return "< " + dur(lastSeenResMs) + " ago";
    return dur(age) + " ago";
  }

  // ---- per-node view ----

  let openPeer = "";
  let historyReq = 0;

  function openDetail(peer) {
    openPeer = peer;
    $("detail").hidden = false;
    renderDetailFields();
    loadHistory(peer);
  }

  function closeDetail() {
    openPeer = "";
    historyReq++;
    $("detail").hidden = true;
    if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  }

  function renderDetailFields() {
    const n = nodes.get(openPeer);
    $("d-title").textContent = n ? (n.nickname || shortPeer(n.peer)) : shortPeer(openPeer);
    const dl = $("d-fields");
    dl.replaceChildren();
    const add = (k, v) => { dl.appendChild(el("dt", "", k)); dl.appendChild(el("dd", "", v)); };
    add("peer id", openPeer);
    if (!n) { add("state", "not tracked"); return; }
    const t = now();
    add("state", n.state + " for " + dur(t - n.since_ms));
    add("height", String(n.height));
    add("head", n.head || "—");
    if (n.period_ms > 0) add("beat period", (n.period_ms / 1000).toFixed(1) + " s (learned)");
    if (n.flags && n.flags.length) add("flags", n.flags.join(", ").replace(/_/g, " "));
    if (n.miner) add("miner", n.miner);
    add("last seen", n.last_seen_ms ? new Date(n.last_seen_ms).toISOString() : "never");
  }

  function loadHistory(peer) {
    const req = ++historyReq;
    $("d-timeline").replaceChildren();
    $("d-flips").replaceChildren();
    $("d-heights").replaceChildren();
    $("d-nohistory").hidden = true;
    if (!hasHistory) { $("d-nohistory").hidden = false; return; }
    fetch("api/history/" + encodeURIComponent(peer), { headers: { Accept: "application/json" } })
      .then((r) => (r.ok ? r.json() : null))
      .then((h) => {
        if (req !== historyReq) return;
        if (!h || (h.flips.length === 0 && h.heights.length === 0)) { $("d-nohistory").hidden = false; return; }
        renderHistory(h);
      })
      .catch(() => { if (req === historyReq) $("d-nohistory").hidden = false; });
  }

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const k in attrs) e.setAttribute(k, String(attrs[k]));
    return e;
  }

  function renderHistory(h) {
    const t1 = now();
    // The axis spans the data (at least the last hour), up to now.
    let t0 = t1 - 3600 * 1000;
    if (h.flips.length && h.flips[0].at_ms < t0) t0 = h.flips[0].at_ms;
    if (h.heights.length && h.heights[0].at_ms < t0) t0 = h.heights[0].at_ms;
    const W = 500;
    const x = (ms) => Math.max(0, Math.min(W, ((ms - t0) / Math.max(1, t1 - t0)) * W));

    // Timeline: one coloured band per state between flips.
    const tl = svg("svg", { viewBox: "0 0 " + W + " 30", role: "img", "aria-label": "state timeline" });
    const flips = h.flips;
    for (let i = 0; i < flips.length; i++) {
      const a = flips[i].at_ms, b = i + 1 < flips.length ? flips[i + 1].at_ms : t1;
      tl.appendChild(svg("rect", { x: x(a), y: 2, width: Math.max(1, x(b) - x(a)), height: 16, fill: COLORS[flips[i].to] || "#999" }));
    }
    const lbl = svg("text", { x: 0, y: 29, "font-size": 9, fill: "#667085" });
    lbl.textContent = new Date(t0).toISOString().slice(0, 16).replace("T", " ");
    tl.appendChild(lbl);
    const lbr = svg("text", { x: W, y: 29, "font-size": 9, fill: "#667085", "text-anchor": "end" });
    lbr.textContent = "now";
    tl.appendChild(lbr);
    $("d-timeline").appendChild(tl);

    const ol = $("d-flips");
    for (let i = flips.length - 1; i >= 0; i--) {
      const f = flips[i];
      const li = el("li", "flip");
      li.dataset.to = f.to;
      li.textContent = new Date(f.at_ms).toISOString().replace("T", " ").slice(0, 19) + "  " +
        f.from + " → " + f.to + (f.reason ? " (" + f.reason + ")" : "");
      ol.appendChild(li);
    }

    // Height chart.
    const hs = h.heights;
    if (hs.length) {
      let lo = hs[0].height, hi = hs[0].height;
      for (const s of hs) { if (s.height < lo) lo = s.height; if (s.height > hi) hi = s.height; }
      if (hi === lo) hi = lo + 1;
      const H = 120;
      const y = (v) => 10 + (1 - (v - lo) / (hi - lo)) * (H - 20);
      const ch = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "height chart" });
      ch.appendChild(svg("polyline", {
        points: hs.map((s) => x(s.at_ms).toFixed(1) + "," + y(s.height).toFixed(1)).join(" "),
        fill: "none", stroke: "#2f6fde", "stroke-width": 1.5,
      }));
      const top = svg("text", { x: 2, y: 9, "font-size": 9, fill: "#667085" });
      top.textContent = String(hi);
      ch.appendChild(top);
      const bot = svg("text", { x: 2, y: H - 1, "font-size": 9, fill: "#667085" });
      bot.textContent = String(lo);
      ch.appendChild(bot);
      const from = svg("text", { x: 60, y: H - 1, "font-size": 9, fill: "#667085" });
      from.textContent = new Date(t0).toISOString().slice(0, 16).replace("T", " ");
      ch.appendChild(from);
      const end = svg("text", { x: W, y: H - 1, "font-size": 9, fill: "#667085", "text-anchor": "end" });
      end.textContent = "now";
      ch.appendChild(end);
      $("d-heights").appendChild(ch);
    }
  }

  function fromHash() {
    const m = /^#node=(.+)$/.exec(location.hash);
    if (m) openDetail(decodeURIComponent(m[1]));
    else if (openPeer) closeDetail();
  }

  // ---- wiring ----

  function init() {
    $("filter").addEventListener("input", (e) => { view.text = e.target.value.trim().toLowerCase(); view.page = 0; schedule(); });
    $("state-filter").addEventListener("change", (e) => { view.state = e.target.value; view.page = 0; schedule(); });
    $("group-clear").addEventListener("click", () => setGroup(""));
    $("prev").addEventListener("click", () => { view.page = Math.max(0, view.page - 1); schedule(); });
    $("next").addEventListener("click", () => { view.page++; schedule(); });
    for (const th of document.querySelectorAll("#nodes th")) {
      th.querySelector("button").addEventListener("click", () => {
        if (view.key === th.dataset.key) view.dir = -view.dir;
        else { view.key = th.dataset.key; view.dir = 1; }
        schedule();
      });
    }
    $("rows").addEventListener("click", (e) => {
      const tr = e.target.closest("tr[data-peer]");
      if (tr) location.hash = "node=" + encodeURIComponent(tr.dataset.peer);
    });
    $("d-close").addEventListener("click", closeDetail);
    window.addEventListener("hashchange", fromHash);
    // Times in state and last-seen age move on their own.
    setInterval(() => { if (summary) schedule(); }, 1000);
    connect();
    fromHash();
  }

  init();
})();
