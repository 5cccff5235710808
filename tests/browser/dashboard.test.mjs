// The dashboard in a real browser: Debian's headless chromium driven by playwright-core, a real
// `sfc registry` and two real example services on loopback. It checks that both show online,
// kills one (SIGKILL by PID) and sees it turn offline without a reload, then shuts the other
// down from the page through the token dialog, and saves a screenshot.
//
// Run from the repository root after `cargo build --workspace`: `node --test tests/browser/`.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const bin = join(root, 'target', 'debug');
const out = process.env.SFC_TEST_OUT || join(root, 'target', 'test-out');
const TOKEN = 'browser-test-token';
const STEP = 20_000; // the longest any single expectation may wait

const started = []; // child processes this test started, stopped by PID in after()
let dataDir, registry, httpAddr, browser, page; // browser: a persistent context

function start(cmd, args, env) {
  const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  started.push(child);
  child.stderr.on('data', (d) => { if (process.env.SFC_TEST_VERBOSE) process.stderr.write(d); });
  return child;
}

// Reads stdout lines until both address lines of the registry arrived.
function registryAddresses(child) {
  return new Promise((ok, fail) => {
    const found = {};
    const timer = setTimeout(() => fail(new Error('the registry printed no address lines within 20s')), STEP);
    child.on('exit', (code) => fail(new Error(`the registry exited early with ${code}`)));
    createInterface({ input: child.stdout }).on('line', (line) => {
      let m = line.match(/^sfc registry listening on (\S+)/);
      if (m) found.protocol = m[1];
      m = line.match(/^sfc http listening on (\S+)/);
      if (m) found.http = m[1];
      if (found.protocol && found.http) { clearTimeout(timer); ok(found); }
    });
  });
}

function service(id) {
  const child = start(join(bin, 'sfc-example-service'), ['--group', 'shop', '--instance-id', id, '--interval', '500ms'], {
    SFC_REGISTRY: registry.protocol,
    SFC_CA: join(dataDir, 'tls', 'ca.pem'),
  });
  child.stdout.resume();
  return child;
}

function exited(child) {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((ok) => child.on('exit', (code) => ok(code)));
}

const row = (id, status) => page.locator(`tr.instance[data-id="${id}"]${status ? `[data-status="${status}"]` : ''}`);

before(async () => {
  mkdirSync(out, { recursive: true });
  dataDir = mkdtempSync(join(tmpdir(), 'sfc-browser-'));
  const reg = start(join(bin, 'sfc'), ['registry', '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--data-dir', dataDir], {
    SFC_ADMIN_TOKEN: TOKEN, RUST_LOG: 'warn',
  });
  registry = await registryAddresses(reg);
  httpAddr = registry.http;
  // A fresh profile each run (playwright passes it as --user-data-dir).
  browser = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), 'sfc-chromium-')), {
    executablePath: '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1400, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  page = browser.pages()[0] || await browser.newPage();
  page.setDefaultTimeout(STEP);
});

after(async () => {
  if (page) await page.screenshot({ path: join(out, 'dashboard-last.png'), fullPage: true }).catch(() => {});
  if (browser) await browser.close();
  for (const c of started) {
    if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  }
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

test('dashboard shows the fleet live and shuts an instance down', async () => {
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  const requests = [];
  page.on('request', (r) => requests.push(r.url()));

  const a = service('a');
  const b = service('b');
  await page.goto(`http://${httpAddr}/`);

  // Both online.
  await row('shop/a', 'online').waitFor();
  await row('shop/b', 'online').waitFor();
  await page.locator('#live.on').waitFor();
  assert.equal(await page.locator('#count-online').textContent(), '2');

  // Search filters the table.
  await page.fill('#search', 'shop/b');
  await row('shop/a').waitFor({ state: 'detached' });
  await page.fill('#search', '');
  await row('shop/a').waitFor();

  // Kill one: it turns offline on the page without a reload.
  const navigations = [];
  page.on('framenavigated', (f) => { if (f === page.mainFrame()) navigations.push(f.url()); });
  process.kill(a.pid, 'SIGKILL');
  await exited(a);
  await row('shop/a', 'offline').waitFor();
  assert.deepEqual(navigations, [], 'the page reloaded');
  await page.locator('#feed li[data-kind="offline"]').first().waitFor();

  // Shut the other down from the detail view; the dialog asks for the token.
  await row('shop/b').click();
  await page.locator('#detail-title', { hasText: 'shop/b' }).waitFor();
  // A flat line has no height, so wait for it to exist rather than be visible.
  await page.locator('#detail svg.spark polyline').first().waitFor({ state: 'attached' });
  await page.click('#shutdown');
  await page.locator('#confirm-dialog[open]').waitFor();
  await page.fill('#token', 'not-the-token');
  await page.fill('#reason', 'browser test');
  await page.click('#confirm');
  await page.locator('#confirm-error', { hasText: 'wrong admin token' }).waitFor();
  await page.fill('#token', TOKEN);
  await page.click('#confirm');
  await page.locator('#command-result', { hasText: 'shutdown acknowledged' }).waitFor();
  assert.equal(await exited(b), 0, 'the example service did not exit cleanly on shutdown');
  await row('shop/b', 'left').waitFor();
  await page.locator('#detail-events li[data-kind="command-sent"]', { hasText: `by token@127.0.0.1` }).waitFor();

  await page.screenshot({ path: join(out, 'dashboard.png'), fullPage: true });

  assert.deepEqual(errors, [], 'the page threw');
  const foreign = requests.filter((u) => !u.startsWith(`http://${httpAddr}/`) && !u.startsWith('data:'));
  assert.deepEqual(foreign, [], 'the page fetched something from elsewhere');
});
