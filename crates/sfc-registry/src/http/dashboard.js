// The sfc dashboard. Plain browser JavaScript, no dependencies: the fleet comes from the
// registry's JSON API, transitions arrive over Server-Sent Events (/v1/watch) and the figures
// are refreshed every few seconds. Every text from the fleet goes in with textContent.
'use strict';

const state = {
  records: new Map(),   // id -> InstanceRecord
  samples: {},          // id -> [{at, cpu_percent, resident_bytes}]
  registry: null,
  selected: null,       // id shown in the detail view
  detailEvents: [],
  feed: [],
  cursor: 0,
  source: null,
  pending: null,        // {id, command} awaiting the dialog
  result: null,         // {id, text, cls}: the last admin action's outcome
};
const FEED_MAX = 200;
const REFRESH_MS = 2000;
const KINDS = ['joined', 'online', 'offline', 'left', 'evicted', 'health-changed', 'command-sent', 'command-result'];

const $ = (sel) => document.querySelector(sel);

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

async function api(path, opts) {
  const r = await fetch(path, Object.assign({ headers: { accept: 'application/json' } }, opts));
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
  return body;
}

// Sparkline of one figure over the sample ring.
function spark(samples, key, cls, width, height) {
  const pts = (samples || []).filter((s) => s[key] != null);
  const svg = h('svg', { class: 'spark', width, height, viewBox: `0 0 ${width} ${height}`, 'aria-label': key });
  if (pts.length < 2) return svg;
  const max = Math.max(...pts.map((s) => s[key]), key === 'cpu_percent' ? 5 : 1);
  const t0 = pts[0].at, t1 = pts[pts.length - 1].at || t0 + 1;
  const xy = pts.map((s) => {
    const x = ((s.at - t0) / Math.max(1, t1 - t0)) * (width - 2) + 1;
    const y = height - 1 - (s[key] / max) * (height - 2);
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  svg.append(h('polyline', { class: cls, points: xy.join(' ') }));
  return svg;
}

function filters() {
  return {
    q: $('#search').value.trim().toLowerCase(),
    group: $('#filter-group').value,
    status: $('#filter-status').value,
    health: $('#filter-health').value,
  };
}

function matches(r, f) {
  if (f.group && r.group !== f.group) return false;
  if (f.status && r.status !== f.status) return false;
  if (f.health && r.health !== f.health) return false;
  if (!f.q) return true;
  const hay = [r.id, r.service, r.hostname, r.version || '', ...(r.tags || []),
    ...Object.entries(r.metadata || {}).map(([k, v]) => `${k}=${v}`)].join(' ').toLowerCase();
  return hay.includes(f.q);
}

function renderSummary() {
  const all = [...state.records.values()];
  const online = all.filter((r) => r.status === 'online').length;
  const g = state.registry || {};
  const p = g.process || {};
  const s = $('#summary');
  s.replaceChildren(
    h('span', {}, h('b', { id: 'count-online' }, online), ' online / ', h('b', { id: 'count-total' }, all.length), ' instances'),
    h('span', {}, h('b', {}, new Set(all.map((r) => r.group)).size), ' groups'),
    h('span', {}, h('b', {}, (p.reports_per_second || 0).toFixed(1)), ' reports/s'),
    h('span', {}, 'sessions ', h('b', {}, g.sessions ?? '-')),
    h('span', {}, 'registry cpu ', h('b', {}, pct(p.cpu_percent)), '% rss ', h('b', {}, mib(p.resident_bytes)), ' MiB'),
    h('span', {}, 'v', g.version || '?', g.tls ? ' · https' : ''),
  );
  const sel = $('#filter-group');
  const groups = [...new Set(all.map((r) => r.group))].sort();
  const have = [...sel.options].slice(1).map((o) => o.value);
  if (groups.join('\n') !== have.join('\n')) {
    const cur = sel.value;
    sel.replaceChildren(h('option', { value: '' }, 'all groups'), ...groups.map((g) => h('option', { value: g }, g)));
    sel.value = groups.includes(cur) ? cur : '';
  }
}

function row(r) {
  const m = r.metrics || {};
  const proc = m.process || {};
  const samples = state.samples[r.id];
  return h('tr', {
    class: `instance status-${r.status}${state.selected === r.id ? ' selected' : ''}`,
    'data-id': r.id, 'data-status': r.status, 'data-health': r.health,
    onclick: () => select(r.id),
  },
  h('td', {}, h('span', { class: 'dot' }), h('span', { class: 'status' }, r.status),
    r.offline_reason ? h('span', { class: 'reason' }, ` (${r.offline_reason})`) : null),
  h('td', {}, r.instance_id),
  h('td', {}, r.service),
  h('td', {}, h('span', { class: `badge health-${r.health}` }, r.health)),
  h('td', {}, r.hostname),
  h('td', { class: 'num' }, r.pid || '-'),
  h('td', { class: 'num' }, pct(proc.cpu_percent)),
  h('td', {}, spark(samples, 'cpu_percent', 'cpu', 90, 22)),
  h('td', { class: 'num' }, mib(proc.resident_bytes)),
  h('td', {}, spark(samples, 'resident_bytes', 'rss', 90, 22)),
  h('td', { class: 'num' }, ago(r.last_report_at)));
}

function renderFleet() {
  const f = filters();
  const byGroup = new Map();
  for (const r of [...state.records.values()].sort((a, b) => a.id.localeCompare(b.id))) {
    if (!matches(r, f)) continue;
    if (!byGroup.has(r.group)) byGroup.set(r.group, []);
    byGroup.get(r.group).push(r);
  }
  const out = [];
  for (const [g, rs] of byGroup) {
    const on = rs.filter((r) => r.status === 'online').length;
    out.push(h('div', { class: 'group', 'data-group': g },
      h('h2', {}, g, ' ', h('span', { class: 'count' }, `${on}/${rs.length} online`)),
      h('table', {},
        h('thead', {}, h('tr', {}, ...['status', 'instance', 'service', 'health', 'host', 'pid', 'cpu %', 'cpu', 'rss MiB', 'rss', 'last']
          .map((t) => h('th', {}, t)))),
        h('tbody', {}, rs.map(row)))));
  }
  if (!out.length) out.push(h('p', { class: 'empty' }, state.records.size ? 'no instance matches the filters' : 'no instances registered yet'));
  $('#fleet').replaceChildren(...out);
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
    h('a', { href: '#', onclick: (e) => { e.preventDefault(); select(ev.id); } }, ev.id),
    bits.length ? ' ' + bits.join(' · ') : '');
}

function renderDetail() {
  const box = $('#detail');
  const r = state.selected && state.records.get(state.selected);
  if (!r) { box.hidden = true; box.replaceChildren(); return; }
  const m = r.metrics || {}, host = m.host || {}, proc = m.process || {};
  const samples = state.samples[r.id];
  const endpoints = (r.endpoints || []).map((e) => h('div', {}, `${e.name}: ${e.protocol}://${e.host}:${e.port}`));
  const apiLink = r.api ? h('a', { href: r.api.url, target: '_blank', rel: 'noopener noreferrer', class: 'link' }, `${r.api.kind}: ${r.api.url}`) : null;
  const gauges = Object.entries(m.custom || {}).map(([k, v]) => h('div', {}, `${k} = ${v}`));
  const runtime = Object.entries(m.runtime || {}).map(([k, v]) => h('div', {}, `${k} = ${v}`));
  box.hidden = false;
  box.replaceChildren(
    h('h3', { id: 'detail-title' }, h('span', { class: `dot status-${r.status}` }), r.id),
    h('div', { class: 'actions' },
      h('button', { id: 'shutdown', class: 'danger', disabled: r.status !== 'online', onclick: () => ask(r.id, 'shutdown') }, 'shutdown'),
      h('button', { id: 'deregister', disabled: r.status === 'online', onclick: () => ask(r.id, 'deregister') }, 'deregister'),
      h('button', { onclick: () => { state.selected = null; render(); } }, 'close')),
    h('p', { id: 'command-result', role: 'status', class: state.result && state.result.id === r.id ? state.result.cls : null },
      state.result && state.result.id === r.id ? state.result.text : ''),
    dl([
      ['status', `${r.status}${r.offline_reason ? ' (' + r.offline_reason + ')' : ''} since ${clock(r.status_since)}`],
      ['health', h('span', { class: `badge health-${r.health}` }, r.health + (r.health_note ? ': ' + r.health_note : ''))],
      ['service', r.service], ['version', r.version], ['wire', r.wire],
      ['host', r.hostname], ['pid', r.pid || null],
      ['endpoints', endpoints.length ? endpoints : null],
      ['tags', (r.tags || []).length ? r.tags.map((t) => h('span', { class: 'tag' }, t)) : null],
      ['metadata', Object.keys(r.metadata || {}).length ? Object.entries(r.metadata).map(([k, v]) => h('div', {}, `${k} = ${v}`)) : null],
      ['API', apiLink],
      ['TLS identity', r.tls_identity || 'none (no client certificate)'],
      ['connected', r.connected_since ? clock(r.connected_since) : null],
      ['last report', ago(r.last_report_at)],
      ['interval', r.interval_ms + ' ms'],
      ['clock skew', r.clock_skew_ms != null ? r.clock_skew_ms + ' ms' : null],
    ]),
    h('h2', {}, 'process'),
    dl([
      ['cpu', pct(proc.cpu_percent) + ' %'], ['cpu history', spark(samples, 'cpu_percent', 'cpu', 240, 40)],
      ['rss', mib(proc.resident_bytes) + ' MiB'], ['rss history', spark(samples, 'resident_bytes', 'rss', 240, 40)],
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

function render() { renderSummary(); renderFleet(); renderDetail(); renderFeed(); }

async function select(id) {
  state.selected = id;
  state.detailEvents = [];
  render();
  try {
    const d = await api(`/v1/instances/${path(id)}`);
    if (state.selected !== id) return;
    state.records.set(id, d.instance);
    state.samples[id] = d.samples;
    state.detailEvents = d.events;
  } catch (e) { /* evicted meanwhile: the view closes on the next render */ }
  render();
}

function path(id) { return id.split('/').map(encodeURIComponent).join('/'); }

// Applies one transition from the stream.
function apply(ev) {
  if (ev.seq) state.cursor = Math.max(state.cursor, ev.seq);
  if (ev.kind === 'evicted') {
    state.records.delete(ev.id);
    delete state.samples[ev.id];
  } else if (ev.instance) {
    state.records.set(ev.id, ev.instance);
  }
  state.feed.unshift(ev);
  state.feed.length = Math.min(state.feed.length, FEED_MAX);
  if (ev.id === state.selected) state.detailEvents.push(ev);
  render();
}

function connect() {
  if (state.source) state.source.close();
  // Replays everything after the cursor we loaded with, so nothing falls in between; on a
  // reconnect the browser sends Last-Event-ID and the registry resumes from there.
  const src = new EventSource(`/v1/watch?after=${state.cursor}`);
  state.source = src;
  const live = $('#live');
  src.onopen = () => { live.textContent = 'live'; live.className = 'live on'; };
  src.onerror = () => { live.textContent = 'reconnecting'; live.className = 'live off'; };
  for (const k of KINDS) src.addEventListener(k, (m) => { try { apply(JSON.parse(m.data)); } catch (_) { /* skip */ } });
  src.addEventListener('lagged', () => load());
}

async function refresh() {
  try {
    const [reg, list, samples] = await Promise.all([api('/v1/registry'), api('/v1/instances'), api('/v1/samples')]);
    state.registry = reg;
    state.records = new Map(list.map((r) => [r.id, r]));
    state.samples = samples;
    render();
  } catch (e) {
    const live = $('#live');
    live.textContent = 'registry unreachable';
    live.className = 'live off';
  }
}

async function load() {
  try {
    state.registry = await api('/v1/registry');
    state.cursor = state.registry.events_cursor;
    const recent = await api(`/v1/events?after=${Math.max(0, state.cursor - 50)}&limit=50`);
    state.feed = recent.events.slice().reverse();
  } catch (e) { /* refresh() reports it */ }
  await refresh();
  connect();
}

// The admin dialog: shutdown or deregister, with the token (kept for this tab only).
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
      const r = await api(`/v1/instances/${path(id)}/commands`, {
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
for (const sel of ['#search', '#filter-group', '#filter-status', '#filter-health']) {
  $(sel).addEventListener('input', renderFleet);
}
load();
setInterval(refresh, REFRESH_MS);
