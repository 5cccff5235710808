// The dashboard in a real browser: Debian's headless chromium driven by playwright-core, a real
// `sfc registry` and two real example services on loopback. It opens on the groups overview,
// drills into the group, checks that both show online, kills one (SIGKILL by PID) and sees it
// turn offline without a reload, then shuts the other down from the page through the token
// dialog, opens the page's URL (group and instance in it) in a second tab and sees the same
// view, and saves a screenshot.
// A second test connects four protocol-v1 services of its own (a few lines over node:tls, for
// health, tags, metadata and hostnames the example service does not set), checks that every
// filter of the toolbar (search, group, status, health, and all of them together) shows exactly
// the matching rows and hides the others, then deregisters an offline instance through the
// deregister button and the token dialog and sees its record gone.
// A third opens an instance whose hostname, tags and metadata are HTML and script, through a
// linked URL, and checks they show as text and never become elements.
//
// Run from the repository root after `cargo build --workspace`: `node --test tests/browser/`.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { start, registryAddresses, rawService as fleetRawService, launchBrowser, stopStarted } from './support/fleet.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const bin = join(root, 'target', 'debug');
const out = process.env.SFC_TEST_OUT || join(root, 'target', 'test-out');
const TOKEN = 'browser-test-token';
const STEP = 20_000; // the longest any single expectation may wait

let dataDir, registry, httpAddr, browser, page; // browser: a persistent context

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

// A protocol-v1 service of the test's own (support/fleet.mjs) in the registry's shop, whose
// reports carry `browser test <health>` as their note.
function rawService({ group, instanceId, hostname, health, tags, metadata }) {
  return fleetRawService(registry.protocol, join(dataDir, 'tls', 'ca.pem'),
    { group, instanceId, hostname, health, note: `browser test ${health}`, tags, metadata });
}

async function apiJson(path) {
  const r = await fetch(`http://${httpAddr}${path}`, { headers: { accept: 'application/json' } });
  return { status: r.status, body: await r.json().catch(() => null) };
}

// Waits until the rows in the table are exactly the records (from the JSON API) that `want`
// accepts, i.e. the matching ones shown and every other one hidden; fails with both lists.
async function expectShown(what, want) {
  const deadline = Date.now() + STEP;
  let shown, expected, records;
  for (;;) {
    records = (await apiJson('/v1/instances')).body;
    expected = records.filter(want).map((r) => r.id).sort();
    shown = (await page.$$eval('tr.instance', (rows) => rows.map((r) => r.dataset.id))).sort();
    if (JSON.stringify(shown) === JSON.stringify(expected) || Date.now() > deadline) break;
    await sleep(100);
  }
  const seen = records.map((r) => `${r.id} ${r.status} ${r.health}`).join(', ');
  assert.deepEqual(shown, expected, `${what}: rows shown (the registry has: ${seen})`);
  return shown;
}

const row = (id, status) => page.locator(`tr.instance[data-id="${id}"]${status ? `[data-status="${status}"]` : ''}`);

before(async () => {
  mkdirSync(out, { recursive: true });
  dataDir = mkdtempSync(join(tmpdir(), 'sfc-browser-'));
  const reg = start(join(bin, 'sfc'), ['registry', '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--data-dir', dataDir], {
    SFC_ADMIN_TOKEN: TOKEN, RUST_LOG: 'warn',
  });
  registry = await registryAddresses(reg, STEP);
  httpAddr = registry.http;
  ({ browser, page } = await launchBrowser(STEP));
});

