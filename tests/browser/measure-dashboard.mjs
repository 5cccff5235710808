// What one dashboard viewer costs, for BENCHMARKS.md ("Operator surfaces"). Not a test: it
// prints figures and asserts nothing.
//
//   node tests/browser/measure-dashboard.mjs HTTP_ADDR REGISTRY_PID [GROUP] [SECONDS]
//
// Against a running registry (e.g. release `sfc registry` loaded by `sfc bench`), it samples the
// registry's CPU (/proc/PID/stat) for SECONDS with no viewer, then opens the dashboard in headless
// chromium, times the first paint (navigation to the first group row), drills into GROUP (as an
// operator would), waits for its rows and their samples, and for SECONDS more counts the bytes
// the page receives (Chromium's encoded bytes, headers and the SSE stream included) and the
// registry's CPU again, then closes the browser and samples the registry's CPU for SECONDS more
// with no viewer (a second baseline: the spread of the two says how noisy the machine is). The
// first paint is both the browser's own first-contentful-paint (the page's frame) and the time
// from navigation to the first overview row (the figures an operator came for). Prints one JSON
// object; scripts/bench-dashboard.sh runs it.

import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium } from 'playwright-core';

const [http, pidArg, group = 'bench', secondsArg = '20'] = process.argv.slice(2);
if (!http || !pidArg) {
  console.error('usage: node tests/browser/measure-dashboard.mjs HTTP_ADDR REGISTRY_PID [GROUP] [SECONDS]');
  process.exit(2);
}
const pid = Number(pidArg);
const seconds = Number(secondsArg);
const ticks = () => {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return Number(f[11]) + Number(f[12]); // utime + stime, in clock ticks (100/s)
};
async function cpuOver(ms) {
  const t0 = ticks(), w0 = Date.now();
  await sleep(ms);
  return ((ticks() - t0) / 100) / ((Date.now() - w0) / 1000) * 100; // percent of one core
}

const idle = await cpuOver(seconds * 1000);
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
const cdp = await page.context().newCDPSession(page);
await cdp.send('Network.enable');
let counting = false, bytes = 0, firstLoad = 0;
const open = new Map(); // requestId -> bytes received so far
const urlOf = new Map(); // requestId -> path
const byPath = {}; // path -> bytes of requests finished in the window
cdp.on('Network.requestWillBeSent', (e) => { urlOf.set(e.requestId, new URL(e.request.url).pathname); });
cdp.on('Network.dataReceived', (e) => { open.set(e.requestId, (open.get(e.requestId) || 0) + e.encodedDataLength); });
cdp.on('Network.loadingFinished', (e) => {
  open.delete(e.requestId);
  if (counting) {
    bytes += e.encodedDataLength;
    const p = urlOf.get(e.requestId) || '?';
    byPath[p] = (byPath[p] || 0) + e.encodedDataLength;
  } else firstLoad += e.encodedDataLength;
});
const t0 = Date.now();
await page.goto(`http://${http}/`);
await page.locator('tr.group-row').first().waitFor({ timeout: 60000 });
const firstPaint = Date.now() - t0;
const fcp = await page.evaluate(() => performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null);
// Where the first paint's time went: each request of the first load (ms from navigation start:
// sent, first byte, done) and when the page's script ran.
const timeline = await page.evaluate(() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const r = (x) => Math.round(x);
  return {
    html: [r(nav.requestStart), r(nav.responseStart), r(nav.responseEnd)],
    dom_content_loaded: r(nav.domContentLoadedEventEnd),
    requests: performance.getEntriesByType('resource').slice(0, 8)
      .map((e) => [new URL(e.name).pathname, r(e.startTime), r(e.responseStart), r(e.responseEnd)]),
    overview_shown: r(performance.now()),
  };
});
const groupClick = Date.now();
await page.click(`tr.group-row[data-group="${group}"]`);
await page.locator('tr.instance').first().waitFor({ timeout: 60000 });
const groupRows = Date.now() - groupClick;
await page.locator('tr.instance svg.spark polyline').first().waitFor({ state: 'attached', timeout: 60000 });
const sseBefore = [...open.values()].reduce((a, b) => a + b, 0);
counting = true;
const viewer = await cpuOver(seconds * 1000);
const sseAfter = [...open.values()].reduce((a, b) => a + b, 0);
const stream = Math.max(0, sseAfter - sseBefore);
bytes += stream;
const rows = await page.$$eval('tr.instance', (r) => r.length);
await browser.close();
const after = await cpuOver(seconds * 1000);
console.log(JSON.stringify({
  first_paint_ms: firstPaint,
  first_contentful_paint_ms: fcp == null ? null : Math.round(fcp),
  first_load_timeline_ms: timeline,
  group_rows_ms: groupRows,
  first_load_bytes: firstLoad,
  window_s: seconds,
  bytes,
  bytes_per_s: Math.round(bytes / seconds),
  bytes_by_path: { ...byPath, '/v1/watch (stream, in the window)': stream },
  rows_in_dom: rows,
  registry_cpu_percent_no_viewer: Number(idle.toFixed(1)),
  registry_cpu_percent_one_viewer: Number(viewer.toFixed(1)),
  registry_cpu_percent_no_viewer_after: Number(after.toFixed(1)),
  loadavg: readFileSync('/proc/loadavg', 'utf8').trim(),
}));
