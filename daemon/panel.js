/*
 * pmgcm cluster panel (daemon/panel.h): polls /status on the same origin
 * and shows it. Every value from the daemon goes into the page through
 * textContent or a DOM attribute, never as markup. Read only: it only
 * ever sends GET /status.
 */
'use strict';
(function () {
  const REFRESH_MS = 2000;
  const TIMEOUT_MS = 5000;
  const HISTORY_MS = 10 * 60 * 1000; /* the lag chart's window */
  const STATE_NAME = {A: 'alive', S: 'alive, database not in sync',
                      '?': 'suspect', D: 'dead', L: 'left'};
  const history = new Map(); /* node name -> [[t_ms, lag_seconds], ...] */
  let lastOk = 0;
  let lastError = '';

  function $(id) { return document.getElementById(id); }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function cell(tr, label, text, cls) {
    const td = el('td', text, cls);
    td.setAttribute('data-label', label);
    tr.appendChild(td);
    return td;
  }

  function dash(v) { return v === null || v === undefined ? '-' : v; }

  function two(n) { return (n < 10 ? '0' : '') + n; }

  /* as pmgcm status prints it: "N day(s) HH:MM" */
  function uptime(s) {
    if (typeof s !== 'number' || s < 0) return '-';
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24,
          m = Math.floor(s / 60) % 60;
    return (d > 0 ? d + (d === 1 ? ' day ' : ' days ') : '') +
           two(h) + ':' + two(m);
  }

  function clock(unix) {
    const t = new Date(unix * 1000);
    return two(t.getHours()) + ':' + two(t.getMinutes()) + ':' +
           two(t.getSeconds());
  }

  function stateClass(st) {
    return 'st-' + (st === '?' ? 'Q' : /^[A-Z]$/.test(st) ? st : 'X');
  }

  function renderNodes(s) {
    const tbody = $('nodes').tBodies[0];
    const rows = [];
    for (const m of s.members || []) {
      const tr = document.createElement('tr');
      const st = String(m.state || '?');
      tr.className = stateClass(st) + (m.self ? ' self' : '');
      tr.setAttribute('data-name', String(m.name));
      tr.setAttribute('data-state', st);
      tr.setAttribute('data-role', String(m.role));
      const tdSt = cell(tr, 'State', st, 'state');
      tdSt.title = STATE_NAME[st] || st;
      const nm = cell(tr, 'Name', m.name, 'name');
      nm.title = 'node id ' + String(m.id || '');
      cell(tr, 'CID', m.cid, 'num');
      cell(tr, 'IP address', m.ip, 'ip');
      cell(tr, 'Role', m.role, 'role');
      cell(tr, 'Uptime', uptime(m.uptime), 'num');
      cell(tr, 'Load', typeof m.load === 'number' ? m.load.toFixed(2) : '-',
           'num');
      cell(tr, 'Mem', m.mem === null ? '-' : m.mem + ' %', 'num');
      cell(tr, 'Disk', m.disk === null ? '-' : m.disk + ' %', 'num');
      cell(tr, 'Reason', m.reason || '', 'reason');
      rows.push(tr);
    }
    tbody.replaceChildren(...rows);
  }

  function renderJoin(s) {
    const sec = $('join-section');
    if (typeof s.join_command === 'string' && s.join_command !== '') {
      $('join').textContent = s.join_command;
      sec.hidden = false;
    } else {
      $('join').textContent = '';
      sec.hidden = true;
    }
  }

  function origins(db) {
    const parts = [];
    for (const o of db.origins || [])
      parts.push('cid ' + o.cid + ': ' + o.behind + ' behind (at ' + o.seq + ')');
    return parts.join('; ');
  }

  function renderRepl(s, nowMs) {
    const withDb = (s.members || []).filter(function (m) { return m.db; });
    const table = $('repl');
    $('repl-none').hidden = withDb.length > 0;
    table.hidden = withDb.length === 0;
    const rows = [];
    for (const m of withDb) {
      const db = m.db;
      const tr = document.createElement('tr');
      tr.setAttribute('data-name', String(m.name));
      cell(tr, 'Name', m.name, 'name');
      cell(tr, 'Database', db.state, 'dbstate');
      cell(tr, 'Position', db.epoch + ':' + db.seq, 'num');
      cell(tr, 'Lag (changes)', dash(db.lag_changes), 'num');
      cell(tr, 'Lag (s)', typeof db.lag_seconds === 'number'
           ? db.lag_seconds.toFixed(1) : '-', 'num');
      cell(tr, 'Per origin', origins(db), 'origins');
      cell(tr, 'Divergence waiting',
           db.kept ? dash(db.kept.divergence) : '-', 'num');
      cell(tr, 'Reason', db.reason || '', 'reason');
      rows.push(tr);
      const h = history.get(String(m.name)) || [];
      if (typeof db.lag_seconds === 'number') h.push([nowMs, db.lag_seconds]);
      history.set(String(m.name), h);
    }
    table.tBodies[0].replaceChildren(...rows);
    for (const [name, h] of history) {
      while (h.length > 0 && h[0][0] < nowMs - HISTORY_MS) h.shift();
      if (h.length === 0) history.delete(name);
    }
    /* this node's own snapshot while it loads one */
    const st = s.store, snap = st && st.snapshot;
    const box = $('snapshot');
    if (st && st.state === 'loading' && snap) {
      const bar = $('snap-bar');
      const est = snap.est_rows > 0 ? snap.est_rows : 0;
      bar.max = est > 0 ? est : 1;
      bar.value = est > 0 ? Math.min(snap.rows, est) : 0;
      $('snap-text').textContent = snap.rows + ' of ~' + est + ' rows, ' +
        snap.tables_done + ' of ' + snap.tables + ' tables, ' +
        Math.round((snap.elapsed_ms || 0) / 1000) + ' s';
      box.hidden = false;
    } else {
      box.hidden = true;
    }
    renderChart(nowMs);
  }

  const SVGNS = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVGNS, tag);
    for (const k in attrs) e.setAttribute(k, String(attrs[k]));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  function renderChart(nowMs) {
    const box = $('chart');
    if (history.size === 0) {
      box.replaceChildren();
      $('chart-fig').hidden = true;
      return;
    }
    $('chart-fig').hidden = false;
    const W = 600, H = 160, L = 40, R = 90, T = 8, B = 20;
    let max = 1, first = nowMs;
    for (const h of history.values())
      for (const p of h) {
        if (p[1] > max) max = p[1];
        if (p[0] < first) first = p[0];
      }
    max = Math.ceil(max);
    /* the span the page has seen: 1 to 10 minutes */
    const span = Math.min(HISTORY_MS, Math.max(60000, nowMs - first));
    const x = function (t) { return L + (W - L - R) * (1 - (nowMs - t) / span); };
    const y = function (v) { return T + (H - T - B) * (1 - v / max); };
    const root = svg('svg', {viewBox: '0 0 ' + W + ' ' + H, role: 'img',
                             'aria-label': 'replication lag in seconds, last 10 minutes'});
    root.appendChild(svg('line', {x1: L, y1: y(0), x2: W - R, y2: y(0), class: 'axis'}));
    root.appendChild(svg('line', {x1: L, y1: T, x2: L, y2: y(0), class: 'axis'}));
    root.appendChild(svg('line', {x1: L, y1: y(max), x2: W - R, y2: y(max), class: 'grid'}));
    root.appendChild(svg('text', {x: 2, y: y(max) + 4}, max + ' s'));
    root.appendChild(svg('text', {x: 2, y: y(0) + 4}, '0 s'));
    root.appendChild(svg('text', {x: L, y: H - 4},
                         '-' + Math.round(span / 60000) + ' min'));
    root.appendChild(svg('text', {x: W - R - 20, y: H - 4}, 'now'));
    let i = 0;
    for (const [name, h] of history) {
      const pts = h.map(function (p) { return x(p[0]).toFixed(1) + ',' + y(p[1]).toFixed(1); });
      if (pts.length === 1) pts.push((x(h[0][0]) + 1).toFixed(1) + ',' + y(h[0][1]).toFixed(1));
      const cls = 's' + (i % 6);
      const line = svg('polyline', {points: pts.join(' '), class: cls});
      line.appendChild(svg('title', {}, name));
      root.appendChild(line);
      const last = h[h.length - 1];
      const label = name.length > 12 ? name.slice(0, 11) + '…' : name;
      root.appendChild(svg('text', {x: W - R + 4, y: Math.min(H - B, y(last[1]) + 4 + 12 * (i % 3))},
                           label + ' ' + last[1].toFixed(1) + ' s'));
      i++;
    }
    box.replaceChildren(root);
  }

  function renderEvents(s) {
    const list = $('events');
    const ev = Array.isArray(s.events) ? s.events.slice().reverse() : [];
    $('events-none').hidden = ev.length > 0;
    const items = [];
    for (const e of ev) {
      const li = document.createElement('li');
      li.setAttribute('data-kind', String(e.kind));
      const t = el('time', clock(e.time));
      t.setAttribute('datetime', new Date(e.time * 1000).toISOString());
      li.appendChild(t);
      li.appendChild(el('span', e.kind,
                        'kind k-' + String(e.kind).replace(/[^a-z]+/g, '-')));
      li.appendChild(el('span', (e.name || '') +
                        (e.cid ? ' (cid ' + e.cid + ')' : ''), 'who'));
      li.appendChild(el('span', e.detail || '', 'detail'));
      items.push(li);
    }
    list.replaceChildren(...items);
  }

  function renderSummary(s) {
    const parts = [];
    const c = s.cluster;
    if (c) parts.push('cluster ' + String(c.cluster_id).slice(0, 8) +
                      ', config epoch ' + c.epoch + ' version ' + c.version);
    else parts.push('not in a cluster');
    const n = (s.members || []).length;
    const alive = (s.members || []).filter(function (m) {
      return m.state === 'A' || m.state === 'S'; }).length;
    parts.push(alive + ' of ' + n + ' nodes alive');
    parts.push('this node ' + (s.ready ? 'ready' : 'NOT ready') +
               (s.draining ? ', draining' : ''));
    $('summary').textContent = parts.join(' · ');
    $('self').textContent = s.node ? '— view of ' + s.node : '';
    document.title = (s.node ? s.node + ': ' : '') + 'pmgcm cluster panel';
  }

  function setConn() {
    const p = $('conn');
    if (lastError === '') {
      p.className = '';
      p.textContent = 'live: updated ' + clock(lastOk / 1000) +
                      ' (every ' + REFRESH_MS / 1000 + ' s)';
    } else {
      p.className = 'bad';
      p.textContent = 'NOT live: ' + lastError +
        (lastOk ? '; showing what /status said at ' + clock(lastOk / 1000) : '');
    }
  }

  function render(s) {
    const now = Date.now();
    renderSummary(s);
    renderNodes(s);
    renderJoin(s);
    renderRepl(s, now);
    renderEvents(s);
  }

  async function poll() {
    const ctl = new AbortController();
    const timer = setTimeout(function () { ctl.abort(); }, TIMEOUT_MS);
    try {
      const r = await fetch('/status', {cache: 'no-store', credentials: 'same-origin',
                                        signal: ctl.signal,
                                        headers: {Accept: 'application/json'}});
      if (!r.ok) throw new Error('/status answered ' + r.status);
      const s = await r.json();
      render(s);
      lastOk = Date.now();
      lastError = '';
    } catch (e) {
      lastError = e && e.name === 'AbortError' ? 'no answer from /status'
                                               : String(e && e.message || e);
    } finally {
      clearTimeout(timer);
    }
    setConn();
    setTimeout(poll, REFRESH_MS);
  }

  poll();
})();