after(async () => {
  if (page) await page.screenshot({ path: join(out, 'dashboard-last.png'), fullPage: true }).catch(() => {});
  if (browser) await browser.close();
  stopStarted();
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

  // The overview lists the group; a click drills into it.
  await page.locator('tr.group-row[data-group="shop"] td[data-k="online"]', { hasText: /^2$/ }).waitFor();
  await page.click('tr.group-row[data-group="shop"]');
  assert.match(page.url(), /[?&]group=shop(&|$)/, 'the group is not in the URL');

  // Both online.
  await row('shop/a', 'online').waitFor();
  await row('shop/b', 'online').waitFor();
  await page.locator('#live.on').waitFor();
  await page.locator('#count-online', { hasText: /^2$/ }).waitFor();

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

  // The view is in the URL: a second tab opened on it shows the group and the instance.
  const url = page.url();
  assert.match(url, /[?&]instance=shop%2Fb(&|$)/, `the selected instance is not in the URL: ${url}`);
  const second = await browser.newPage();
  try {
    await second.goto(url);
    await second.locator('#detail-title', { hasText: 'shop/b' }).waitFor();
    await second.locator('tr.instance[data-id="shop/a"][data-status="offline"]').waitFor();
    assert.equal(await second.inputValue('#filter-group'), 'shop');
  } finally {
    await second.close();
  }

  assert.deepEqual(errors, [], 'the page threw');
  const foreign = requests.filter((u) => !u.startsWith(`http://${httpAddr}/`) && !u.startsWith('data:'));
  assert.deepEqual(foreign, [], 'the page fetched something from elsewhere');
});

