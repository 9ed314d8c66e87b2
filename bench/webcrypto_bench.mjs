// Why is the browser's seal slow? AES-256-GCM through WebCrypto measured in
// isolation (docs/console.md "Figures", "Chromium's AES-GCM"):
//   - node's WebCrypto (OpenSSL 3 underneath) = the reference;
//   - Debian's Chromium through playwright-core, as the tests launch it,
//     and with other launch flags (headless modes, GPU, the flags
//     playwright adds), each on a loopback page (a secure context);
// each doing the same work: one 32 MiB encrypt; 32 encrypts of 1 MiB one
// after another; the same 32 at once; the 32 MiB in chunks of 64, 256, 512
// and 960 KiB; the first touch of 32 MiB of fresh memory and a second touch
// of the same; SHA-256 of 32 MiB; in Chromium also the 32 encrypts inside a
// dedicated Worker and the transfer of 32 x 1 MiB ArrayBuffers to a Worker
// and back without crypto (is the time in the transfers?). `openssl speed
// -elapsed` (wall clock, as here; without -elapsed it divides by CPU time).
// Warm-up first, then A B B A over the variants; the median and spread of
// each, and the ratio to node's figure, with the load average.
//
//   node bench/webcrypto_bench.mjs [--rounds N] [--mib N]
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { webcrypto } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';

const repo = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const require = createRequire(path.join(repo, 'tools/console-test/package.json'));
const { chromium } = require('playwright-core');
const argv = process.argv.slice(2);
const opt = (name, dflt) => { const i = argv.indexOf(`--${name}`); return i >= 0 ? argv[i + 1] : dflt; };
const ROUNDS = Number(opt('rounds', 2));
const MIB = Number(opt('mib', 32));
const load = () => fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };

// The measured work, as source text run both in node and in the page.
// Returns seconds per case.
const WORK = `async (MIB) => {
  const subtle = globalThis.crypto.subtle;
  const M = 1 << 20;
  const key = await subtle.generateKey({ name: 'AES-GCM', length: 256 }, false, ['encrypt']);
  const big = new Uint8Array(MIB * M);
  for (let o = 0; o < big.length; o += 65536) globalThis.crypto.getRandomValues(big.subarray(o, o + 65536));
  const chunks = Array.from({ length: MIB }, (_, i) => big.slice(i * M, (i + 1) * M));
  const iv = (i) => { const v = new Uint8Array(12); new DataView(v.buffer).setUint32(8, i); return v; };
  const now = () => performance.now() / 1000;
  const r = {};
  let t = now(); await subtle.encrypt({ name: 'AES-GCM', iv: iv(0) }, key, big); r.one_big = now() - t;
  t = now(); for (let i = 0; i < MIB; i++) await subtle.encrypt({ name: 'AES-GCM', iv: iv(i) }, key, chunks[i]); r.seq_1mib = now() - t;
  t = now(); await Promise.all(chunks.map((c, i) => subtle.encrypt({ name: 'AES-GCM', iv: iv(i) }, key, c))); r.par_1mib = now() - t;
  t = now(); await subtle.digest('SHA-256', big); r.sha256 = now() - t;
  // The same 32 MiB sealed in smaller chunks, one call each, one after another.
  for (const kib of [64, 256, 512, 960]) {
    const n = Math.ceil(big.length / (kib << 10));
    t = now();
    for (let i = 0; i < n; i++) await subtle.encrypt({ name: 'AES-GCM', iv: iv(i) }, key, big.subarray(i * (kib << 10), Math.min(big.length, (i + 1) * (kib << 10))));
    r['seq_' + kib + 'kib'] = now() - t;
  }
  // Memory: the first touch of fresh pages, and touching them again.
  t = now(); const fresh = new Uint8Array(MIB * M); fresh.fill(1); r.first_touch = now() - t;
  t = now(); fresh.fill(2); r.second_touch = now() - t;
  if (typeof Worker !== 'undefined' && typeof document !== 'undefined') {
    const src = 'onmessage = async (e) => { const { op, key, bufs } = e.data; const out = [];' +
      ' const t = performance.now();' +
      ' for (let i = 0; i < bufs.length; i++) { const iv = new Uint8Array(12); new DataView(iv.buffer).setUint32(8, i);' +
      '   out.push(op === "enc" ? await crypto.subtle.encrypt({ name: "AES-GCM", iv }, key, bufs[i]) : bufs[i]); }' +
      ' const inside = (performance.now() - t) / 1000;' +
      ' postMessage({ out, inside }, out); };';
    const w = new Worker(URL.createObjectURL(new Blob([src], { type: 'text/javascript' })));
    const run = (op) => new Promise((res) => {
      const bufs = chunks.map((c) => c.slice().buffer);
      const t0 = now();
      w.onmessage = (e) => res({ total: now() - t0, inside: e.data.inside });
      w.postMessage({ op, key, bufs }, bufs);
    });
    const enc = await run('enc'); r.worker_seq_1mib = enc.total; r.worker_seq_1mib_inside = enc.inside;
    r.worker_transfer_only = (await run('echo')).total;
    w.terminate();
  }
  return r;
}`;

