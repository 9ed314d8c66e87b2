// Sealing and uploading in the browser against the CLI (issue 20, figures in
// docs/console.md). One run:
//   1. makes a SIZE-MiB file of random data (default 1024) and, with openssl,
//      an RSA-3072 recipient and a P-256 signing key with a certificate;
//   2. seal, in the order A B B A (--pairs times):
//        A  vmseal seal FILE --pubkey rsa.pub ... -o out.ova
//        B  Chromium (playwright-core, Debian's chromium) seals the same File
//           with the console's js/seal.js into a Blob (same package format;
//           chunks sealed in Web Workers, the manifest digest in another);
//   3. upload (with `vmseal demo --keep` running: a real portal over TLS),
//      A B B A: A `vmseal customer upload` of a sealed package, B the
//      console's uploader (64 MiB pieces sent as Blob slices, the SHA-256
//      in a Worker alongside) of the same bytes, both as the same customer;
//      the portal verifies and stores each;
//   4. prints the median and spread of each and the ratio B/A beside it,
//      with the load average.
//
//   node bench/console_bench.mjs [--size-mib N] [--pairs N] [--vmseal PATH]
//        [--no-seal] [--no-upload] [--upload-mib N] [--chunk-kib N]
//        [--warmup-mib N]
// --chunk-kib: the stream chunk size both A and B seal with (default 1024,
// the format's default); --warmup-mib: the size of the warm-up seal and
// upload (default: the measured size).
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import http from 'node:http';
import { createRequire } from 'node:module';

const repo = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const require = createRequire(path.join(repo, 'tools/console-test/package.json'));
const { chromium } = require('playwright-core');
const argv = process.argv.slice(2);
const opt = (name, dflt) => { const i = argv.indexOf(`--${name}`); return i >= 0 ? argv[i + 1] : dflt; };
const SIZE_MIB = Number(opt('size-mib', 1024));
const PAIRS = Number(opt('pairs', 1));
const VMSEAL = path.resolve(opt('vmseal', path.join(repo, 'build/vmseal')));
const UPLOAD = !argv.includes('--no-upload');
const SEAL = !argv.includes('--no-seal');
// The package the upload half sends: sealed from a file of this size
// (default: the same size as the seal half's).
const UPLOAD_MIB = Number(opt('upload-mib', SIZE_MIB));
const CHUNK_BYTES = Number(opt('chunk-kib', 1024)) * 1024;
const WARMUP_MIB = Number(opt('warmup-mib', SIZE_MIB));
const load = () => fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
const fmt = (xs) => `median ${median(xs).toFixed(2)} s (${Math.min(...xs).toFixed(2)}..${Math.max(...xs).toFixed(2)}, n=${xs.length})`;

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'vmseal-console-bench-'));
const cleanup = [];
process.on('exit', () => { for (const f of cleanup.reverse()) try { f(); } catch { /* best effort */ } fs.rmSync(work, { recursive: true, force: true }); });
console.log(`console_bench: ${SIZE_MIB} MiB, ${PAIRS} pair(s), ${os.cpus().length} cores; load average before: ${load()}`);