test('dashboard filters the fleet and deregisters an offline instance', async () => {
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  await rawService({ group: 'pay', instanceId: 'p1', hostname: 'host-p1', health: 'warning', tags: ['blue-tag'], metadata: { zone: 'eu-west-9' } });
  await rawService({ group: 'pay', instanceId: 'p2', hostname: 'host-p2', health: 'critical' });
  const p3 = await rawService({ group: 'pay', instanceId: 'p3', hostname: 'host-p3', health: 'passing' });
  await rawService({ group: 'web', instanceId: 'w1', hostname: 'host-w1', health: 'passing' });
  // Every instance, not the overview: linkable as ?view=instances.
  await page.goto(`http://${httpAddr}/?view=instances`);
  await page.evaluate(() => sessionStorage.clear()); // the token dialog starts empty
  for (const id of ['pay/p1', 'pay/p2', 'pay/p3', 'web/w1']) await row(id, 'online').waitFor();
  await page.locator('tr.instance[data-id="pay/p1"][data-health="warning"]').waitFor();
  await page.locator('tr.instance[data-id="pay/p2"][data-health="critical"]').waitFor();

  // p3 drops its connection: offline at once.
  p3.crash();
  await row('pay/p3', 'offline').waitFor();
  const all = await expectShown('no filter', () => true);
  assert.ok(all.length >= 4, `all rows: ${all}`);

  // Each filter alone: exactly the matching rows. The includes/excludes keep each check from
  // passing with a filter that shows everything or nothing.
  const check = async (what, want, mustShow, mustHide) => {
    const shown = await expectShown(what, want);
    for (const id of mustShow) assert.ok(shown.includes(id), `${what}: ${id} is not shown (shown: ${shown})`);
    for (const id of mustHide) assert.ok(!shown.includes(id), `${what}: ${id} is shown (shown: ${shown})`);
  };
  await page.selectOption('#filter-group', 'pay');
  await check('group pay', (r) => r.group === 'pay', ['pay/p1', 'pay/p2', 'pay/p3'], ['web/w1']);
  assert.match(await page.locator('.group[data-group="pay"] h2 .count').textContent(), /^2\/3 online$/);
  await page.selectOption('#filter-group', 'web');
  await check('group web', (r) => r.group === 'web', ['web/w1'], ['pay/p1', 'pay/p3']);
  await page.selectOption('#filter-group', '');

  await page.selectOption('#filter-status', 'offline');
  await check('status offline', (r) => r.status === 'offline', ['pay/p3'], ['pay/p1', 'pay/p2', 'web/w1']);
  await page.selectOption('#filter-status', 'online');
  await check('status online', (r) => r.status === 'online', ['pay/p1', 'pay/p2', 'web/w1'], ['pay/p3']);
  await page.selectOption('#filter-status', '');

  await page.selectOption('#filter-health', 'warning');
  await check('health warning', (r) => r.health === 'warning', ['pay/p1'], ['pay/p2', 'pay/p3', 'web/w1']);
  await page.selectOption('#filter-health', 'critical');
  await check('health critical', (r) => r.health === 'critical', ['pay/p2'], ['pay/p1', 'pay/p3', 'web/w1']);
  await page.selectOption('#filter-health', 'passing');
  await check('health passing', (r) => r.health === 'passing', ['pay/p3', 'web/w1'], ['pay/p1', 'pay/p2']);
  await page.selectOption('#filter-health', '');

  // Search: id, tag, metadata (key=value), hostname, case-insensitive; nothing matching says so.
  const searches = [
    ['PAY/', ['pay/p1', 'pay/p2', 'pay/p3']],
    ['blue-tag', ['pay/p1']],
    ['zone=eu-west-9', ['pay/p1']],
    ['host-p2', ['pay/p2']],
  ];
  for (const [q, ids] of searches) {
    await page.fill('#search', q);
    await check(`search ${q}`, (r) => ids.includes(r.id), ids, ['web/w1']);
  }
  await page.fill('#search', 'no-such-instance-anywhere');
  await check('search without a match', () => false, [], ['pay/p1', 'web/w1']);
  await page.locator('#fleet p.empty', { hasText: 'no instance matches the filters' }).waitFor();

  // All together: search, group, status and health each narrow the rows.
  await page.fill('#search', 'host-');
  await page.selectOption('#filter-group', 'pay');
  await page.selectOption('#filter-health', 'passing');
  await check('search host- + group pay + health passing', (r) => r.id === 'pay/p3', ['pay/p3'], ['pay/p1', 'web/w1']);
  await page.selectOption('#filter-status', 'online');
  await check('... + status online', () => false, [], ['pay/p3']);
  await page.fill('#search', '');
  for (const sel of ['#filter-group', '#filter-status', '#filter-health']) await page.selectOption(sel, '');
  await expectShown('filters cleared', () => true);

  // Deregister: refused for an online instance (the button is disabled), done for an offline
  // one through the token dialog; a wrong token leaves the record in place.
  await row('pay/p1').click();
  await page.locator('#detail-title', { hasText: 'pay/p1' }).waitFor();
  assert.equal(await page.locator('#deregister').isDisabled(), true, 'deregister is enabled for an online instance');
  await row('pay/p3').click();
  await page.locator('#detail-title', { hasText: 'pay/p3' }).waitFor();
  await page.locator('#deregister:not([disabled])').waitFor();
  const total = Number(await page.locator('#count-total').textContent());
  await page.click('#deregister');
  await page.locator('#confirm-dialog[open]').waitFor();
  assert.equal(await page.locator('#confirm-title').textContent(), 'deregister');
  // dashboard.js sets `hidden` on the reason field for deregister (the call takes no reason);
  // the field must not show.
  assert.equal(await page.locator('#reason-label').isHidden(), true, 'the deregister dialog shows the reason field');
  assert.equal(await page.inputValue('#token'), '', 'the token field is not empty');
  await page.fill('#token', 'not-the-token');
  await page.click('#confirm');
  await page.locator('#confirm-error', { hasText: 'wrong admin token' }).waitFor();
  assert.equal((await apiJson('/v1/instances/pay/p3')).status, 200, 'a wrong token removed the record');
  await page.fill('#token', TOKEN);
  await page.click('#confirm');
  await page.locator('#confirm-dialog').waitFor({ state: 'hidden' });
  await row('pay/p3').waitFor({ state: 'detached' });
  await page.locator('#detail').waitFor({ state: 'hidden' });
  await page.locator('#feed li[data-kind="evicted"]', { hasText: 'pay/p3' })
    .filter({ hasText: 'deregistered' }).filter({ hasText: 'by token@127.0.0.1' }).waitFor();
  await page.locator('#count-total', { hasText: String(total - 1) }).waitFor();
  assert.equal((await apiJson('/v1/instances/pay/p3')).status, 404, 'the record is still in the registry');
  await expectShown('after deregistering', () => true);
  for (const id of ['pay/p1', 'pay/p2', 'web/w1']) await row(id, 'online').waitFor();

  await page.screenshot({ path: join(out, 'dashboard-filters.png'), fullPage: true });
  assert.deepEqual(errors, [], 'the page threw');
});