const server = http.createServer((req, res) => { res.writeHead(200, { 'Content-Type': 'text/html' }); res.end('<!doctype html><title>webcrypto bench</title>'); });
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const url = `http://localhost:${server.address().port}/`;

// Chromium variants: how the tests launch it, and the alternatives asked about.
const variants = {
  'chromium as the tests launch it (playwright headless, --no-sandbox)': { args: ['--no-sandbox'] },
  'chromium --headless=new': { args: ['--no-sandbox', '--headless=new'] },
  // (Not measurable here: the sandbox, which Chromium refuses as root, and
  // no playwright default args, without which playwright cannot drive it.)
};
const only = opt('variants', null);
const chosen = Object.entries(variants).filter(([, ], i) => !only || only.split(',').includes(String(i)));

async function inChromium(v) {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', ...v });
  try {
    const page = await (await browser.newContext()).newPage();
    await page.goto(url);
    return await page.evaluate(`(${WORK})(${MIB})`);
  } finally { await browser.close(); }
}
const inNode = () => (0, eval)(`(${WORK})`)(MIB);

console.log(`webcrypto_bench: AES-256-GCM over ${MIB} MiB, ${ROUNDS} round(s) A B B A; load average before: ${load()}`);
let sslSpeed = '';
try {
  sslSpeed = execFileSync('openssl', ['speed', '-evp', 'aes-256-gcm', '-bytes', String(1 << 20), '-seconds', '2'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
    .split('\n').filter((l) => l.startsWith('AES-256-GCM') || l.startsWith('aes-256-gcm')).pop() || '';
} catch { /* openssl speed optional */ }
const results = { node: [] };
for (const [name] of chosen) results[name] = [];
// Warm-up: each once.
await inNode(); for (const [, v] of chosen) await inChromium(v);
for (let r = 0; r < ROUNDS; r++) {
  results.node.push(await inNode());
  for (const [name, v] of chosen) results[name].push(await inChromium(v));
  for (const [name, v] of [...chosen].reverse()) results[name].push(await inChromium(v));
  results.node.push(await inNode());
}
const cases = ['one_big', 'seq_1mib', 'par_1mib', 'seq_64kib', 'seq_256kib', 'seq_512kib', 'seq_960kib', 'first_touch', 'second_touch', 'sha256', 'worker_seq_1mib', 'worker_seq_1mib_inside', 'worker_transfer_only'];
const ref = Object.fromEntries(cases.map((c) => [c, median(results.node.map((x) => x[c]).filter((x) => x !== undefined))]));
for (const [name, runs] of Object.entries(results)) {
  console.log(`\n${name}:`);
  for (const c of cases) {
    const xs = runs.map((x) => x[c]).filter((x) => x !== undefined);
    if (!xs.length) continue;
    const m = median(xs);
    const refc = c.startsWith('worker') ? ref.seq_1mib : ref[c];
    if (!refc) continue;
    console.log(`  ${c.padEnd(24)} median ${m.toFixed(3)} s (${Math.min(...xs).toFixed(3)}..${Math.max(...xs).toFixed(3)}, n=${xs.length}), ${(MIB / m).toFixed(0)} MiB/s, ${(m / refc).toFixed(2)}x node`);
  }
}
console.log(`\nopenssl speed -elapsed -evp aes-256-gcm (1 MiB blocks, 1000s of bytes/s): ${sslSpeed.trim()}`);
console.log(`load average after: ${load()}`);
server.close();
process.exit(0);