const file = path.join(work, 'disk.raw');
execFileSync('bash', ['-c', `head -c ${SIZE_MIB}M /dev/urandom > ${file}`]);
const rsa = path.join(work, 'rsa.pem'), pub = path.join(work, 'rsa.pub');
execFileSync('openssl', ['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:3072', '-out', rsa], { stdio: 'pipe' });
execFileSync('openssl', ['pkey', '-in', rsa, '-pubout', '-out', pub], { stdio: 'pipe' });
const sign = path.join(work, 'sign.pem'), cert = path.join(work, 'sign.crt');
execFileSync('openssl', ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', sign], { stdio: 'pipe' });
fs.chmodSync(sign, 0o600); fs.chmodSync(rsa, 0o600);
execFileSync('openssl', ['req', '-new', '-x509', '-key', sign, '-subj', '/CN=acme', '-days', '1', '-addext', 'extendedKeyUsage=codeSigning', '-out', cert], { stdio: 'pipe' });

// The console's modules from a loopback origin (a secure context).
const assets = path.join(repo, 'src/console/assets');
const server = http.createServer((req, res) => {
  const rel = decodeURIComponent(req.url.split('?')[0]);
  if (rel === '/disk.raw') { res.writeHead(200, { 'Content-Type': 'application/octet-stream' }); fs.createReadStream(file).pipe(res); return; }
  const f = path.join(assets, rel.replace(/^\/console\//, ''));
  if (!f.startsWith(assets) || !fs.existsSync(f) || fs.statSync(f).isDirectory()) { res.writeHead(200, { 'Content-Type': 'text/html' }); res.end('<!doctype html><title>bench</title>'); return; }
  res.writeHead(200, { 'Content-Type': 'text/javascript' }); res.end(fs.readFileSync(f));
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
cleanup.push(() => server.close());
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });
cleanup.push(() => browser.close());
const context = await browser.newContext({ ignoreHTTPSErrors: true });
const page = await context.newPage();
await page.goto(`http://localhost:${server.address().port}/`);
// The File the customer would pick: made once in the page from the same bytes (not timed).
await page.evaluate(async () => {
  const blob = await (await fetch('/disk.raw')).blob();
  globalThis.benchFile = new File([blob], 'disk.raw');
});

async function browserSeal(mib = SIZE_MIB) {
  return page.evaluate(async ({ pubPem, signPem, certPem, chunkBytes, bytes }) => {
    const { sealPackage, importSigningKey } = await import('/console/js/seal.js');
    const f = bytes === globalThis.benchFile.size ? globalThis.benchFile : new File([globalThis.benchFile.slice(0, bytes)], 'warm.raw');
    const t = performance.now();
    const r = await sealPackage(f, { recipientPem: pubPem, tenant: 'acme', signingKey: await importSigningKey(signPem), signingCertPem: certPem, name: 'bench', chunkBytes });
    const s = (performance.now() - t) / 1000;
    globalThis.lastPackage = r.blob;
    return s;
  }, { pubPem: fs.readFileSync(pub, 'utf8'), signPem: fs.readFileSync(sign, 'utf8'), certPem: fs.readFileSync(cert, 'utf8'), chunkBytes: CHUNK_BYTES, bytes: mib * 2 ** 20 });
}
function cliSeal(mib = SIZE_MIB) {
  const out = path.join(work, 'cli.ova');
  fs.rmSync(out, { force: true });
  let input = file;
  if (mib !== SIZE_MIB) { input = path.join(work, 'warm.raw'); execFileSync('bash', ['-c', `head -c ${mib}M ${file} > ${input}`]); }
  const t = performance.now();
  execFileSync(VMSEAL, ['seal', input, '--chunk-size', String(CHUNK_BYTES), '--pubkey', pub, '--tenant', 'acme', '--signing-key', sign, '--signing-cert', cert, '-o', out], { stdio: 'pipe' });
  execFileSync('sync');
  return (performance.now() - t) / 1000;
}

if (SEAL) {
// Warm-up (page cache, JIT), not counted.
await browserSeal(WARMUP_MIB); cliSeal(WARMUP_MIB);
const seal = { A: [], B: [] };
for (let i = 0; i < PAIRS; i++) { seal.A.push(cliSeal()); seal.B.push(await browserSeal()); seal.B.push(await browserSeal()); seal.A.push(cliSeal()); }
const mibps = (xs) => (SIZE_MIB / median(xs)).toFixed(0);
console.log(`seal ${SIZE_MIB} MiB, chunks of ${CHUNK_BYTES / 1024} KiB`);
console.log(`seal ${SIZE_MIB} MiB  A vmseal seal: ${fmt(seal.A)}, ${mibps(seal.A)} MiB/s`);
console.log(`seal ${SIZE_MIB} MiB  B browser:     ${fmt(seal.B)}, ${mibps(seal.B)} MiB/s`);
console.log(`seal ratio B/A (browser/CLI): ${(median(seal.B) / median(seal.A)).toFixed(2)}x; load average: ${load()}`);
}

if (UPLOAD) {
  const demoDir = path.join(work, 'demo');
  const out = fs.openSync(path.join(work, 'demo.out'), 'w');
  const demo = spawn(VMSEAL, ['demo', '--keep', '--quiet', '--dir', demoDir], { cwd: repo, stdio: ['ignore', out, out] });
  cleanup.push(() => process.kill(demo.pid, 'SIGTERM'));
  const end = Date.now() + 600000;
  while (!fs.readFileSync(path.join(work, 'demo.out'), 'utf8').includes('keeps running')) {
    if (Date.now() > end || demo.exitCode !== null) throw new Error('demo did not come up');
    await new Promise((r) => setTimeout(r, 500));
  }
  const base = `https://127.0.0.1:${fs.readFileSync(path.join(demoDir, 'portal/port'), 'utf8').trim()}`;
  const ca = path.join(demoDir, 'kms/ca.pem');
  const sessionFile = path.join(demoDir, 'customer/session.json');
  const cust = (...a) => execFileSync(VMSEAL, ['customer', '--portal', base, '--ca-cert', ca, '--session', sessionFile, ...a], { stdio: 'pipe', encoding: 'utf8' });
  // The demo's customer: seal the bench file for it with the CLI (not timed).
  const custDir = path.join(demoDir, 'customer');
  const pkg = path.join(work, 'upload.ova');
  const uploadFile = path.join(work, 'upload.raw');
  execFileSync('bash', ['-c', `head -c ${UPLOAD_MIB}M /dev/urandom > ${uploadFile}`]);
  execFileSync(VMSEAL, ['seal', uploadFile, '--cert', path.join(custDir, 'customer-cert.pem'), '-o', pkg], { stdio: 'pipe' });
  const warmPkg = path.join(work, 'upload-warm.ova');
  execFileSync('bash', ['-c', `head -c ${Math.min(WARMUP_MIB, UPLOAD_MIB)}M ${uploadFile} > ${uploadFile}.warm`]);
  execFileSync(VMSEAL, ['seal', `${uploadFile}.warm`, '--cert', path.join(custDir, 'customer-cert.pem'), '-o', warmPkg], { stdio: 'pipe' });
  // The browser signs in as the same customer: the session token is given
  // to the page as a bearer header (the bench measures the upload, not the login).
  const token = JSON.parse(fs.readFileSync(sessionFile, 'utf8')).token;
  const up = await context.newPage();
  await up.goto(`${base}/console/`);
  await up.setInputFiles('#main', []).catch(() => {});
  await up.evaluate(async () => {
    for (const id of ['bench-file', 'bench-warm']) { const input = document.createElement('input'); input.type = 'file'; input.id = id; document.body.append(input); }
  });
  await up.setInputFiles('#bench-file', pkg);
  await up.setInputFiles('#bench-warm', warmPkg);
  const cliUpload = (n, p = pkg) => { const t = performance.now(); cust('upload', p, '--name', `cli-${n}`); return (performance.now() - t) / 1000; };
  const browserUpload = (n, input = 'bench-file') => up.evaluate(async ({ name, bearer, input }) => {
    const { uploadPackage } = await import('/console/js/upload.js');
    // A new file name each time: the resume key must not find the last session.
    const f = new File([document.getElementById(input).files[0]], `${name}.ova`);
    const t = performance.now();
    await uploadPackage(f, name, { headers: { Authorization: `Bearer ${bearer}` } });
    return (performance.now() - t) / 1000;
  }, { name: `browser-${n}`, bearer: token, input });
  await browserUpload('warm', 'bench-warm'); cliUpload('warm', warmPkg);
  const upl = { A: [], B: [] };
  for (let i = 0; i < PAIRS; i++) { upl.A.push(cliUpload(`a${i}`)); upl.B.push(await browserUpload(`b${i}`)); upl.B.push(await browserUpload(`c${i}`)); upl.A.push(cliUpload(`d${i}`)); }
  const size = fs.statSync(pkg).size / 2 ** 20;
  console.log(`upload ${size.toFixed(0)} MiB  A vmseal customer upload: ${fmt(upl.A)}, ${(size / median(upl.A)).toFixed(0)} MiB/s`);
  console.log(`upload ${size.toFixed(0)} MiB  B browser (64 MiB pieces): ${fmt(upl.B)}, ${(size / median(upl.B)).toFixed(0)} MiB/s`);
  console.log(`upload ratio B/A (browser/CLI): ${(median(upl.B) / median(upl.A)).toFixed(2)}x; load average: ${load()}`);
}
process.exit(0);