test('dashboard shows what instances report as text, never as markup', async () => {
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  const markup = '<img src=x id=pwned-host>';
  await rawService({
    group: 'xss', instanceId: 'i1', hostname: markup, health: 'passing',
    tags: ['<b id=pwned-tag>bold</b>'], metadata: { note: '<script id=pwned-script>window.pwned = 1</script>' },
  });
  // Straight to the instance through the URL, as a shared link would.
  await page.goto(`http://${httpAddr}/?group=xss&instance=xss%2Fi1`);
  await row('xss/i1', 'online').waitFor();
  await page.locator('#detail-title', { hasText: 'xss/i1' }).waitFor();
  await page.locator('tr.instance[data-id="xss/i1"] td', { hasText: markup }).waitFor();
  await page.locator('#detail dd', { hasText: '<script id=pwned-script>' }).waitFor();
  assert.equal(await page.locator('#pwned-host, #pwned-tag, #pwned-script').count(), 0, 'fleet text became markup');
  assert.equal(await page.evaluate(() => window.pwned), undefined);
  assert.deepEqual(errors, [], 'the page threw');
});

test('the instance view follows the watch: a health change shows, the record is read once', async () => {
  const errors = [];
  const onError = (e) => errors.push(e.message);
  page.on('pageerror', onError);
  const asked = []; // path and query of every request the page makes
  const onRequest = (r) => { const u = new URL(r.url()); asked.push(u.pathname + u.search); };
  page.on('request', onRequest);
  const h1 = await fleetRawService(registry.protocol, join(dataDir, 'tls', 'ca.pem'),
    { group: 'live', instanceId: 'h1', hostname: 'host-h1', health: 'passing' });
  const detailAsks = () => asked.filter((p) => p.startsWith('/v1/instances/live/h1')).length;
  const samplesAsks = () => asked.filter((p) => p.startsWith('/v1/samples?') && p.includes('live%2Fh1')).length;

  // A linked instance view: the record is read once.
  await page.goto(`http://${httpAddr}/?instance=live%2Fh1`);
  await page.locator('#detail-title', { hasText: 'live/h1' }).waitFor();
  await page.locator('#detail .badge.health-passing').waitFor();
  await page.locator('#live.on').waitFor();
  assert.equal(detailAsks(), 1, `the instance was read ${detailAsks()} times on load`);

  // The health change comes by the watch stream.
  h1.setHealth('critical', 'gone critical');
  await page.locator('#detail .badge.health-critical', { hasText: 'gone critical' }).waitFor();
  await page.locator('#detail-events li[data-kind="health-changed"]').waitFor();

  // A window counted in the page's own ticks rather than in time: four more sample requests
  // for the instance (one per 2 s tick, so 6 s or more, past the 5 s at which the page used to
  // read the record again). The record is still read only once; the samples keep coming, each
  // asking only for what is newer than what the page has.
  const s0 = samplesAsks();
  const deadline = Date.now() + STEP;
  while (samplesAsks() < s0 + 4 && Date.now() < deadline) await sleep(100);
  assert.ok(samplesAsks() >= s0 + 4, `the page asked for the instance's samples ${samplesAsks() - s0} times`);
  const all = asked.filter((p) => p.startsWith('/v1/instances/live/h1') || p.includes('live%2Fh1'));
  assert.equal(detailAsks(), 1, `the page polled the instance: ${JSON.stringify(all)}`);
  const since = asked.filter((p) => p.startsWith('/v1/samples?') && p.includes('live%2Fh1')).slice(-4)
    .map((p) => Number(new URLSearchParams(p.slice(p.indexOf('?'))).get('since')));
  assert.ok(since.every((t) => t > 0), `sample requests that asked for the whole ring: ${since}`);

  page.off('request', onRequest);
  page.off('pageerror', onError);
  assert.deepEqual(errors, [], 'the page threw');
});
