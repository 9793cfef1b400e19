// The Squall dashboard: plain JavaScript, no build step. Everything it shows comes from
// this node's HTTP server (same origin): the REST API under api/v1/ and the live `stats`
// events of api/v1/events (one a second: the view, its members and this node's metrics).
// Charts are drawn by uPlot (assets/vendor/, see VERSIONS).
'use strict';

(() => {
  const TOKEN_KEY = 'squall.token';
  /** Points kept per chart (one a second). */
  const HISTORY = 300;
  /** Keys shown at most in the pool browser. */
  const KEYS_SHOWN = 1000;
  /** Bytes of a value shown at most in the preview. */
  const PREVIEW_BYTES = 64 * 1024;
  const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#d97706', '#7c3aed', '#0891b2',
    '#db2777', '#4b5563', '#65a30d', '#9333ea'];

  const $ = (sel) => document.querySelector(sel);

  const state = {
    tab: 'overview',
    nodeId: null,
    viewId: null,
    members: [],
    views: [],
    node: null,
    pools: [],
    /** The latest metrics: key -> value, and the same parsed. */
    metrics: new Map(),
    parsed: [],
    /** Per-second rates of counters between the last two events: key -> rate. */
    rates: new Map(),
    prev: null,
    udls: [],
    dfgsText: null,
    dfgs: [],
    browse: null,
    browseGen: 0,
    lastEvent: 0,
    streamAbort: null,
    /** A request was refused for want of a (valid) token: ask nothing more until one is given. */
    authBlocked: false,
    started: false,
  };

  // ----- small helpers ------------------------------------------------------------------

  /** An element: h('td', {class: 'x', dataset: {pool: '/a'}}, 'text', child, ...). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'dataset') Object.assign(el.dataset, v);
      else if (k === 'class') el.className = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }

  const SVG_NS = 'http://www.w3.org/2000/svg';
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === 'dataset') Object.assign(el.dataset, v);
      else el.setAttribute(k, String(v));
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null) continue;
      el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  function fmtNum(n, digits = 1) {
    if (n === null || n === undefined || Number.isNaN(n)) return '–';
    const a = Math.abs(n);
    if (a >= 1e9) return (n / 1e9).toFixed(digits) + 'G';
    if (a >= 1e6) return (n / 1e6).toFixed(digits) + 'M';
    if (a >= 1e4) return (n / 1e3).toFixed(digits) + 'k';
    if (Number.isInteger(n)) return String(n);
    return n.toFixed(a < 10 ? 2 : digits);
  }

  function fmtBytes(n) {
    if (n === null || n === undefined || Number.isNaN(n)) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    let v = n;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return (i === 0 ? String(v) : v.toFixed(1)) + ' ' + units[i];
  }

  function fmtSeconds(sec) {
    if (sec === null || sec === undefined || Number.isNaN(sec)) return '–';
    if (sec >= 1) return sec.toFixed(2) + ' s';
    if (sec >= 1e-3) return (sec * 1e3).toFixed(2) + ' ms';
    return (sec * 1e6).toFixed(0) + ' µs';
  }

  /** `view << 32 | seq` as the CLI prints it. */
  function fmtVersion(v) {
    if (v === null || v === undefined) return '–';
    const view = Math.floor(v / 4294967296);
    const seq = v - view * 4294967296;
    return `v${view}:${seq}`;
  }

  function fmtTime(ms) {
    if (!ms) return '–';
    const d = new Date(ms);
    const pad = (x, n = 2) => String(x).padStart(n, '0');
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  /** A key's path under api/v1/objects/ (each segment escaped). */
  function objectPath(key) {
    return key.replace(/^\/+/, '').split('/').map(encodeURIComponent).join('/');
  }

  const trimSlash = (p) => (p.length > 1 ? p.replace(/\/+$/, '') : p);

  function setText(sel, text) {
    const el = typeof sel === 'string' ? $(sel) : sel;
    if (el && el.textContent !== String(text)) el.textContent = String(text);
  }

  // ----- the REST API -------------------------------------------------------------------

  function token() {
    try {
      return localStorage.getItem(TOKEN_KEY) || '';
    } catch (_) {
      return '';
    }
  }

  function authHeaders(extra) {
    const hdrs = Object.assign({}, extra || {});
    const t = token();
    if (t) hdrs.Authorization = 'Bearer ' + t;
    return hdrs;
  }

  /** A request that never throws: {ok, status, data} or {ok: false, status, error}. */
  async function api(path, opts = {}) {
    if (state.authBlocked) return { ok: false, status: 401, error: { code: 'unauthenticated', message: 'a token is needed' } };
    let res;
    try {
      res = await fetch(path, Object.assign({}, opts, {
        headers: authHeaders(opts.headers),
        cache: 'no-store',
      }));
    } catch (e) {
      return { ok: false, status: 0, error: { code: 'network', message: String((e && e.message) || e) } };
    }
    let body = null;
    try {
      const type = res.headers.get('content-type') || '';
      body = type.includes('json') ? await res.json() : await res.text();
    } catch (_) {
      body = null;
    }
    if (res.status === 401) {
      state.authBlocked = true;
      askToken(body && body.message);
    }
    if (!res.ok) {
      const error = body && typeof body === 'object' && body.code
        ? body
        : { code: 'http_' + res.status, message: typeof body === 'string' && body ? body : res.statusText };
      return { ok: false, status: res.status, error };
    }
    return { ok: true, status: res.status, data: body };
  }

  // ----- the token prompt ---------------------------------------------------------------

  function askToken(reason) {
    const dialog = $('#token-dialog');
    if (!dialog.hidden) return;
    setText('#token-reason', reason || 'This cluster requires a token.');
    $('#token-input').value = token();
    dialog.hidden = false;
    $('#token-input').focus();
  }

  function tokenChanged() {
    state.authBlocked = false;
    if (state.streamAbort) state.streamAbort.abort();
    if (state.started) refreshAll();
  }

  function setupToken() {
    $('#token-button').addEventListener('click', () => askToken('Bearer token for this cluster (empty: none).'));
    $('#token-form').addEventListener('submit', (e) => {
      e.preventDefault();
      try {
        const t = $('#token-input').value.trim();
        if (t) localStorage.setItem(TOKEN_KEY, t);
        else localStorage.removeItem(TOKEN_KEY);
      } catch (_) { /* storage disabled: nothing to keep */ }
      $('#token-dialog').hidden = true;
      tokenChanged();
    });
    $('#token-clear').addEventListener('click', () => {
      try {
        localStorage.removeItem(TOKEN_KEY);
      } catch (_) { /* nothing kept */ }
      $('#token-input').value = '';
    });
    $('#token-cancel').addEventListener('click', () => {
      $('#token-dialog').hidden = true;
    });
  }

  // ----- metrics ------------------------------------------------------------------------

  /** `name{a=b,c=d}:count` -> {name, labels, part}. */
  function parseMetricKey(key) {
    const m = /^([^{]+?)(?:\{(.*)\})?(?::(count|sum))?$/.exec(key);
    if (!m) return { name: key, labels: {}, part: '' };
    const labels = {};
    if (m[2]) {
      for (const pair of m[2].split(/,(?=[A-Za-z_][A-Za-z0-9_]*=)/)) {
        const eq = pair.indexOf('=');
        if (eq > 0) labels[pair.slice(0, eq)] = pair.slice(eq + 1);
      }
    }
    return { name: m[1], labels, part: m[3] || '' };
  }

  /** The series named `name` (and histogram part), with their values and rates. */
  function series(name, part = '') {
    return state.parsed.filter((p) => p.name === name && p.part === part);
  }

  function value(name, labels = {}) {
    let total = null;
    for (const p of series(name)) {
      if (Object.entries(labels).every(([k, v]) => p.labels[k] === v)) total = (total || 0) + p.value;
    }
    return total;
  }

  function rate(name, labels = {}, part = '') {
    let total = 0;
    for (const p of series(name, part)) {
      if (Object.entries(labels).every(([k, v]) => p.labels[k] === v)) total += p.rate || 0;
    }
    return total;
  }

  function takeMetrics(map, t) {
    const prev = state.prev;
    const parsed = [];
    const metrics = new Map(Object.entries(map || {}));
    for (const [key, v] of metrics) {
      const p = parseMetricKey(key);
      p.key = key;
      p.value = v;
      p.rate = null;
      if (prev && prev.metrics.has(key) && t > prev.t) {
        const d = v - prev.metrics.get(key);
        p.rate = d >= 0 ? d / (t - prev.t) : 0;
      }
      parsed.push(p);
    }
    state.prev = { t, metrics };
    state.metrics = metrics;
    state.parsed = parsed;
  }

  // ----- charts (uPlot) -----------------------------------------------------------------

  const charts = [];

  class LiveChart {
    constructor(el, { unit = '', height = 220 } = {}) {
      this.el = el;
      this.unit = unit;
      this.height = height;
      this.xs = [];
      this.ys = new Map();
      this.plot = null;
      charts.push(this);
    }

    width() {
      return Math.max(240, Math.floor(this.el.clientWidth || (this.el.parentElement && this.el.parentElement.clientWidth) || 600));
    }

    /** Adds a point at `t` (seconds) for each label in `values` (a Map). */
    push(t, values) {
      let changed = false;
      for (const label of values.keys()) {
        if (!this.ys.has(label)) {
          this.ys.set(label, this.xs.map(() => null));
          changed = true;
        }
      }
      this.xs.push(t);
      for (const [label, arr] of this.ys) arr.push(values.has(label) ? values.get(label) : null);
      if (this.xs.length > HISTORY) {
        const cut = this.xs.length - HISTORY;
        this.xs.splice(0, cut);
        for (const arr of this.ys.values()) arr.splice(0, cut);
      }
      if (changed || !this.plot) this.build();
      else if (this.visible()) this.plot.setData(this.data());
      else this.stale = true;
    }

    data() {
      return [this.xs, ...this.ys.values()];
    }

    visible() {
      return this.el.offsetParent !== null;
    }

    build() {
      if (typeof window.uPlot !== 'function') {
        this.el.textContent = 'charting library not loaded';
        return;
      }
      if (this.plot) this.plot.destroy();
      this.el.textContent = '';
      const unit = this.unit;
      const fmt = unit === 'B' ? fmtBytes : (v) => fmtNum(v);
      const opts = {
        width: this.width(),
        height: this.height,
        cursor: { drag: { x: false, y: false } },
        scales: {
          // At least the last minute, so a young chart's axis is not in milliseconds.
          x: { time: true, range: (u, min, max) => [Math.min(min, max - 60), max] },
          y: { range: (u, min, max) => [0, max > 0 ? max * 1.15 : 1] },
        },
        axes: [
          { stroke: '#475569', grid: { stroke: '#e2e8f0' } },
          {
            stroke: '#475569',
            grid: { stroke: '#e2e8f0' },
            size: 64,
            values: (u, vals) => vals.map((v) => fmt(v)),
          },
        ],
        series: [
          { label: 'time', value: (u, v) => (v === null || v === undefined ? '–' : fmtTime(v * 1000).slice(11)) },
          ...[...this.ys.keys()].map((label, i) => ({
            label,
            stroke: COLORS[i % COLORS.length],
            width: 1.5,
            points: { show: false },
            value: (u, v) => (v === null || v === undefined ? '–' : fmt(v) + (unit && unit !== 'B' ? ' ' + unit : '')),
          })),
        ],
      };
      this.plot = new window.uPlot(opts, this.data(), this.el);
      this.stale = false;
      this.el.dataset.series = String(this.ys.size);
    }

    /** After the chart's section is shown or the window resized. */
    refresh() {
      if (!this.plot || !this.visible()) return;
      const w = this.width();
      if (w !== this.plot.width) this.plot.setSize({ width: w, height: this.height });
      if (this.stale) {
        this.plot.setData(this.data());
        this.stale = false;
      }
    }
  }

  let opsChart;
  let requestsChart;
  let lagChart;
  let poolsChart;
  let gpuChart;

  function setupCharts() {
    opsChart = new LiveChart($('#chart-ops'), { unit: '/s' });
    requestsChart = new LiveChart($('#chart-requests'), { unit: '/s' });
    lagChart = new LiveChart($('#chart-lag'), { unit: 'msgs' });
    poolsChart = new LiveChart($('#chart-pools'), { unit: '' });
    gpuChart = new LiveChart($('#chart-gpu'), { unit: '' });
    let timer = null;
    window.addEventListener('resize', () => {
      clearTimeout(timer);
      timer = setTimeout(() => charts.forEach((c) => c.refresh()), 100);
    });
  }

  function pushCharts(t) {
    const ops = new Map([['all shards', rate('squall_shard_delivered_total')]]);
    for (const p of series('squall_shard_delivered_total')) {
      ops.set(`subgroup ${p.labels.subgroup} shard ${p.labels.shard}`, p.rate || 0);
    }
    opsChart.push(t, ops);

    const reqs = new Map([['all', rate('squall_client_requests_total')]]);
    for (const p of series('squall_client_requests_total')) reqs.set(p.labels.op || '?', p.rate || 0);
    requestsChart.push(t, reqs);

    const lag = new Map();
    for (const p of series('squall_persistence_lag')) lag.set(`subgroup ${p.labels.subgroup} shard ${p.labels.shard}`, p.value);
    lagChart.push(t, lag);

    const pools = new Map();
    for (const p of series('squall_pool_objects')) pools.set(p.labels.pool || '?', p.value);
    poolsChart.push(t, pools);

    const gpuUsed = series('squall_gpu_cache_used_bytes');
    if (gpuUsed.length) {
      const m = new Map();
      for (const p of gpuUsed) m.set(`${p.labels.cache} (${p.labels.device}) used bytes`, p.value);
      gpuChart.push(t, m);
    }
  }

  // ----- live events --------------------------------------------------------------------

  function setConn(which, text) {
    const el = $('#conn-status');
    el.dataset.state = which;
    el.className = 'pill ' + ({ live: 'pill-ok', connecting: 'pill-wait', auth: 'pill-warn' }[which] || 'pill-bad');
    setText(el, text || which);
  }

  /** Reads api/v1/events with fetch (EventSource cannot send a bearer token). */
  async function runEvents() {
    for (;;) {
      const abort = new AbortController();
      state.streamAbort = abort;
      if (state.authBlocked) {
        setConn('auth', 'token needed');
        await waitAbortOr(abort.signal, 3600 * 1000);
        continue;
      }
      setConn('connecting');
      let res;
      try {
        res = await fetch('api/v1/events', {
          headers: authHeaders({ Accept: 'text/event-stream' }),
          cache: 'no-store',
          signal: abort.signal,
        });
      } catch (_) {
        setConn('down', 'node unreachable');
        await sleep(2000);
        continue;
      }
      if (res.status === 401) {
        state.authBlocked = true;
        askToken('This cluster requires a token.');
        continue;
      }
      if (!res.ok || !res.body) {
        setConn('down', 'events: HTTP ' + res.status);
        await sleep(2000);
        continue;
      }
      setConn('live');
      try {
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let buf = '';
        for (;;) {
          const { value: chunk, done } = await reader.read();
          if (done) break;
          buf += decoder.decode(chunk, { stream: true });
          let cut;
          while ((cut = buf.search(/\r?\n\r?\n/)) >= 0) {
            const block = buf.slice(0, cut);
            buf = buf.slice(cut).replace(/^\r?\n\r?\n/, '');
            handleBlock(block);
          }
        }
      } catch (_) { /* the stream broke or was aborted: reconnect */ }
      setConn('down', 'reconnecting');
      await sleep(1000);
    }
  }

  function waitAbortOr(signal, ms) {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      signal.addEventListener('abort', () => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  function handleBlock(block) {
    let event = 'message';
    const data = [];
    for (const line of block.split(/\r?\n/)) {
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let val = colon < 0 ? '' : line.slice(colon + 1);
      if (val.startsWith(' ')) val = val.slice(1);
      if (field === 'event') event = val;
      else if (field === 'data') data.push(val);
    }
    if (event !== 'stats' || !data.length) return;
    let snap;
    try {
      snap = JSON.parse(data.join('\n'));
    } catch (_) {
      return;
    }
    onStats(snap);
  }

  function onStats(snap) {
    const t = Date.now() / 1000;
    state.lastEvent = t;
    takeMetrics(snap.metrics, t);
    if (typeof snap.node === 'number') state.nodeId = snap.node;
    if (Array.isArray(snap.members)) state.members = snap.members;
    if (typeof snap.view_id === 'number' && snap.view_id !== state.viewId) {
      state.viewId = snap.view_id;
      refreshViews();
      refreshPools();
    }
    refreshNode();
    pushCharts(t);
    renderOverview();
    renderShards();
    renderPoolCells();
    renderDfgStats();
    renderGpu();
    setText('#last-update', 'updated ' + fmtTime(t * 1000).slice(11));
  }

  // ----- overview -----------------------------------------------------------------------

  /** `n3.1` -> {node: 3, incarnation: 1}. */
  function parseMember(name) {
    const m = /^n(\d+)\.(\d+)$/.exec(name);
    return m ? { node: Number(m[1]), incarnation: Number(m[2]) } : null;
  }

  function renderOverview() {
    setText('#this-node', state.nodeId === null ? 'node ?' : 'node ' + state.nodeId);
    setText('#member-count', state.members.length || '–');
    setText('#view-id', state.viewId === null ? '–' : state.viewId);
    const mem = value('squall_process_resident_memory_bytes');
    setText('#node-memory', mem === null ? '–' : fmtBytes(mem));
    // Free space on this node's data disk, and the cluster's storage alarms (nodes under
    // their disk reserve: writes they would log are refused with storage_full).
    const free = value('squall_disk_free_bytes');
    const alarms = value('squall_storage_alarms') || 0;
    const disk = $('#node-disk');
    setText('#node-disk', (free === null ? '–' : fmtBytes(free))
      + (alarms > 0 ? ` · ${alarms} storage alarm${alarms > 1 ? 's' : ''}: writes refused` : ''));
    if (disk) disk.classList.toggle('bad', alarms > 0);

    // Every node seen in a view this node installed, and the current members.
    const nodes = new Map();
    for (const v of state.views) {
      for (const name of v.members || []) {
        const m = parseMember(name);
        if (m) nodes.set(m.node, { node: m.node, incarnation: m.incarnation, health: 'out', addr: '' });
      }
      for (const [list, health] of [[v.failed, 'failed'], [v.left, 'left']]) {
        for (const name of list || []) {
          const m = parseMember(name);
          if (m && nodes.has(m.node) && nodes.get(m.node).incarnation === m.incarnation) nodes.get(m.node).health = health;
        }
      }
    }
    state.members.forEach((m, rank) => {
      nodes.set(m.node, { node: m.node, incarnation: m.incarnation, health: 'up', addr: m.client_addr, rank });
    });
    setText('#node-count', nodes.size || '–');
    const here = state.members.some((m) => m.node === state.nodeId);
    const health = $('#node-health');
    setText(health, state.nodeId === null ? '–' : here ? 'serving, in view' : 'serving, not in view');
    health.dataset.health = here ? 'up' : 'out';

    const body = $('#members-table tbody');
    const rows = [...nodes.values()].sort((a, b) => a.node - b.node).map((n) => {
      const pill = { up: 'pill-ok', failed: 'pill-bad', left: 'pill-wait', out: 'pill-warn' }[n.health];
      const label = { up: 'in view', failed: 'failed', left: 'left', out: 'not in view' }[n.health];
      return h('tr', { dataset: { node: String(n.node), health: n.health } },
        h('td', {}, 'n' + n.node + (n.node === state.nodeId ? ' (this node)' : '')),
        h('td', {}, n.incarnation),
        h('td', {}, n.rank === undefined ? '–' : n.rank + (n.rank === 0 ? ' (leader)' : '')),
        h('td', {}, n.addr || '–'),
        h('td', {}, h('span', { class: 'pill ' + pill }, label)));
    });
    replaceRows(body, rows);
  }

  /** Replaces a tbody's rows only when their text changed (keeps selection and hover). */
  function replaceRows(body, rows) {
    const sig = rows.map((r) => r.outerHTML).join('');
    if (body.dataset.sig === sig) return;
    body.dataset.sig = sig;
    body.replaceChildren(...rows);
  }

  function renderViews() {
    const body = $('#views-table tbody');
    const names = (l) => (l && l.length ? l.join(', ') : '–');
    const rows = [...state.views].reverse().map((v) => h('tr', {
      dataset: { viewId: String(v.id) },
      class: v.id === state.viewId ? 'current' : null,
    },
    h('td', {}, v.id),
    h('td', {}, fmtTime(v.installed_unix_ms)),
    h('td', {}, names(v.members)),
    h('td', {}, names(v.joined)),
    h('td', { class: v.failed && v.failed.length ? 'bad' : null }, names(v.failed)),
    h('td', {}, names(v.left))));
    replaceRows(body, rows);
  }

  let viewsBusy = false;
  async function refreshViews() {
    if (viewsBusy) return;
    viewsBusy = true;
    const r = await api('api/v1/views');
    viewsBusy = false;
    if (!r.ok || !Array.isArray(r.data)) return;
    state.views = r.data;
    if (state.viewId === null && state.views.length) state.viewId = state.views[state.views.length - 1].id;
    renderViews();
    renderOverview();
  }

  async function refreshMembers() {
    const r = await api('api/v1/members');
    if (!r.ok || !r.data) return;
    if (!state.lastEvent) {
      state.members = r.data.members || [];
      state.viewId = r.data.view_id;
      renderOverview();
    }
  }

  // ----- shards -------------------------------------------------------------------------

  let nodeBusy = false;
  async function refreshNode() {
    if (nodeBusy) return;
    nodeBusy = true;
    const r = await api('api/v1/node');
    nodeBusy = false;
    if (!r.ok || !r.data) return;
    state.node = r.data;
    if (state.nodeId === null) state.nodeId = r.data.node;
    renderShards();
    renderWan();
  }

  // ----- WAN ----------------------------------------------------------------------------

  function renderWan() {
    const node = state.node || {};
    setText('#wan-site', node.site
      ? `This cluster is site ${node.site} (${node.site_kind || 'unknown kind'}).`
      : 'This cluster names no site.');
    const links = node.wan || [];
    const rows = links.map((l) => h('tr', { dataset: { site: l.site, state: l.state } },
      h('td', {}, l.site),
      h('td', {}, h('span', { class: 'link link-' + l.state }, l.state)),
      h('td', {}, fmtNum(l.outbox_entries, 0)),
      h('td', {}, fmtBytes(l.outbox_bytes)),
      h('td', {}, l.oldest_age_s === null || l.oldest_age_s === undefined ? '–' : fmtNum(l.oldest_age_s) + ' s'),
      h('td', {}, fmtNum(l.forwarded, 0)),
      h('td', {}, fmtNum(l.failures, 0)),
      h('td', {}, l.last_round_trip_ms === null || l.last_round_trip_ms === undefined ? '–' : fmtNum(l.last_round_trip_ms) + ' ms'),
      h('td', { class: 'mono' }, l.last_error || '')));
    if (!rows.length) {
      rows.push(h('tr', {}, h('td', { colspan: '9' }, 'no remote clusters configured')));
    }
    replaceRows($('#wan-table tbody'), rows);
  }

  function renderShards() {
    const shards = (state.node && state.node.shards) || [];
    const rows = shards.map((sh) => {
      const labels = { subgroup: String(sh.subgroup), shard: String(sh.shard) };
      const delivered = sh.delivered_version ?? value('squall_shard_version', labels);
      const persisted = sh.persisted_version ?? value('squall_persisted_version', { subgroup: labels.subgroup });
      const lag = value('squall_persistence_lag', labels);
      const members = sh.members || [];
      return h('tr', { dataset: { shard: `${sh.subgroup}/${sh.shard}`, kind: sh.kind } },
        h('td', {}, sh.subgroup),
        h('td', {}, sh.shard),
        h('td', {}, h('span', { class: 'kind kind-' + sh.kind }, sh.kind)),
        h('td', { class: 'members' }, members.map((n) => 'n' + n).join(', ') || '–'),
        h('td', { class: 'leader' }, members.length ? 'n' + members[0] : '–'),
        h('td', {}, sh.held_here ? 'yes' : 'no'),
        h('td', { class: 'mono' }, sh.held_here ? fmtVersion(delivered) : '–'),
        h('td', { class: 'mono' }, fmtVersion(persisted)),
        h('td', {}, sh.held_here && lag !== null ? fmtNum(lag) : '–'),
        h('td', {}, sh.objects ?? '–'),
        h('td', {}, sh.held_here ? fmtNum(rate('squall_shard_delivered_total', labels)) : '–'));
    });
    replaceRows($('#shards-table tbody'), rows);
  }

  // ----- pools --------------------------------------------------------------------------

  let poolsBusy = false;
  async function refreshPools() {
    if (poolsBusy) return;
    poolsBusy = true;
    const r = await api('api/v1/pools');
    poolsBusy = false;
    if (!r.ok || !Array.isArray(r.data)) return;
    state.pools = r.data.slice().sort((a, b) => a.path.localeCompare(b.path));
    renderPools();
  }

  function renderPools() {
    const rows = state.pools.map((p) => h('tr', {
      dataset: { pool: p.path, kind: p.kind },
      class: state.browse && state.browse.pool === p.path ? 'selected' : null,
      tabindex: '0',
    },
    h('td', { class: 'mono' }, p.path),
    h('td', {}, h('span', { class: 'kind kind-' + p.kind }, p.kind)),
    h('td', {}, p.subgroup ?? '–'),
    h('td', {}, p.shards ? p.shards : 'all'),
    h('td', { class: 'pool-objects', 'data-testid': 'pool-objects' }, '–'),
    h('td', { class: 'pool-bytes', 'data-testid': 'pool-bytes' }, '–'),
    h('td', { class: 'pool-rate' }, '–')));
    replaceRows($('#pools-table tbody'), rows);
    renderPoolCells();
  }

  function renderPoolCells() {
    for (const tr of document.querySelectorAll('#pools-table tbody tr')) {
      const pool = tr.dataset.pool;
      const objects = value('squall_pool_objects', { pool });
      const bytes = value('squall_pool_bytes', { pool });
      setText(tr.querySelector('.pool-objects'), objects === null ? '–' : objects);
      setText(tr.querySelector('.pool-bytes'), bytes === null ? '–' : fmtBytes(bytes));
      setText(tr.querySelector('.pool-rate'), fmtNum(rate('squall_pool_ops_total', { pool })));
    }
  }

  function setupPools() {
    const table = $('#pools-table tbody');
    const pick = (e) => {
      const tr = e.target.closest('tr[data-pool]');
      if (tr) openPool(tr.dataset.pool);
    };
    table.addEventListener('click', pick);
    table.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') pick(e);
    });
    $('#pools-refresh').addEventListener('click', refreshPools);
    $('#keys-refresh').addEventListener('click', () => listKeys());
    $('#key-filter').addEventListener('keydown', (e) => {
      if (e.key === 'Enter') listKeys();
    });
    const slider = $('#time-slider');
    slider.addEventListener('input', () => showSliderTime());
    slider.addEventListener('change', () => {
      const b = state.browse;
      if (!b) return;
      const ms = Number(slider.value);
      b.timeUs = ms >= Number(slider.max) ? null : ms * 1000;
      showSliderTime();
      listKeys();
    });
    $('#time-now').addEventListener('click', () => {
      const b = state.browse;
      if (!b) return;
      const now = Date.now();
      slider.max = String(now);
      slider.value = String(now);
      b.timeUs = null;
      showSliderTime();
      listKeys();
    });
    $('#key-list').addEventListener('click', (e) => {
      const li = e.target.closest('li[data-key]');
      if (li) preview(li.dataset.key);
    });
  }

  function showSliderTime() {
    const slider = $('#time-slider');
    const ms = Number(slider.value);
    setText('#time-label', ms >= Number(slider.max) ? 'now' : fmtTime(ms));
  }

  function openPool(path) {
    const pool = state.pools.find((p) => p.path === path);
    if (!pool) return;
    state.browseGen += 1;
    state.browse = { pool: path, kind: pool.kind, timeUs: null, keys: [], selected: null, gen: state.browseGen };
    for (const tr of document.querySelectorAll('#pools-table tbody tr')) {
      tr.classList.toggle('selected', tr.dataset.pool === path);
    }
    $('#pool-browser').hidden = false;
    $('#pool-browser').dataset.pool = path;
    setText('#browse-pool', path);
    $('#key-filter').value = path;
    $('#object-preview').replaceChildren(h('p', { class: 'hint' }, 'Select a key.'));
    const travel = $('#time-travel');
    travel.hidden = pool.kind !== 'persistent';
    if (!travel.hidden) {
      const slider = $('#time-slider');
      const now = Date.now();
      slider.min = String(now - 1000);
      slider.max = String(now);
      slider.value = String(now);
      slider.dataset.earliest = '';
      setText('#time-travel-start', 'searching…');
      showSliderTime();
      findEarliest(state.browse);
    }
    listKeys();
  }

  async function listKeys() {
    const b = state.browse;
    if (!b) return;
    const gen = b.gen;
    const prefix = $('#key-filter').value.trim() || b.pool;
    const q = new URLSearchParams({ prefix });
    if (b.timeUs !== null) q.set('time_us', String(b.timeUs));
    const list = $('#key-list');
    list.dataset.loading = 'true';
    const r = await api('api/v1/keys?' + q.toString());
    if (!state.browse || state.browse.gen !== gen) return;
    list.dataset.loading = 'false';
    if (!r.ok) {
      list.replaceChildren(h('li', { class: 'error' }, `${r.error.code}: ${r.error.message}`));
      setText('#key-count', '');
      return;
    }
    const keys = (r.data && r.data.keys) || [];
    b.keys = keys;
    const when = b.timeUs === null ? '' : ' as of ' + fmtTime(b.timeUs / 1000);
    setText('#key-count', `${keys.length} key${keys.length === 1 ? '' : 's'}${when}` +
      (keys.length > KEYS_SHOWN ? ` (first ${KEYS_SHOWN} shown)` : ''));
    $('#key-count').dataset.count = String(keys.length);
    list.replaceChildren(...keys.slice(0, KEYS_SHOWN).map((k) => h('li', {
      dataset: { key: k },
      class: k === b.selected ? 'selected' : null,
    }, k)));
    if (!keys.length) list.replaceChildren(h('li', { class: 'hint' }, 'no keys' + when));
    if (b.selected) {
      if (keys.includes(b.selected)) preview(b.selected);
      else {
        $('#object-preview').replaceChildren(h('p', { class: 'hint', 'data-testid': 'preview-absent' },
          `${b.selected} has no value${when || ' now'}.`));
      }
    }
  }

  async function preview(key) {
    const b = state.browse;
    if (!b) return;
    b.selected = key;
    for (const li of document.querySelectorAll('#key-list li[data-key]')) li.classList.toggle('selected', li.dataset.key === key);
    const gen = b.gen;
    const at = b.timeUs;
    const q = at === null ? '' : '?time_us=' + at;
    const r = await api('api/v1/objects/' + objectPath(key) + q);
    if (!state.browse || state.browse.gen !== gen || b.selected !== key || b.timeUs !== at) return;
    const box = $('#object-preview');
    if (!r.ok) {
      box.replaceChildren(h('p', { class: 'error' }, `${r.error.code}: ${r.error.message}`));
      return;
    }
    const o = r.data;
    let shown;
    if (typeof o.value_text === 'string') {
      shown = o.value_text.length > PREVIEW_BYTES ? o.value_text.slice(0, PREVIEW_BYTES) + '\n…' : o.value_text;
    } else {
      shown = hexDump(o.value_base64 || '');
    }
    box.replaceChildren(
      h('dl', {},
        h('dt', {}, 'Key'), h('dd', { class: 'mono', 'data-testid': 'preview-key' }, o.key),
        h('dt', {}, 'Version'), h('dd', { class: 'mono' }, o.version_text),
        h('dt', {}, 'Written'), h('dd', {}, fmtTime(o.timestamp_us / 1000)),
        h('dt', {}, 'Size'), h('dd', {}, fmtBytes(o.size)),
        h('dt', {}, 'Previous (key)'), h('dd', { class: 'mono' }, o.previous_version_by_key === null ? '–' : fmtVersion(o.previous_version_by_key)),
        h('dt', {}, 'As of'), h('dd', {}, at === null ? 'now' : fmtTime(at / 1000))),
      h('pre', { id: 'object-value', class: typeof o.value_text === 'string' ? 'text' : 'binary' }, shown));
  }

  function hexDump(b64) {
    let bin = '';
    try {
      bin = atob(b64);
    } catch (_) {
      return '(undecodable value)';
    }
    const n = Math.min(bin.length, 512);
    const lines = [];
    for (let off = 0; off < n; off += 16) {
      const bytes = [];
      let ascii = '';
      for (let i = off; i < Math.min(off + 16, n); i += 1) {
        const c = bin.charCodeAt(i);
        bytes.push(c.toString(16).padStart(2, '0'));
        ascii += c >= 32 && c < 127 ? bin[i] : '.';
      }
      lines.push(off.toString(16).padStart(6, '0') + '  ' + bytes.join(' ').padEnd(48) + '  ' + ascii);
    }
    if (bin.length > n) lines.push(`… ${bin.length - n} more bytes`);
    return lines.join('\n');
  }

  /**
   * The pool's earliest write this page can find: no endpoint names it, so it
   * binary-searches the time-travel key listing between ten years back and the oldest
   * latest-write of a sample of keys (to a millisecond), then sets the slider's start.
   */
  async function findEarliest(b) {
    const alive = () => state.browse === b;
    const slider = $('#time-slider');
    const now = await api('api/v1/keys?' + new URLSearchParams({ prefix: b.pool }).toString());
    if (!alive() || !now.ok) return;
    let hi = Date.now() * 1000;
    for (const key of ((now.data && now.data.keys) || []).slice(0, 16)) {
      const o = await api('api/v1/objects/' + objectPath(key));
      if (!alive()) return;
      if (o.ok && o.data && o.data.timestamp_us < hi) hi = o.data.timestamp_us;
    }
    const found = async (us) => {
      const r = await api('api/v1/keys?' + new URLSearchParams({ prefix: b.pool, time_us: String(us) }).toString());
      return r.ok && r.data && r.data.keys && r.data.keys.length > 0;
    };
    let lo = Math.max(0, hi - 10 * 365 * 24 * 3600 * 1e6);
    if (await found(lo)) hi = lo;
    for (let i = 0; i < 64 && hi - lo > 1000; i += 1) {
      const mid = Math.floor((lo + hi) / 2);
      const yes = await found(mid);
      if (!alive()) return;
      if (yes) hi = mid;
      else lo = mid;
    }
    if (!alive()) return;
    const ms = Math.ceil(hi / 1000);
    slider.min = String(Math.min(ms, Number(slider.max)));
    slider.dataset.earliest = String(ms);
    setText('#time-travel-start', fmtTime(ms));
    showSliderTime();
  }

  // ----- DFGs ---------------------------------------------------------------------------

  let dfgsBusy = false;
  async function refreshDfgs() {
    if (dfgsBusy) return;
    dfgsBusy = true;
    const r = await api('api/v1/dfgs');
    dfgsBusy = false;
    if (!r.ok) return;
    const text = JSON.stringify(r.data);
    if (text === state.dfgsText) return;
    state.dfgsText = text;
    state.dfgs = Array.isArray(r.data) ? r.data : [];
    renderDfgs();
  }

  function udlName(uuid) {
    const u = state.udls.find((x) => x.uuid === uuid);
    return u ? u.name : uuid.slice(0, 8);
  }

  function renderDfgs() {
    const box = $('#dfg-list');
    if (!state.dfgs.length) {
      box.replaceChildren(h('p', { class: 'hint' }, 'No DFGs.'));
      return;
    }
    box.replaceChildren(...state.dfgs.map((d) => h('div', { class: 'dfg', dataset: { dfg: String(d.id) } },
      h('h3', {}, d.desc || 'DFG', ' ', h('code', {}, d.id)),
      drawDfg(d))));
    renderDfgStats();
  }

  /** The graph of one DFG as SVG: columns by depth from its sources. */
  function drawDfg(d) {
    const nodes = new Map();
    const edges = [];
    const node = (path) => {
      const id = trimSlash(path);
      if (!nodes.has(id)) nodes.set(id, { id, label: path, vertex: false, udls: [] });
      return nodes.get(id);
    };
    for (const v of d.graph || []) {
      if (!v || typeof v.pathname !== 'string') continue;
      const n = node(v.pathname);
      n.vertex = true;
      n.label = v.pathname;
      n.udls = (v.user_defined_logic_list || []).map(String);
      for (const dest of v.destinations || []) {
        for (const [prefix, action] of Object.entries(dest || {})) {
          node(prefix);
          edges.push({ from: n.id, to: trimSlash(prefix), action: String(action) });
        }
      }
    }
    // Longest path from a source, bounded (cycles stop growing at the node count).
    const depth = new Map([...nodes.keys()].map((k) => [k, 0]));
    for (let round = 0; round < nodes.size; round += 1) {
      let moved = false;
      for (const e of edges) {
        const want = depth.get(e.from) + 1;
        if (e.from !== e.to && want < nodes.size && depth.get(e.to) < want) {
          depth.set(e.to, want);
          moved = true;
        }
      }
      if (!moved) break;
    }
    const cols = [];
    for (const [id, dep] of depth) (cols[dep] = cols[dep] || []).push(id);
    const W = Math.max(270, ...[...nodes.values()].map((n) => n.label.length * 7.6 + 28));
    const H = 64;
    const GAPX = 110;
    const GAPY = 28;
    const PAD = 24;
    const pos = new Map();
    cols.forEach((ids, c) => (ids || []).forEach((id, r) => pos.set(id, { x: PAD + c * (W + GAPX), y: PAD + r * (H + GAPY) })));
    const rows = Math.max(1, ...cols.map((c) => (c ? c.length : 0)));
    const width = PAD * 2 + cols.length * W + (cols.length - 1) * GAPX;
    const height = PAD * 2 + rows * H + (rows - 1) * GAPY + 40;

    const svg = s('svg', {
      class: 'dfg-graph', width, height, viewBox: `0 0 ${width} ${height}`, role: 'img',
      'aria-label': 'DFG ' + d.id,
    });
    const markerId = 'arrow-' + String(d.id).replace(/[^A-Za-z0-9_-]/g, '');
    svg.append(s('defs', {}, s('marker', {
      id: markerId, viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse',
    }, s('path', { d: 'M0,0 L10,5 L0,10 z', fill: '#64748b' }))));

    for (const e of edges) {
      const a = pos.get(e.from);
      const b = pos.get(e.to);
      let path;
      let lx;
      let ly;
      if (e.from === e.to) {
        const x = a.x + W - 30;
        path = `M${x},${a.y} C${x},${a.y - 36} ${x + 50},${a.y - 36} ${x + 30},${a.y + 12}`;
        lx = x + 20;
        ly = a.y - 30;
      } else if (b.x > a.x) {
        const x1 = a.x + W;
        const y1 = a.y + H / 2;
        const x2 = b.x;
        const y2 = b.y + H / 2;
        path = `M${x1},${y1} C${x1 + GAPX / 2},${y1} ${x2 - GAPX / 2},${y2} ${x2},${y2}`;
        lx = (x1 + x2) / 2;
        ly = (y1 + y2) / 2 - 6;
      } else {
        // Back edge: under the nodes.
        const x1 = a.x + W / 2;
        const y1 = a.y + H;
        const x2 = b.x + W / 2 + 12;
        const y2 = b.y + H;
        const low = Math.max(y1, y2) + 34;
        path = `M${x1},${y1} C${x1},${low} ${x2},${low} ${x2},${y2}`;
        lx = (x1 + x2) / 2;
        ly = low - 4;
      }
      svg.append(s('g', { class: 'edge', dataset: { from: e.from, to: e.to, action: e.action } },
        s('path', { d: path, 'marker-end': `url(#${markerId})` }),
        s('text', { x: lx, y: ly, 'text-anchor': 'middle', class: 'edge-label' }, e.action)));
    }

    for (const n of nodes.values()) {
      const p = pos.get(n.id);
      const udls = n.udls.length ? n.udls.map(udlName).join(', ') : n.vertex ? 'no UDL' : 'destination';
      svg.append(s('g', {
        class: 'vertex' + (n.vertex ? '' : ' sink'),
        dataset: { vertex: n.id },
        transform: `translate(${p.x},${p.y})`,
      },
      s('rect', { width: W, height: H, rx: 8, ry: 8 }),
      s('text', { x: 12, y: 20, class: 'v-path' }, n.label),
      s('text', { x: 12, y: 37, class: 'v-udls' }, udls),
      s('text', { x: 12, y: 54, class: 'v-stats', 'data-testid': 'vertex-stats' }, n.vertex ? '–' : '')));
    }
    return svg;
  }

  /** Per-vertex invocation rate, mean latency, errors and queue from the UDL engine's series. */
  function vertexStats(id) {
    const match = (p) => p.labels.vertex !== undefined && trimSlash(p.labels.vertex) === id;
    let inv = 0;
    let total = 0;
    let errs = 0;
    let queued = 0;
    let dsum = 0;
    let dcount = 0;
    let sum = 0;
    let count = 0;
    let seen = false;
    for (const p of state.parsed) {
      if (!match(p)) continue;
      seen = true;
      if (p.name === 'squall_udl_invocations_total') {
        inv += p.rate || 0;
        total += p.value;
      } else if (p.name === 'squall_udl_errors_total') errs += p.rate || 0;
      else if (p.name === 'squall_udl_queue_depth') queued += p.value;
      else if (p.name === 'squall_udl_latency_seconds' && p.part === 'sum') {
        sum += p.value;
        dsum += (p.rate || 0);
      } else if (p.name === 'squall_udl_latency_seconds' && p.part === 'count') {
        count += p.value;
        dcount += (p.rate || 0);
      }
    }
    if (!seen) return null;
    const mean = dcount > 0 ? dsum / dcount : count > 0 ? sum / count : null;
    return { inv, total, errs, queued, mean };
  }

  function renderDfgStats() {
    for (const g of document.querySelectorAll('#dfg-list g.vertex:not(.sink)')) {
      const st = vertexStats(g.dataset.vertex);
      const text = g.querySelector('.v-stats');
      if (!st) {
        setText(text, 'idle here');
        continue;
      }
      let line = `${fmtNum(st.inv)}/s · mean ${fmtSeconds(st.mean)} · ${fmtNum(st.total)} runs`;
      if (st.errs > 0) line += ` · ${fmtNum(st.errs)} err/s`;
      if (st.queued > 0) line += ` · ${st.queued} queued`;
      setText(text, line);
      g.dataset.invocations = String(st.total);
    }
  }

  // ----- UDLs ---------------------------------------------------------------------------

  let udlsBusy = false;
  async function refreshUdls() {
    if (udlsBusy) return;
    udlsBusy = true;
    const r = await api('api/v1/udls');
    udlsBusy = false;
    if (!r.ok || !Array.isArray(r.data)) return;
    const before = JSON.stringify(state.udls.map((u) => [u.uuid, u.name]));
    state.udls = r.data;
    renderUdls();
    if (JSON.stringify(state.udls.map((u) => [u.uuid, u.name])) !== before && state.dfgs.length) renderDfgs();
  }

  function renderUdls() {
    const rows = state.udls.map((u) => h('tr', { dataset: { uuid: u.uuid, name: u.name } },
      h('td', {}, u.name),
      h('td', { class: 'mono' }, u.uuid),
      h('td', {}, u.description || '–'),
      h('td', {}, u.sdk_version || '–'),
      h('td', { class: 'mono' }, u.checksum || '–'),
      h('td', {}, fmtBytes(u.bytes)),
      h('td', {}, u.invocations ?? '–'),
      h('td', { class: u.errors ? 'bad' : null }, u.errors ?? '–'),
      h('td', { class: 'udl-status' }, u.load_error
        ? [h('span', { class: 'pill pill-bad', title: u.load_error }, 'not loaded'),
          h('div', { class: 'hint', title: u.load_error },
            u.load_error.length > 70 ? u.load_error.slice(0, 70) + '…' : u.load_error)]
        : h('span', { class: 'pill pill-ok' }, 'loaded'))));
    if (!rows.length) rows.push(h('tr', {}, h('td', { colspan: '9', class: 'hint' }, 'No UDLs uploaded.')));
    replaceRows($('#udls-table tbody'), rows);
  }

  function setupUpload() {
    const form = $('#udl-upload');
    const status = $('#udl-upload-status');
    const say = (text, kind) => {
      status.textContent = text;
      status.className = kind;
      status.dataset.state = kind;
    };
    $('#udl-file').addEventListener('change', () => {
      const f = $('#udl-file').files[0];
      if (f && !$('#udl-name').value) $('#udl-name').value = f.name.replace(/\.[^.]*$/, '').replace(/^lib/, '');
    });
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const file = $('#udl-file').files[0];
      const name = $('#udl-name').value.trim();
      const entry = $('#udl-entry').value.trim();
      if (!file) return say('Choose a file.', 'error');
      if (!name) return say('Give the UDL a name.', 'error');
      const python = /\.py$/i.test(file.name);
      if (python && !entry) return say('A Python UDL needs its entry class.', 'error');
      const q = new URLSearchParams({ name });
      if (entry) {
        q.set('entry', entry);
        const stem = file.name.replace(/\.py$/i, '');
        if (python && !entry.includes(':') && /^[A-Za-z_][A-Za-z0-9_]*$/.test(stem)) q.set('module', stem);
      }
      say(`Uploading ${file.name} (${fmtBytes(file.size)})…`, 'busy');
      $('#udl-submit').disabled = true;
      let bytes;
      try {
        bytes = await file.arrayBuffer();
      } catch (_) {
        $('#udl-submit').disabled = false;
        return say('Could not read the file.', 'error');
      }
      const r = await api('api/v1/udls?' + q.toString(), {
        method: 'POST',
        body: bytes,
        headers: { 'Content-Type': 'application/octet-stream' },
      });
      $('#udl-submit').disabled = false;
      if (!r.ok) return say(`Upload failed: ${r.error.code}: ${r.error.message}`, 'error');
      say(`Uploaded ${r.data.name}` + (r.data.uuid ? ` (${r.data.uuid})` : '') + '.', 'ok');
      form.reset();
      refreshUdls();
      return undefined;
    });
  }

  // ----- GPU ----------------------------------------------------------------------------

  function gpuSeries() {
    return state.parsed.filter((p) => p.name.startsWith('squall_gpu_'));
  }

  /** Availability (from /api/v1/node), one row per pool cache with a used/capacity bar,
   *  and the raw squall_gpu_* series with their chart. */
  function renderGpu() {
    const status = (state.node && state.node.gpu) || null;
    const line = $('#gpu-status');
    if (!status || !status.availability) {
      setText('#gpu-status', 'GPU: –');
      line.dataset.state = 'unknown';
    } else if (status.availability === 'available') {
      const devices = (status.devices || []).map((d) => `${d.ordinal}: ${d.name} (${fmtBytes(d.total_memory_bytes)})`);
      setText('#gpu-status', 'GPU: available — ' + (devices.join(', ') || 'no devices listed'));
      line.dataset.state = 'available';
    } else {
      setText('#gpu-status', 'GPU: unavailable — ' + (status.reason || 'no reason given')
        + '. GPU-cached pools are served from host memory.');
      line.dataset.state = 'unavailable';
    }
    const caches = (status && status.caches) || [];
    const rows = caches.map((c) => {
      const pct = c.capacity_bytes ? Math.min(100, (100 * c.used_bytes) / c.capacity_bytes) : 0;
      return h('tr', { dataset: { pool: c.pool, entries: String(c.entries), location: c.location } },
        h('td', { class: 'mono' }, c.pool),
        h('td', { class: 'mono' }, c.location + (c.error ? ' (' + c.error + ')' : '')),
        h('td', {},
          h('div', { class: 'gpu-bar', title: `${pct.toFixed(1)}%` },
            h('div', { class: 'gpu-bar-fill', style: `width: ${pct.toFixed(1)}%` })),
          h('span', { class: 'gpu-bar-label' }, `${fmtBytes(c.used_bytes)} / ${fmtBytes(c.capacity_bytes)}`)),
        h('td', {}, fmtNum(c.entries, 0)),
        h('td', {}, fmtNum(c.pinned_entries, 0)),
        h('td', {}, fmtNum(c.hits, 0)),
        h('td', {}, fmtNum(c.misses, 0)),
        h('td', {}, fmtNum(c.evictions, 0)),
        h('td', {}, `${fmtNum(c.host_to_device_transfers, 0)} (${fmtBytes(c.host_to_device_bytes)})`),
        h('td', {}, `${fmtNum(c.device_to_device_transfers, 0)} (${fmtBytes(c.device_to_device_bytes)})`),
        h('td', {}, fmtNum(c.refused_inserts, 0)));
    });
    if (!rows.length) {
      rows.push(h('tr', {}, h('td', { colspan: '11' }, 'no GPU-cached pool has objects on this node')));
    }
    replaceRows($('#gpu-caches-table tbody'), rows);
    const models = ((status && status.models) || []).map((m) =>
      h('tr', { dataset: { vertex: m.vertex, udl: m.udl, device: m.device } },
        h('td', { class: 'mono' }, m.vertex),
        h('td', { class: 'mono' }, m.udl),
        h('td', { class: 'mono' }, m.device),
        h('td', {}, fmtNum(m.invocations, 0))));
    if (!models.length) {
      models.push(h('tr', {}, h('td', { colspan: '4' }, 'no model has run on this node')));
    }
    replaceRows($('#gpu-models-table tbody'), models);

    const gpu = gpuSeries();
    const table = $('#gpu-table');
    table.hidden = !gpu.length;
    $('#chart-gpu').hidden = !gpu.length;
    if (!gpu.length) return;
    const series = gpu.map((p) => h('tr', {},
      h('td', { class: 'mono' }, p.name + (p.part ? ':' + p.part : '')),
      h('td', { class: 'mono' }, Object.entries(p.labels).map(([k, v]) => `${k}=${v}`).join(', ') || '–'),
      h('td', {}, /bytes/.test(p.name) ? fmtBytes(p.value) : fmtNum(p.value))));
    replaceRows($('#gpu-table tbody'), series);
  }

  // ----- tabs and timers ----------------------------------------------------------------

  const TABS = ['overview', 'shards', 'pools', 'dfgs', 'udls', 'gpu', 'wan'];

  function showTab(tab) {
    if (!TABS.includes(tab)) tab = 'overview';
    state.tab = tab;
    for (const sec of document.querySelectorAll('main > section')) sec.hidden = sec.dataset.section !== tab;
    for (const b of document.querySelectorAll('#tabs button')) {
      b.classList.toggle('active', b.dataset.tab === tab);
      b.setAttribute('aria-selected', b.dataset.tab === tab ? 'true' : 'false');
    }
    if (location.hash !== '#' + tab) history.replaceState(null, '', '#' + tab);
    charts.forEach((c) => c.refresh());
    if (!state.started) return;
    if (tab === 'udls') refreshUdls();
    if (tab === 'dfgs') {
      refreshUdls();
      refreshDfgs();
    }
    if (tab === 'pools') refreshPools();
    if (tab === 'overview') refreshViews();
  }

  function refreshAll() {
    refreshMembers();
    refreshViews();
    refreshNode();
    refreshPools();
    refreshUdls();
    refreshDfgs();
  }

  async function start() {
    setupToken();
    setupCharts();
    setupPools();
    setupUpload();
    for (const b of document.querySelectorAll('#tabs button')) b.addEventListener('click', () => showTab(b.dataset.tab));
    window.addEventListener('hashchange', () => showTab(location.hash.slice(1)));
    showTab(location.hash.slice(1) || 'overview');
    // One request first: on a cluster with tokens, only it is refused before the prompt.
    const probe = await api('api/v1/node');
    if (probe.ok) {
      state.node = probe.data;
      state.nodeId = probe.data.node;
    }
    state.started = true;
    refreshAll();
    showTab(state.tab);
    runEvents();
    // What the events do not carry: the view history, UDLs and DFGs.
    setInterval(() => {
      refreshViews();
      if (state.tab === 'udls' || state.tab === 'dfgs') refreshUdls();
      if (state.tab === 'dfgs') refreshDfgs();
      if (state.tab === 'pools') refreshPools();
      if (state.lastEvent && Date.now() / 1000 - state.lastEvent > 5) setConn('down', 'no events');
    }, 3000);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
