// The sfc dashboard. Plain browser JavaScript, no dependencies, nothing from the network but
// this registry's API. Every text from the fleet goes in with textContent (h() below), never
// innerHTML.
//
// It costs little at fleet scale:
// - It opens on the groups overview (/v1/summary: counts per group and a CPU sparkline), and
//   lists instances only for a group or a filter (/v1/instances, server-side filters and
//   search, paged, only the fields a row shows).
// - After that first load it follows the SSE watch (/v1/watch, transitions only) and applies
//   each event to the rows it has; the overview is fetched again (a few hundred bytes per group,
//   304 when unchanged) after a transition and every few seconds for the sparkline.
// - Tables are virtualized: only the rows on screen are in the DOM, and samples are fetched
//   only for those rows (and the selected instance), and only what is newer than what the page
//   has.
// - The selected instance is read once (/v1/instances/{id}); after that its record comes with
//   the watch's transitions and its cpu and memory with the samples, never a poll.
// - The view (filters, group, selected instance) lives in the URL, so it can be linked.
'use strict';

const FEED_MAX = 200;
const SAMPLES_MS = 2000;     // samples of the rows on screen
const SUMMARY_MS = 5000;     // the overview's sparklines move once per 5 s step
const PAGE = 2000;           // records per /v1/instances page
const SAMPLES_KEPT = 120;
const OVERSCAN = 8;          // rows rendered above and below the visible ones
const ROW_FIELDS = 'id,group,instance_id,service,status,offline_reason,health,hostname,pid,version,tags,metadata,last_report_at';
const KINDS = ['joined', 'online', 'offline', 'left', 'evicted', 'health-changed', 'command-sent', 'command-result'];

const state = {
  view: 'groups',        // 'groups' (overview) or 'instances'
  f: { q: '', group: '', status: '', health: '' },
  selected: null,        // id shown in the detail view
  detail: null,          // its full record, as of its last transition (or its first load)
  detailEvents: [],
  summary: null,         // /v1/summary
  rows: new Map(),       // id -> record (ROW_FIELDS) of the instances view
  order: [],             // ids of `rows`, natural order
  loaded: false,         // rows reflect the current filters
  loadSeq: 0,
  buffer: [],            // events received while rows load
  sinceOf: new Map(),    // id -> registry time its samples are known up to
  samples: new Map(),    // id -> samples, for rows that were on screen and the selected instance
  visible: [],           // ids rendered last
  feed: [],
  cursor: 0,
  source: null,
  pending: null,         // {id, command} awaiting the dialog
  result: null,          // {id, text, cls}: the last admin action's outcome
  rowHeight: 0,
};

const $ = (sel) => document.querySelector(sel);
const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: 'base' });
const natural = (a, b) => collator.compare(a, b) || (a < b ? -1 : a > b ? 1 : 0);

