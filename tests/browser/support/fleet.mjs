// Shared by the browser tests (dashboard.test.mjs, large-fleet.test.mjs): the processes a test
// starts (stopped by PID in its after()), the registry's address lines, protocol-v1 services of
// the test's own over node:tls, and the headless chromium. Not a test file itself (`node --test
// tests/browser/` runs only the *.test.mjs files).

import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { mkdtempSync, readFileSync } from 'node:fs';
import { connect as tlsConnect } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const started = []; // child processes this test file started
const rawClients = []; // sessions of rawService()

export function start(cmd, args, env) {
  const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  started.push(child);
  child.stderr.on('data', (d) => { if (process.env.SFC_TEST_VERBOSE) process.stderr.write(d); });
  return child;
}

// Reads stdout lines until both address lines of the registry arrived, within `step` ms.
export function registryAddresses(child, step) {
  return new Promise((ok, fail) => {
    const found = {};
    const timer = setTimeout(() => fail(new Error(`the registry printed no address lines within ${step / 1000}s`)), step);
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

// A protocol-v1 service over TLS to `address` (host:port), trusting the CA in `caFile`
// (PROTOCOL.md §3-§7: preamble, length-prefixed JSON frames, hello, then a report every 500 ms
// with the given health and, if given, health note). Resolves once the registry sent its
// welcome; `crash()` drops the connection without a leave (the registry marks it offline);
// `setHealth(health, note)` reports the new health at once and in every report after.
export function rawService(address, caFile, { group, instanceId, hostname, health, note, tags, metadata }) {
  const at = address.lastIndexOf(':');
  const sock = tlsConnect({
    host: address.slice(0, at), port: Number(address.slice(at + 1)),
    ca: readFileSync(caFile),
  });
  const send = (msg) => {
    const payload = Buffer.from(JSON.stringify(msg));
    const head = Buffer.alloc(4);
    head.writeUInt32BE(payload.length);
    sock.write(Buffer.concat([head, payload]));
  };
  let timer = null, seq = 0;
  const report = () => send({ type: 'report', seq: ++seq, sent_at: Date.now(), health, health_note: note, metrics: {} });
  const client = {
    crash() { clearInterval(timer); sock.destroy(); },
    setHealth(h, n) { health = h; note = n; report(); },
  };
  rawClients.push(client);
  return new Promise((ok, fail) => {
    let buf = Buffer.alloc(0), preamble = false;
    sock.on('error', fail);
    sock.on('close', () => { clearInterval(timer); fail(new Error(`${group}/${instanceId}: connection closed before welcome`)); });
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (!preamble && buf.length >= 8) { preamble = true; buf = buf.subarray(8); }
      while (preamble && buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
        const n = buf.readUInt32BE(0);
        const msg = JSON.parse(buf.subarray(4, 4 + n).toString());
        buf = buf.subarray(4 + n);
        if (msg.type === 'welcome') { report(); timer = setInterval(report, 500); ok(client); }
        else if (msg.type === 'error') fail(new Error(`${group}/${instanceId}: ${JSON.stringify(msg)}`));
      }
    });
    sock.write(Buffer.from([0x53, 0x46, 0x43, 0x50, 0, 1, 0, 1]));
    send({
      type: 'hello', id: 1, role: 'service', codecs: ['json'], interval_ms: 2000, client: 'browser-test/0',
      registration: { group, instance_id: instanceId, service: `${group}-api`, hostname, pid: 4242, tags, metadata },
    });
  });
}

// Debian's headless chromium with a fresh profile (playwright passes it as --user-data-dir), and
// its page, whose expectations wait `step` ms at the most.
export async function launchBrowser(step) {
  const browser = await chromium.launchPersistentContext(mkdtempSync(join(tmpdir(), 'sfc-chromium-')), {
    executablePath: '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1400, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const page = browser.pages()[0] || await browser.newPage();
  page.setDefaultTimeout(step);
  return { browser, page };
}

// Drops every rawService() session and SIGKILLs every process start() started (by its PID).
export function stopStarted() {
  for (const c of rawClients) c.crash();
  for (const c of started) {
    if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  }
}
