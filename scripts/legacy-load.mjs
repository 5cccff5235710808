// Loads a registry with legacy records (PROTOCOL.md §15: one TLS connection per document, the
// connection closed after it), so a large fleet exists without holding a connection per
// instance. Used by scripts/bench-dashboard.sh to measure /metrics at 19,000 and 50,000.
//
//   node scripts/legacy-load.mjs ADDR CA_PEM FROM TO [GROUPS] [CONCURRENCY]
//
// Sends a JOIN for instances FROM..TO-1 (hostname h<i>, group g<i % GROUPS>, service svc), each
// with a process and host figures and updateIntervalSeconds 3600 (the longest allowed), so they
// stay online for an hour without another document. The registry answers nothing to a legacy
// document: whether it was recorded is for the caller to check (/v1/summary). Exits 1 if any
// connection failed, with the first error.

import { connect } from 'node:tls';
import { readFileSync } from 'node:fs';

const [addr, caFile, fromArg, toArg, groupsArg = '100', concArg = '64'] = process.argv.slice(2);
const from = Number(fromArg), to = Number(toArg), groups = Number(groupsArg), conc = Number(concArg);
if (!addr || !caFile || !Number.isInteger(from) || !Number.isInteger(to) || from < 0 || to < from
  || !Number.isInteger(groups) || groups < 1 || !Number.isInteger(conc) || conc < 1) {
  console.error('usage: node scripts/legacy-load.mjs ADDR CA_PEM FROM TO [GROUPS >= 1] [CONCURRENCY >= 1]');
  process.exit(2);
}
const at = addr.lastIndexOf(':');
const host = addr.slice(0, at), port = Number(addr.slice(at + 1));
const ca = readFileSync(caFile);

function doc(i) {
  return JSON.stringify({
    action: 'JOIN',
    payload: {
      serviceName: 'svc', groupingKey: `g${i % groups}`, time: new Date().toISOString(),
      metrics: {
        rss: 30_000_000 + (i % 1000) * 4096, heapTotal: 20_000_000, heapUsed: 12_000_000, external: 1_000_000,
        hostname: `h${i}`, numCpus: 2, freemem: 1_000_000_000, loadadv: [0.1, 0.2, 0.3], user: 'bench',
        uptime: 1000, updateIntervalSeconds: 3600,
      },
    },
  });
}

function send(i) {
  return new Promise((ok, fail) => {
    const sock = connect({ host, port, ca }, () => sock.end(doc(i)));
    sock.setTimeout(30_000, () => sock.destroy(new Error(`h${i}: no close within 30 s`)));
    sock.on('error', fail);
    sock.on('close', (hadError) => { if (!hadError) ok(); });
    sock.resume(); // the registry sends nothing back; read to its close
  });
}

let next = from, sent = 0, firstError = null;
const t0 = Date.now();
async function worker() {
  while (next < to && !firstError) {
    const i = next++;
    try { await send(i); sent++; } catch (e) { firstError ??= e; }
  }
}
await Promise.all(Array.from({ length: Math.min(conc, Math.max(1, to - from)) }, worker));
const secs = (Date.now() - t0) / 1000;
console.log(JSON.stringify({ sent, from, to, seconds: Number(secs.toFixed(1)), per_second: Math.round(sent / Math.max(secs, 0.001)) }));
if (firstError) {
  console.error(`legacy-load: ${firstError.message}`);
  process.exit(1);
}