// Builds an element: h('td', {class: 'num'}, 'text', child, ...). Strings become text nodes.
function h(tag, attrs, ...children) {
  const svg = tag === 'svg' || tag === 'polyline';
  const el = svg ? document.createElementNS('http://www.w3.org/2000/svg', tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function mib(b) { return b == null ? '-' : (b / 1048576).toFixed(1); }
function pct(p) { return p == null ? '-' : p.toFixed(1); }
function ago(ms) {
  if (!ms) return '-';
  const d = Date.now() - ms;
  if (d < 1000) return 'now';
  if (d < 120000) return Math.round(d / 1000) + 's';
  if (d < 7200000) return Math.round(d / 60000) + 'm';
  return Math.round(d / 3600000) + 'h';
}
function clock(ms) { return new Date(ms).toLocaleTimeString(); }
function path(id) { return id.split('/').map(encodeURIComponent).join('/'); }

async function api(url, opts) {
  const r = await fetch(url, Object.assign({ headers: { accept: 'application/json' } }, opts));
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { /* not JSON */ }
  if (!r.ok) {
    const msg = body && body.error ? body.error.message : `${r.status} ${text.slice(0, 200)}`;
    const err = new Error(msg);
    err.status = r.status;
    err.code = body && body.error ? body.error.code : 'http';
    throw err;
  }
  return { body, headers: r.headers };
}
const get = async (url) => (await api(url)).body;

// Sparkline of a series: [{x, y}] with y possibly null.
function sparkline(pts, cls, width, height, floor) {
  const svg = h('svg', { class: 'spark', width, height, viewBox: `0 0 ${width} ${height}`, 'aria-hidden': 'true' });
  pts = pts.filter((p) => p.y != null);
  if (pts.length < 2) return svg;
  const max = Math.max(...pts.map((p) => p.y), floor);
  const x0 = pts[0].x, x1 = pts[pts.length - 1].x;
  const xy = pts.map((p) => {
    const x = ((p.x - x0) / Math.max(1, x1 - x0)) * (width - 2) + 1;
    const y = height - 1 - (p.y / max) * (height - 2);
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  svg.append(h('polyline', { class: cls, points: xy.join(' ') }));
  return svg;
}
function spark(samples, key, cls, width, height) {
  return sparkline((samples || []).map((s) => ({ x: s.at, y: s[key] })), cls, width, height, key === 'cpu_percent' ? 5 : 1);
}

// ---- the URL ---------------------------------------------------------------------------

function readUrl() {
  const p = new URLSearchParams(location.search);
  state.f = { q: p.get('q') || '', group: p.get('group') || '', status: p.get('status') || '', health: p.get('health') || '' };
  state.view = p.get('view') === 'instances' || filtering() ? 'instances' : 'groups';
  state.selected = p.get('instance') || null;
  $('#search').value = state.f.q;
  setSelect('#filter-group', state.f.group);
  $('#filter-status').value = state.f.status;
  $('#filter-health').value = state.f.health;
}

function writeUrl(push) {
  const p = new URLSearchParams();
  if (state.view === 'instances' && !filtering()) p.set('view', 'instances');
  for (const k of ['group', 'status', 'health', 'q']) if (state.f[k]) p.set(k, state.f[k]);
  if (state.selected) p.set('instance', state.selected);
  const url = `${location.pathname}${p.toString() ? '?' + p : ''}`;
  if (url === location.pathname + location.search) return;
  if (push) history.pushState(null, '', url); else history.replaceState(null, '', url);
}

function filtering() { return !!(state.f.q || state.f.group || state.f.status || state.f.health); }

function setSelect(sel, value) {
  const el = $(sel);
  if (value && ![...el.options].some((o) => o.value === value)) el.append(h('option', { value }, value));
  el.value = value;
}

// ---- filters -----------------------------------------------------------------------------

function matches(r) {
  const f = state.f;
  if (f.group && r.group !== f.group) return false;
  if (f.status && r.status !== f.status) return false;
  if (f.health && r.health !== f.health) return false;
  if (!f.q) return true;
  const q = f.q.toLowerCase();
  const has = (s) => String(s).toLowerCase().includes(q);
  return has(r.id) || has(r.service) || has(r.hostname) || (r.version && has(r.version)) ||
    (r.tags || []).some(has) || Object.entries(r.metadata || {}).some(([k, v]) => has(`${k}=${v}`));
}

function slim(r) {
  const o = {};
  for (const k of ROW_FIELDS.split(',')) if (r[k] !== undefined) o[k] = r[k];
  return o;
}

// Loads the rows of the instances view, page by page, for the current filters.
async function loadRows() {
  const seq = ++state.loadSeq;
  const p = new URLSearchParams({ fields: ROW_FIELDS, limit: String(PAGE) });
  for (const k of ['group', 'status', 'health', 'q']) if (state.f[k]) p.set(k, state.f[k]);
  const rows = new Map();
  let after = null;
  for (;;) {
    const { body, headers } = await api(`/v1/instances?${p}${after ? '&after=' + after : ''}`);
    if (seq !== state.loadSeq) return;
    for (const r of body) rows.set(r.id, r);
    after = headers.get('x-next-cursor');
    if (!after) break;
  }
  state.rows = rows;
  state.order = [...rows.keys()].sort(natural);
  state.loaded = true;
  // Events that arrived while the pages were on their way, in order.
  for (const ev of state.buffer.splice(0)) applyToRows(ev);
  render();
  fetchSamples();
}

let filterTimer = null;
function onFilter(push) {
  state.f = {
    q: $('#search').value.trim(),
    group: $('#filter-group').value,
    status: $('#filter-status').value,
    health: $('#filter-health').value,
  };
  if (filtering()) state.view = 'instances';
  writeUrl(push);
  clearTimeout(filterTimer);
  filterTimer = setTimeout(refreshView, 150);
}

async function refreshView() {
  state.loaded = false;
  state.buffer = [];
  if (state.view === 'instances') {
    try { await loadRows(); } catch (e) { unreachable(); }
  } else {
    state.rows = new Map();
    state.order = [];
    render();
  }
}

function go(view, group) {
  state.view = view;
  state.f = { q: '', group: group || '', status: '', health: '' };
  $('#search').value = '';
  setSelect('#filter-group', state.f.group);
  $('#filter-status').value = '';
  $('#filter-health').value = '';
  writeUrl(true);
  const sc = $('#scroller');
  if (sc) sc.scrollTop = 0;
  refreshView();
}

// ---- the summary (overview and header) ------------------------------------------------

async function loadSummary() {
  state.summary = await get('/v1/summary');
  renderSummary();
  if (state.view === 'groups') renderFleet();
}

let summaryTimer = null;
function summarySoon() {
  if (summaryTimer) return;
  summaryTimer = setTimeout(async () => {
    summaryTimer = null;
    try { await loadSummary(); } catch (_) { unreachable(); }
  }, 400);
}

function unreachable() {
  const live = $('#live');
  live.textContent = 'registry unreachable';
  live.className = 'live off';
}

function renderSummary() {
  const s = state.summary;
  if (!s) return;
  const t = s.totals, p = s.process || {};
  $('#summary').replaceChildren(...[
    h('span', {}, h('b', { id: 'count-online' }, t.online), ' online / ', h('b', { id: 'count-total' }, t.instances), ' instances'),
    h('span', {}, h('b', { id: 'count-groups' }, t.groups), ' groups'),
    t.warning ? h('span', { class: 'health-warning' }, h('b', {}, t.warning), ' warning') : null,
    t.critical ? h('span', { class: 'health-critical' }, h('b', {}, t.critical), ' critical') : null,
    h('span', {}, h('b', {}, p.reports_per_second ?? 0), ' reports/s'),
    h('span', {}, 'sessions ', h('b', {}, s.sessions ?? '-')),
    h('span', {}, 'registry cpu ', h('b', {}, pct(p.cpu_percent)), '% rss ', h('b', {}, mib(p.resident_bytes)), ' MiB'),
    h('span', {}, 'v', s.version || '?', s.tls ? ' · https' : ''),
  ].filter(Boolean));
  const sel = $('#filter-group');
  const groups = s.groups.map((g) => g.group).sort(natural);
  const cur = sel.value;
  if (cur && !groups.includes(cur)) groups.push(cur);
  const have = [...sel.options].slice(1).map((o) => o.value);
  if (groups.join('\n') !== have.join('\n')) {
    sel.replaceChildren(h('option', { value: '' }, 'all groups'), ...groups.map((g) => h('option', { value: g }, g)));
    sel.value = cur;
  }
}

// ---- rendering -----------------------------------------------------------------------------

let frame = 0;
function render() {
  if (frame) return;
  frame = requestAnimationFrame(() => { frame = 0; renderNow(); });
}
function renderNow() { renderSummary(); renderCrumbs(); renderFleet(); renderDetail(); renderFeed(); }

// Rebuilt only when what it says changes: every event and sample poll renders, and a link
// replaced between a mouse press and its release takes no click.
function renderCrumbs() {
  const key = JSON.stringify([state.view, state.view === 'instances' ? state.f.group : '', state.view === 'instances' && !state.f.group && filtering(), state.selected || '']);
  const crumbs = $('#crumbs');
  if (crumbs.dataset.key === key) return;
  crumbs.dataset.key = key;
  const bits = [h('a', { href: '?', id: 'crumb-groups', onclick: (e) => { e.preventDefault(); go('groups'); } }, 'groups')];
  if (state.view === 'instances') {
    bits.push(' › ', state.f.group
      ? h('a', { href: `?group=${encodeURIComponent(state.f.group)}`, onclick: (e) => { e.preventDefault(); go('instances', state.f.group); } }, state.f.group)
      : h('span', {}, filtering() ? 'matching instances' : 'all instances'));
  }
  if (state.selected) bits.push(' › ', h('span', {}, state.selected));
  crumbs.replaceChildren(...bits);
}

// A virtualized table: thead, a spacer row, the rows in view (plus OVERSCAN), a spacer row.
// `#scroller` keeps its scroll position across renders.
function virtualTable(id, heads, count, rowAt) {
  let sc = $('#scroller');
  if (!sc || sc.dataset.table !== id) {
    sc = h('div', { id: 'scroller', 'data-table': id, onscroll: () => { render(); samplesSoon(); } },
      h('table', { id }, h('thead', {}, h('tr', {}, heads.map((t) => h('th', {}, t)))), h('tbody')));
  }
  const rh = state.rowHeight || 34;
  const view = sc.clientHeight || window.innerHeight;
  const first = Math.max(0, Math.floor(sc.scrollTop / rh) - OVERSCAN);
  const last = Math.min(count, Math.ceil((sc.scrollTop + view) / rh) + OVERSCAN);
  const rows = [];
  for (let i = first; i < last; i++) rows.push(rowAt(i));
  // Heights through the CSSOM: the Content-Security-Policy refuses style attributes.
  const spacer = (px) => { const tr = h('tr', { class: 'spacer' }); tr.style.height = `${px}px`; return tr; };
  sc.querySelector('tbody').replaceChildren(spacer(first * rh), ...rows, spacer((count - last) * rh));
  return { sc, first, last };
}

function measure(sc) {
  const tr = sc.querySelector('tbody tr:not(.spacer)');
  const hgt = tr ? tr.getBoundingClientRect().height : 0;
  if (hgt > 0 && Math.abs(hgt - state.rowHeight) > 0.5) { state.rowHeight = hgt; render(); }
}

function groupRow(g) {
  const cpu = g.cpu || [];
  const step = state.summary.spark.step_ms, end = state.summary.spark.end;
  const pts = cpu.map((y, i) => ({ x: end - (cpu.length - i) * step, y }));
  return h('tr', {
    class: 'group-row' + (g.online < g.instances ? ' degraded' : ''), 'data-group': g.group,
    onclick: () => go('instances', g.group),
  },
  h('td', {}, h('a', { href: `?group=${encodeURIComponent(g.group)}`, onclick: (e) => e.preventDefault() }, g.group)),
  h('td', { class: 'num', 'data-k': 'services' }, g.services),
  h('td', { class: 'num', 'data-k': 'instances' }, g.instances),
  h('td', { class: 'num on', 'data-k': 'online' }, g.online),
  h('td', { class: 'num off', 'data-k': 'offline' }, g.offline),
  h('td', { class: 'num left', 'data-k': 'left' }, g.left),
  h('td', { class: 'num health-passing', 'data-k': 'passing' }, g.passing),
  h('td', { class: 'num health-warning', 'data-k': 'warning' }, g.warning),
  h('td', { class: 'num health-critical', 'data-k': 'critical' }, g.critical),
  h('td', {}, sparkline(pts, 'cpu', 120, 22, 5)));
}

function instanceRow(r) {
  const samples = state.samples.get(r.id);
  const last = samples && samples.length ? samples[samples.length - 1] : null;
  return h('tr', {
    class: `instance status-${r.status}${state.selected === r.id ? ' selected' : ''}`,
    'data-id': r.id, 'data-status': r.status, 'data-health': r.health,
    onclick: () => select(r.id),
  },
  h('td', {}, h('span', { class: 'dot' }), h('span', { class: 'status' }, r.status),
    r.offline_reason ? h('span', { class: 'reason' }, ` (${r.offline_reason})`) : null),
  state.f.group ? null : h('td', {}, r.group),
  h('td', {}, r.instance_id),
  h('td', {}, r.service),
  h('td', {}, h('span', { class: `badge health-${r.health}` }, r.health)),
  h('td', {}, r.hostname),
  h('td', { class: 'num' }, r.pid || '-'),
  h('td', { class: 'num' }, pct(last ? last.cpu_percent : null)),
  h('td', {}, spark(samples, 'cpu_percent', 'cpu', 90, 22)),
  h('td', { class: 'num' }, mib(last ? last.resident_bytes : null)),
  h('td', {}, spark(samples, 'resident_bytes', 'rss', 90, 22)),
  h('td', { class: 'num' }, ago(Math.max(r.last_report_at || 0, last ? last.at : 0))));
}

// The fleet pane: a heading (kept in place) and either the scroller or a message. The
// scroller stays in the document across renders, so it keeps its scroll position.
function fleetPane(headAttrs, headChildren, body) {
  const box = $('#fleet');
  let head = $('#fleet-head');
  if (!head) head = h('div', { id: 'fleet-head' });
  for (const a of ['class', 'data-group']) head.removeAttribute(a);
  for (const [k, v] of Object.entries(headAttrs)) if (v) head.setAttribute(k, v);
  head.replaceChildren(h('h2', {}, ...headChildren));
  if (box.children.length !== 2 || box.children[0] !== head || box.children[1] !== body) box.replaceChildren(head, body);
}

function renderFleet() {
  if (state.view === 'groups') {
    const s = state.summary;
    if (!s) return;
    state.visible = [];
    const groups = s.groups.slice().sort((a, b) => natural(a.group, b.group));
    const title = ['groups ', h('span', { class: 'count' }, `${s.totals.groups} groups, ${s.totals.online}/${s.totals.instances} online`)];
    if (!groups.length) {
      fleetPane({ class: 'overview' }, title, h('p', { class: 'empty' }, 'no instances registered yet'));
      return;
    }
    const { sc } = virtualTable('groups', ['group', 'services', 'instances', 'online', 'offline', 'left', 'passing', 'warning', 'critical', 'cpu (2 min)'],
      groups.length, (i) => groupRow(groups[i]));
    fleetPane({ class: 'overview' }, title, sc);
    measure(sc);
    return;
  }
  const ids = state.order;
  const on = ids.reduce((n, id) => n + (state.rows.get(id).status === 'online' ? 1 : 0), 0);
  const name = state.f.group || (filtering() ? 'matching instances' : 'all instances');
  const title = [name, ' ', h('span', { class: 'count' }, `${on}/${ids.length} online`)];
  const attrs = { class: 'group', 'data-group': state.f.group };
  if (!ids.length) {
    state.visible = [];
    const msg = !state.loaded ? 'loading' : filtering() ? 'no instance matches the filters' : 'no instances registered yet';
    fleetPane(attrs, title, h('p', { class: 'empty' }, msg));
    return;
  }
  const heads = ['status', state.f.group ? null : 'group', 'instance', 'service', 'health', 'host', 'pid', 'cpu %', 'cpu', 'rss MiB', 'rss', 'last'].filter(Boolean);
  const { sc, first, last } = virtualTable(state.f.group ? 'instances-group' : 'instances', heads, ids.length, (i) => instanceRow(state.rows.get(ids[i])));
  fleetPane(attrs, title, sc);
  state.visible = ids.slice(first, last);
  measure(sc);
}

function dl(pairs) {
  return h('dl', {}, pairs.filter(([, v]) => v !== undefined && v !== null && v !== '')
    .map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

function eventLine(ev) {
  const d = ev.detail || {};
  const bits = [];
  if (d.reason) bits.push(typeof d.reason === 'string' ? d.reason : JSON.stringify(d.reason));
  if (d.command) bits.push(d.command + (d.ok === false ? ' failed' : d.ok ? ' ok' : ''));
  if (d.by) bits.push('by ' + d.by);
  if (d.health) bits.push(d.health);
  return h('li', { 'data-kind': ev.kind },
    h('span', { class: 'time' }, clock(ev.at)),
    h('span', { class: `kind kind-${ev.kind}` }, ev.kind), ' ',
    h('a', { href: `?instance=${encodeURIComponent(ev.id)}`, onclick: (e) => { e.preventDefault(); select(ev.id); } }, ev.id),
    bits.length ? ' ' + bits.join(' · ') : '');
}

function renderDetail() {
  const box = $('#detail');
  const r = state.selected && state.detail && state.detail.id === state.selected ? state.detail : null;
  if (!r) { box.hidden = true; box.replaceChildren(); return; }
  const m = r.metrics || {}, host = m.host || {}, proc = m.process || {};
  // cpu, memory and the last report follow the samples; the rest of the record is as of its
  // last transition.
  const samples = state.samples.get(r.id) || [];
  const latest = samples.length ? samples[samples.length - 1] : null;
  const fresh = latest && latest.at > (r.last_report_at || 0);
  const cpuNow = fresh ? latest.cpu_percent : proc.cpu_percent;
  const rssNow = fresh ? latest.resident_bytes : proc.resident_bytes;
  const endpoints = (r.endpoints || []).map((e) => h('div', {}, `${e.name}: ${e.protocol}://${e.host}:${e.port}`));
  const safeUrl = r.api && /^https?:\/\//i.test(r.api.url) ? r.api.url : null;
  const apiLink = r.api ? (safeUrl ? h('a', { href: safeUrl, target: '_blank', rel: 'noopener noreferrer', class: 'link' }, `${r.api.kind}: ${r.api.url}`) : `${r.api.kind}: ${r.api.url}`) : null;
  const gauges = Object.entries(m.custom || {}).map(([k, v]) => h('div', {}, `${k} = ${v}`));
  const runtime = Object.entries(m.runtime || {}).map(([k, v]) => h('div', {}, `${k} = ${v}`));
  box.hidden = false;
  box.replaceChildren(
    h('h3', { id: 'detail-title' }, h('span', { class: `dot status-${r.status}` }), r.id),
    h('div', { class: 'actions' },
      h('button', { id: 'shutdown', class: 'danger', disabled: r.status !== 'online', onclick: () => ask(r.id, 'shutdown') }, 'shutdown'),
      h('button', { id: 'deregister', disabled: r.status === 'online', onclick: () => ask(r.id, 'deregister') }, 'deregister'),
      h('button', { onclick: () => select(null) }, 'close')),
    h('p', { id: 'command-result', role: 'status', class: state.result && state.result.id === r.id ? state.result.cls : null },
      state.result && state.result.id === r.id ? state.result.text : ''),
    dl([
      ['status', `${r.status}${r.offline_reason ? ' (' + r.offline_reason + ')' : ''} since ${clock(r.status_since)}`],
      ['health', h('span', { class: `badge health-${r.health}` }, r.health + (r.health_note ? ': ' + r.health_note : ''))],
      ['group', r.group], ['service', r.service], ['version', r.version], ['wire', r.wire],
      ['host', r.hostname], ['pid', r.pid || null],
      ['endpoints', endpoints.length ? endpoints : null],
      ['tags', (r.tags || []).length ? r.tags.map((t) => h('span', { class: 'tag' }, t)) : null],
      ['metadata', Object.keys(r.metadata || {}).length ? Object.entries(r.metadata).map(([k, v]) => h('div', {}, `${k} = ${v}`)) : null],
      ['API', apiLink],
      ['TLS identity', r.tls_identity || 'none (no client certificate)'],
      ['connected', r.connected_since ? clock(r.connected_since) : null],
      ['last report', ago(Math.max(r.last_report_at || 0, latest ? latest.at : 0))],
      ['interval', r.interval_ms + ' ms'],
      ['clock skew', r.clock_skew_ms != null ? r.clock_skew_ms + ' ms' : null],
    ]),
    h('h2', {}, 'process'),
    r.last_report_at ? h('p', { class: 'note' }, `cpu and rss live; the other figures as of ${clock(r.last_report_at)}`) : null,
    dl([
      ['cpu', pct(cpuNow) + ' %'], ['cpu history', spark(samples, 'cpu_percent', 'cpu', 240, 40)],
      ['rss', mib(rssNow) + ' MiB'], ['rss history', spark(samples, 'resident_bytes', 'rss', 240, 40)],
      ['threads', proc.threads], ['open fds', proc.open_fds], ['user', proc.user],
      ['runtime', runtime.length ? runtime : null], ['gauges', gauges.length ? gauges : null],
    ]),
    h('h2', {}, 'host'),
    dl([
      ['os', [host.os_name, host.os_version, host.arch].filter(Boolean).join(' ')], ['kernel', host.kernel],
      ['cpus', host.cpu_count], ['cpu', host.cpu_percent != null ? pct(host.cpu_percent) + ' %' : null],
      ['load', host.load_average ? host.load_average.map((x) => x.toFixed(2)).join(' ') : null],
      ['memory', host.memory_total_bytes ? `${mib(host.memory_used_bytes)} / ${mib(host.memory_total_bytes)} MiB` : null],
      ['uptime', host.uptime_seconds != null ? Math.round(host.uptime_seconds / 3600) + ' h' : null],
    ]),
    h('h2', {}, 'recent events'),
    h('ol', { class: 'events', id: 'detail-events' }, state.detailEvents.slice().reverse().map(eventLine)),
  );
}

function renderFeed() {
  $('#feed').replaceChildren(...state.feed.map(eventLine));
}

// ---- the selected instance ------------------------------------------------------------

async function select(id) {
  const changed = id !== state.selected;
  state.selected = id;
  if (changed) { state.detail = null; state.detailEvents = []; }
  writeUrl(changed);
  render();
  if (id) await loadDetail(id);
}

async function loadDetail(id) {
  try {
    const d = await get(`/v1/instances/${path(id)}`);
    if (state.selected !== id) return;
    state.detail = d.instance;
    state.detailEvents = d.events;
    // Its samples join those of the rows on screen; the samples tick asks only for newer ones.
    const have = state.samples.get(id) || [];
    const lastAt = have.length ? have[have.length - 1].at : 0;
    const got = have.concat(d.samples.filter((x) => x.at > lastAt)).slice(-SAMPLES_KEPT);
    if (got.length) {
      state.samples.set(id, got);
      state.sinceOf.set(id, Math.max(state.sinceOf.get(id) || 0, got[got.length - 1].at));
    }
  } catch (e) {
    if (e.status === 404 && state.selected === id) state.detail = null; // evicted meanwhile
  }
  render();
}

// ---- samples of the rows on screen ----------------------------------------------------

let samplesTimer = null;
function samplesSoon() {
  clearTimeout(samplesTimer);
  samplesTimer = setTimeout(fetchSamples, 250);
}

// Two requests at most: rows seen before (only what is newer than the oldest of them knows)
// and rows new on screen (their whole ring). The selected instance counts as on screen.
async function fetchSamples() {
  const ids = state.visible.slice(0, 200);
  if (state.selected && state.detail && !ids.includes(state.selected)) ids.push(state.selected);
  if (!ids.length) return;
  const known = ids.filter((id) => state.sinceOf.has(id));
  const fresh = ids.filter((id) => !state.sinceOf.has(id));
  const since = known.reduce((m, id) => Math.min(m, state.sinceOf.get(id)), Infinity);
  const asks = [];
  if (known.length) asks.push([known, since]);
  if (fresh.length) asks.push([fresh, 0]);
  try {
    for (const [list, from] of asks) {
      const got = await get(`/v1/samples?ids=${list.map(encodeURIComponent).join(',')}&since=${from}`);
      let newest = from;
      for (const [id, got1] of Object.entries(got)) {
        const have = state.samples.get(id) || [];
        const lastAt = have.length ? have[have.length - 1].at : 0;
        const add = got1.filter((x) => x.at > lastAt);
        if (add.length) state.samples.set(id, have.concat(add).slice(-SAMPLES_KEPT));
        for (const x of got1) newest = Math.max(newest, x.at);
      }
      for (const id of list) state.sinceOf.set(id, Math.max(state.sinceOf.get(id) || 0, newest));
    }
    // Forget rows far from the screen.
    if (state.samples.size > 2000) {
      const keep = new Set(ids);
      for (const id of state.samples.keys()) if (!keep.has(id)) { state.samples.delete(id); state.sinceOf.delete(id); }
    }
    render();
  } catch (_) { /* the next tick tries again */ }
}

// ---- the watch stream -----------------------------------------------------------------

// Applies one transition from the stream to what the page holds.
function applyToRows(ev) {
  const had = state.rows.has(ev.id);
  if (ev.kind === 'evicted' || !ev.instance || !matches(ev.instance)) {
    if (had && (ev.kind === 'evicted' || ev.instance)) {
      state.rows.delete(ev.id);
      state.order = state.order.filter((x) => x !== ev.id);
    }
  } else {
    state.rows.set(ev.id, slim(ev.instance));
    if (!had) state.order = [...state.rows.keys()].sort(natural);
  }
}

function apply(ev) {
  if (ev.seq) state.cursor = Math.max(state.cursor, ev.seq);
  if (state.view === 'instances') {
    if (state.loaded) applyToRows(ev);
    else if (state.buffer.length < 100000) state.buffer.push(ev);
  }
  if (ev.kind === 'evicted') { state.samples.delete(ev.id); state.sinceOf.delete(ev.id); }
  state.feed.unshift(ev);
  state.feed.length = Math.min(state.feed.length, FEED_MAX);
  if (ev.id === state.selected) {
    state.detailEvents.push(ev);
    if (ev.kind === 'evicted') { state.detail = null; state.selected = null; writeUrl(false); }
    else if (ev.instance) state.detail = ev.instance;
  }
  summarySoon();
  render();
}

function connect() {
  if (state.source) state.source.close();
  // Replays everything after the cursor the page loaded with, so nothing falls in between; on
  // a reconnect the browser sends Last-Event-ID and the registry resumes from there.
  const src = new EventSource(`/v1/watch?after=${state.cursor}`);
  state.source = src;
  const live = $('#live');
  src.onopen = () => { live.textContent = 'live'; live.className = 'live on'; };
  src.onerror = () => { live.textContent = 'reconnecting'; live.className = 'live off'; };
  for (const k of KINDS) src.addEventListener(k, (m) => { try { apply(JSON.parse(m.data)); } catch (_) { /* skip */ } });
  // Events the registry no longer holds: load everything again.
  src.addEventListener('lagged', () => load());
}

async function load() {
  try {
    await loadSummary();
    state.cursor = state.summary.events_cursor;
    const recent = await get(`/v1/events?after=${Math.max(0, state.cursor - 50)}&limit=50`);
    state.feed = recent.events.slice().reverse();
  } catch (e) { unreachable(); }
  await refreshView();
  if (state.selected) loadDetail(state.selected);
  connect();
}

// ---- the admin dialog -----------------------------------------------------------------

// Shutdown or deregister, with the token (kept for this tab only).
function ask(id, command) {
  state.pending = { id, command };
  $('#confirm-title').textContent = command;
  $('#confirm-text').textContent = command === 'shutdown'
    ? `Ask ${id} to shut down. It answers, then leaves the fleet.`
    : `Remove the record of ${id} from the registry.`;
  $('#reason-label').hidden = command !== 'shutdown';
  $('#token').value = sessionStorage.getItem('sfc-admin-token') || '';
  $('#confirm-error').textContent = '';
  $('#confirm-dialog').showModal();
  ($('#token').value ? $('#reason') : $('#token')).focus();
}

async function confirmAction(e) {
  e.preventDefault();
  const { id, command } = state.pending || {};
  if (!id) return;
  const token = $('#token').value.trim();
  const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json', accept: 'application/json' };
  $('#confirm').disabled = true;
  try {
    let msg;
    if (command === 'shutdown') {
      const { body: r } = await api(`/v1/instances/${path(id)}/commands`, {
        method: 'POST', headers, body: JSON.stringify({ command: 'shutdown', reason: $('#reason').value || null }),
      });
      msg = r.ok ? `shutdown acknowledged by ${id}: ${JSON.stringify(r.result)}` : `${id} refused: ${r.error}`;
    } else {
      await api(`/v1/instances/${path(id)}`, { method: 'DELETE', headers });
      msg = `${id} deregistered`;
    }
    sessionStorage.setItem('sfc-admin-token', token);
    $('#confirm-dialog').close();
    state.result = { id, text: msg, cls: 'result' };
    render();
  } catch (err) {
    if (err.status === 401) sessionStorage.removeItem('sfc-admin-token');
    $('#confirm-error').textContent = err.message;
  } finally {
    $('#confirm').disabled = false;
  }
}

$('#confirm-form').addEventListener('submit', confirmAction);
$('#cancel').addEventListener('click', () => $('#confirm-dialog').close());
$('#search').addEventListener('input', () => onFilter(false));
for (const sel of ['#filter-group', '#filter-status', '#filter-health']) $(sel).addEventListener('input', () => onFilter(true));
$('#show-all').addEventListener('click', (e) => { e.preventDefault(); go('instances'); });
window.addEventListener('popstate', () => { readUrl(); refreshView(); if (state.selected) loadDetail(state.selected); else render(); });
window.addEventListener('resize', render);

readUrl();
load();
setInterval(fetchSamples, SAMPLES_MS);
setInterval(() => { loadSummary().catch(unreachable); }, SUMMARY_MS);
