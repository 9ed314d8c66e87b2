// The web console in a real browser (docs/console.md "Tests"): Debian's
// chromium driven by playwright-core against `vmseal demo --keep` (a real
// KMS, portal over TLS and two hosts with swtpm and qemu on loopback).
//
//   node console_test.mjs --vmseal BUILD/vmseal --source SRC --artifacts DIR
//
// Prints one "ok - NAME" or "not ok - NAME: why" line per check and exits 1
// when any failed. Screenshots of every page go to DIR.
import { spawn, execFileSync } from 'node:child_process';
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) => {
  if (a.startsWith('--')) acc.push([a.slice(2), all[i + 1]]);
  return acc;
}, []));
const VMSEAL = path.resolve(args.vmseal || 'build/vmseal');
const SOURCE = path.resolve(args.source || '.');
const ARTIFACTS = path.resolve(args.artifacts || 'build/console-artifacts');
const CHROMIUM = args.chromium || '/usr/bin/chromium';
fs.mkdirSync(ARTIFACTS, { recursive: true });
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'vmseal-console-'));
const mine = path.join(work, 'browser');
fs.mkdirSync(mine, { mode: 0o700 });

let failures = 0;
const results = [];
function check(name, ok, why = '') {
  results.push(`${ok ? 'ok' : 'not ok'} - ${name}${ok || !why ? '' : `: ${why}`}`);
  console.log(results[results.length - 1]);
  if (!ok) failures++;
}
const sha256 = (b) => createHash('sha256').update(b).digest('hex');
const t0 = Date.now();
const elapsed = () => ((Date.now() - t0) / 1000).toFixed(1);

// --- the system: vmseal demo --keep ---
function startDemo() {
  const demoDir = path.join(work, 'demo');
  const out = fs.openSync(path.join(work, 'demo.out'), 'w');
  const child = spawn(VMSEAL, ['demo', '--keep', '--quiet', '--dir', demoDir], {
    cwd: SOURCE, stdio: ['ignore', out, out], detached: true,
    env: { ...process.env, VMSEAL_SOURCE_DIR: SOURCE },
  });
  return { child, demoDir };
}

async function waitFor(what, fn, seconds) {
  const end = Date.now() + seconds * 1000;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${seconds} s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

// Processes whose command line mentions `needle` (as DemoTest counts them).
function processesMentioning(needle) {
  const found = [];
  for (const pid of fs.readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(pid) || Number(pid) === process.pid) continue;
    let cmd = '';
    try { cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8'); } catch { continue; }
    if (cmd.includes(needle)) found.push(`${pid} ${cmd.split('\0')[0]}`);
  }
  return found;
}

// Stops the demo the way Ctrl-C does and waits for it to finish stopping
// (its hosts stop every VM they run, the customer's VMs launched here too)
// before the work dir is removed; then nothing it started may remain.
async function stopDemo(demo) {
  if (!demo) return;
  const exited = () => demo.child.exitCode !== null || demo.child.signalCode !== null;
  if (!exited()) {
    try { process.kill(demo.child.pid, 'SIGTERM'); } catch { /* gone */ }
    const end = Date.now() + 180 * 1000;
    while (!exited() && Date.now() < end) await new Promise((r) => setTimeout(r, 250));
  }
  check('the demo stopped within 180 s of SIGTERM', exited());
  const left = processesMentioning(demo.demoDir);
  check('no service, TPM, export or VM of the demo outlives it', left.length === 0, left.join('; '));
}

async function main() {
  const demo = startDemo();
  let browser;
  try {
    await waitFor('the demo to keep running', () =>
      fs.readFileSync(path.join(work, 'demo.out'), 'utf8').includes('keeps running') ||
      (demo.child.exitCode !== null && Promise.reject(new Error(`demo exited: ${fs.readFileSync(path.join(work, 'demo.out'), 'utf8').slice(-2000)}`))), 240);
    console.log(`# demo up after ${elapsed()} s`);
    const port = fs.readFileSync(path.join(demo.demoDir, 'portal/port'), 'utf8').trim();
    const base = `https://127.0.0.1:${port}`;
    const marker = fs.readFileSync(path.join(demo.demoDir, 'customer/sample.img.marker'), 'utf8').trim();
    const sampleImage = path.join(demo.demoDir, 'customer/sample.img');
    const operatorToken = fs.readFileSync(path.join(demo.demoDir, 'portal-operator-token'), 'utf8').trim();

    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
    const context = await browser.newContext({ ignoreHTTPSErrors: true, acceptDownloads: true, viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    const dialogs = [];
    page.on('dialog', (d) => { dialogs.push(d.message()); d.dismiss(); });
    const eventUrls = [];
    page.on('request', (r) => { if (r.url().includes('/events')) eventUrls.push(r.url()); });
    const cspViolations = [];
    page.on('console', (m) => { if (/Content Security Policy/i.test(m.text())) cspViolations.push(m.text()); });
    const axeSource = fs.readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');
    const shot = async (name) => page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
    const go = async (hash) => {
      await page.evaluate((h) => { document.body.dataset.ready = ''; location.hash = h; }, hash);
      await page.waitForFunction((n) => document.body.dataset.ready === n, hash.split('/')[1]);
    };
    const axe = async (name) => {
      await page.evaluate(axeSource);
      const r = await page.evaluate(async () => {
        const res = await globalThis.axe.run(document, { resultTypes: ['violations'] });
        return res.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical')
          .map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
      });
      check(`axe finds no serious or critical violation on ${name}`, r.length === 0, r.join('; '));
    };

    // Headers of the console itself.
    const first = await page.goto(`${base}/console/#/login`);
    const h = first.headers();
    check('console page carries the CSP without inline script', (h['content-security-policy'] || '').includes("script-src 'self'") &&
      !(h['content-security-policy'] || '').includes('unsafe-inline'), h['content-security-policy']);
    check('console page carries nosniff and no-referrer', h['x-content-type-options'] === 'nosniff' && h['referrer-policy'] === 'no-referrer');
    await page.waitForFunction(() => document.body.dataset.ready === 'login');
    await shot('01-login');
    await axe('the sign-in page');

    // Register: the signing key is made in the browser and saved by the customer.
    await page.click('#register-form button[type=submit]');
    await page.waitForSelector('#new-password', { timeout: 60000 });
    const loginId = await page.textContent('#new-login-id');
    const password = await page.textContent('#new-password');
    const [keyDownload] = await Promise.all([page.waitForEvent('download'), page.click('#register-result a[download]')]);
    const signingKeyPath = path.join(mine, 'signing-key.pem');
    await keyDownload.saveAs(signingKeyPath);
    fs.chmodSync(signingKeyPath, 0o600);
    check('registration hands the customer a PKCS#8 signing key made in the browser',
      fs.readFileSync(signingKeyPath, 'utf8').startsWith('-----BEGIN PRIVATE KEY-----'));
    await shot('02-registered');
    await page.fill('#login-password', password);
    await page.click('#login-form button[type=submit]');
    await page.waitForFunction(() => document.body.dataset.ready === 'images');
    const cookies = await context.cookies();
    const session = cookies.find((c) => c.name === 'vmseal_session');
    check('session cookie is HttpOnly, Secure and SameSite=Strict',
      session && session.httpOnly && session.secure && session.sameSite === 'Strict', JSON.stringify(session));
    check('page script cannot read the session cookie', !(await page.evaluate(() => document.cookie)).includes('vmseal_session'));
    const forged = await page.evaluate(async () => (await fetch('/v1/uploads', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' })).status);
    check('a cookie-authenticated call without the CSRF token is refused (403)', forged === 403, String(forged));

    // Agent and certificates with fingerprints.
    await go('#/downloads');
    await page.waitForSelector('.fingerprint');
    const [certDownload] = await Promise.all([page.waitForEvent('download'), page.click('a[download="customer.pem"]')]);
    const customerPem = path.join(mine, 'customer.pem');
    await certDownload.saveAs(customerPem);
    const [sigCertDownload] = await Promise.all([page.waitForEvent('download'), page.click('a[download="signing-cert.pem"]')]);
    const signingCertPem = path.join(mine, 'signing-cert.pem');
    await sigCertDownload.saveAs(signingCertPem);
    const der = execFileSync('openssl', ['x509', '-in', customerPem, '-outform', 'DER']);
    const shown = (await page.$$eval('.fingerprint', (n) => n.map((x) => x.textContent)))[0];
    check('the certificate fingerprint shown is the SHA-256 of the downloaded certificate', shown === sha256(der), `${shown} vs ${sha256(der)}`);
    const agentShown = await page.textContent('#agent-sha256');
    check('the agent fingerprint shown is the served binary\'s', agentShown === sha256(fs.readFileSync(VMSEAL)));
    await shot('03-downloads');
    await axe('the downloads page');

    // Seal in the browser.
    await go('#/seal');
    await page.setInputFiles('#seal-disk', sampleImage);
    await page.setInputFiles('#seal-signing-key', signingKeyPath);
    await page.fill('#seal-name', 'browser-vm');
    await page.fill('#seal-cpus', '1');
    await page.fill('#seal-memory', '256');
    await page.click('#seal-form button[type=submit]');
    await page.waitForSelector('#sealed-sha256', { timeout: 120000 });
    const [pkgDownload] = await Promise.all([page.waitForEvent('download'), page.click('#seal-result a[download]')]);
    const browserOva = path.join(mine, 'browser-vm.ova');
    await pkgDownload.saveAs(browserOva);
    check('the sealed package\'s SHA-256 shown is the downloaded file\'s', (await page.textContent('#sealed-sha256')) === sha256(fs.readFileSync(browserOva)));
    let inspect = '';
    try { inspect = execFileSync(VMSEAL, ['inspect', browserOva], { encoding: 'utf8' }); } catch (e) { inspect = String(e.stdout || e); }
    check('vmseal inspect reads the browser-sealed package (manifest and signature verified)', /urn:vmseal:stream:v1/.test(inspect) && /manifest:\s+verified/.test(inspect) && /signature:\s+verified/.test(inspect), inspect.slice(0, 400));
    await shot('04-sealed');
    await axe('the seal page');

    // Upload with progress and resume (the package sealed here).
    await go('#/upload');
    await page.click('#upload-start');
    await page.waitForSelector('#uploaded-image-id', { timeout: 120000 });
    const browserImage = await page.textContent('#uploaded-image-id');
    check('the browser-sealed package uploads and the portal accepts its signature', /^[A-Za-z0-9-]+$/.test(browserImage));
    await shot('05-uploaded');
    await axe('the upload page');

    // The audit answer of this image before its launch (a smaller signed tree
    // than later): replayed below as a log rolled back by the portal.
    const earlyAudit = await page.evaluate(async (id) => (await fetch(`/v1/images/${encodeURIComponent(id)}/audit`)).json(), browserImage);
    const earlyOperatorAudit = await page.evaluate(async (token) => (await fetch('/v1/operator/audit?limit=20',
      { headers: { Authorization: `Bearer ${token}` } })).json(), operatorToken);

    // Launch; live status until running; the marker in the console view.
    await page.click('#launch-uploaded');
    await page.waitForSelector('#job-state');
    await page.waitForSelector('#live-mode[data-mode]');
    const liveMode = await page.getAttribute('#live-mode', 'data-mode');
    check('the live job view gets server-sent events, with nothing secret in their URL',
      liveMode === 'events' && eventUrls.length > 0 && eventUrls.every((u) => /\/v1\/jobs\/[A-Za-z0-9-]+\/events$/.test(u)),
      JSON.stringify({ liveMode, eventUrls }));
    await shot('06-launching');
    try {
      await page.waitForFunction(() => document.getElementById('job-state')?.textContent === 'running', null, { timeout: 180000 });
      check('the launch reaches running in the live job view', true);
    } catch (e) {
      check('the launch reaches running in the live job view', false, await page.textContent('#job-status').catch(() => String(e)));
    }
    try {
      await page.waitForFunction((m) => (document.getElementById('console-log')?.textContent || '').includes(m), marker, { timeout: 180000 });
      check('the VM\'s marker shows in the serial console view', true);
    } catch {
      check('the VM\'s marker shows in the serial console view', false, (await page.textContent('#console-log')).slice(-300));
    }
    await shot('07-vm-running');
    await axe('the VM page');
    // At most 8 event streams per customer (docs/console.md "Live status"):
    // ten more, from two other browser contexts with the same session (a
    // browser opens at most 6 HTTP/1.1 connections per host and context, so
    // one page could never reach the cap), the rest refused (a page polls).
    const jobOfView = (await page.evaluate(() => location.hash)).split('/').pop();
    const sessionCookies = await context.cookies();
    const extra = [];
    const streamCap = [];
    try {
      for (let c = 0; c < 2; c++) {
        const ctx = await browser.newContext({ ignoreHTTPSErrors: true });
        extra.push(ctx);
        await ctx.addCookies(sessionCookies);
        const p = await ctx.newPage();
        await p.goto(`${base}/console/`);
        streamCap.push(...await p.evaluate(async (id) => {
          const results = await Promise.all(Array.from({ length: 5 }, () => new Promise((resolve) => {
            const es = new EventSource(`/v1/jobs/${id}/events`);
            const t = setTimeout(() => resolve({ es, r: 'timeout' }), 10000);
            es.onopen = () => { clearTimeout(t); resolve({ es, r: 'open' }); };
            es.onerror = () => { if (es.readyState === EventSource.CLOSED) { clearTimeout(t); resolve({ es, r: 'refused' }); } };
          })));
          return results.map((x) => x.r);
        }, jobOfView));
      }
    } finally {
      for (const ctx of extra) await ctx.close();
    }
    const opened = streamCap.filter((r) => r === 'open').length, refusedStreams = streamCap.filter((r) => r === 'refused').length;
    check('one customer gets at most 8 event streams, the others are refused', opened >= 1 && opened <= 8 && refusedStreams === 10 - opened,
      JSON.stringify(streamCap));

    // Stop and delete it from the console (the host has two slots; the demo's VM holds one).
    await page.getByRole('button', { name: 'Stop', exact: true }).click();
    try {
      await page.waitForFunction(() => document.getElementById('job-wanted')?.textContent === 'stopped' &&
        (document.getElementById('job-ended')?.textContent || '') !== '', null, { timeout: 60000 });
      check('stop from the console stops the VM', true);
    } catch {
      check('stop from the console stops the VM', false, await page.textContent('#job-status'));
    }

    await page.getByRole('button', { name: 'Delete', exact: true }).click();
    try {
      await page.waitForFunction(() => document.getElementById('job-wanted')?.textContent === 'deleted', null, { timeout: 30000 });
      check('delete from the console is accepted', true);
    } catch {
      check('delete from the console is accepted', false, await page.textContent('#job-status'));
    }
    // A package sealed by `vmseal seal` uploads and launches from the console,
    // resuming an interrupted upload.
    const cliOva = path.join(mine, 'cli-vm.ova');
    execFileSync(VMSEAL, ['seal', sampleImage, '--cert', customerPem, '--signing-key', signingKeyPath,
      '--signing-cert', signingCertPem, '--cpus', '1', '--memory-mib', '256', '-o', cliOva], { stdio: 'pipe' });
    await go('#/upload');
    await page.setInputFiles('#upload-file', cliOva);
    const resumed = await page.evaluate(async () => {
      const { uploadPackage } = await import('/console/js/upload.js');
      const file = document.getElementById('upload-file').files[0];
      const stop = new AbortController();
      let firstResumed = -1;
      try {
        await uploadPackage(file, 'cli-vm', { pieceBytes: 1 << 20, signal: stop.signal, progress: (sent) => { if (sent > 0) stop.abort(); } });
      } catch (e) { if (e.name !== 'AbortError') throw e; }
      const img = await uploadPackage(file, 'cli-vm', { pieceBytes: 1 << 20, progress: (sent) => { if (firstResumed < 0) firstResumed = sent; } });
      return { firstResumed, image: img.image_id };
    });
    check('an interrupted upload resumes at the portal\'s offset', resumed.firstResumed > 0, JSON.stringify(resumed));
    // This launch's page cannot open its event stream (refused as when the
    // portal has too many): it falls back to polling and still follows the job.
    const refuseEvents = (r) => r.fulfill({ status: 503, contentType: 'application/json', body: '{"error":{"code":"UNAVAILABLE"}}' });
    await page.route('**/v1/jobs/*/events', refuseEvents);
    await go('#/images');
    await page.click(`button[aria-label="Launch cli-vm"]`);
    await page.waitForSelector('#job-state');
    try {
      await page.waitForFunction(() => document.getElementById('job-state')?.textContent === 'running', null, { timeout: 180000 });
      check('a package sealed by vmseal seal launches from the console', true);
    } catch {
      check('a package sealed by vmseal seal launches from the console', false, await page.textContent('#job-status'));
    }
    const fallbackMode = await page.getAttribute('#live-mode', 'data-mode');
    check('without an event stream the live job view polls instead', fallbackMode === 'polling', String(fallbackMode));
    await page.unroute('**/v1/jobs/*/events', refuseEvents);
    // XSS: an image named like markup renders as text.
    const evil = '<img src=x onerror=alert(1)>';
    await go('#/upload');
    await page.setInputFiles('#upload-file', cliOva);
    await page.evaluate(async (name) => {
      const { uploadPackage } = await import('/console/js/upload.js');
      const f = document.getElementById('upload-file').files[0];
      await uploadPackage(new File([f], 'xss.ova', { lastModified: 1 }), name);
    }, evil);
    await go('#/images');
    const names = await page.$$eval('.image-name', (n) => n.map((x) => x.textContent));
    const injected = await page.$$eval('img', (n) => n.length);
    check('an image named <img src=x onerror=alert(1)> renders as text', names.includes(evil) && injected === 0 && dialogs.length === 0,
      JSON.stringify({ names, injected, dialogs }));
    await page.click(`button[aria-label="Details of ${evil}"]`);
    await page.waitForSelector('#image-detail table');
    await shot('08-images');
    await axe('the images page');

    await go('#/vms');
    await shot('09-vms');
    await go('#/audit');
    await shot('10-audit');
    await axe('the audit page');
    const events = await page.$$eval('.audit-event', (n) => n.map((x) => x.textContent));
    check('the customer\'s audit lists the key release of its image', events.includes('release.grant'),
      JSON.stringify(events));
    const verdicts = await page.$$eval('.audit-verdict', (n) => n.map((x) => x.textContent));
    const cpVerdicts = await page.$$eval('.checkpoint-verdict', (n) => n.map((x) => x.textContent));
    check('the audit page verifies every inclusion proof and the checkpoint signature in the browser',
      verdicts.length > 0 && verdicts.every((v) => v === 'verified') && cpVerdicts.length > 0 &&
      cpVerdicts.every((v) => v.startsWith('Log checkpoint: signature verified')), JSON.stringify({ verdicts, cpVerdicts }));
    // A man in the middle rewrites one record (its event) and, on another
    // image's answer, the checkpoint's signature: the page says failed.
    let recordTampered = false, checkpointTampered = false;
    const tamper = async (route) => {
      const res = await route.fetch();
      const a = await res.json();
      if ((a.proofs || []).length === 0) {
        // untouched
      } else if (!recordTampered) {
        recordTampered = true;
        const lines = a.proofs[0].split('\n');
        const at = lines.findIndex((l) => l.startsWith('extra '));
        const rec = Buffer.from(lines[at].slice(6), 'base64').toString('utf8').replace('"event":"', '"event":"x');
        lines[at] = `extra ${Buffer.from(rec).toString('base64')}`;
        a.proofs[0] = lines.join('\n');
      } else if (!checkpointTampered) {
        checkpointTampered = true;
        const note = a.checkpoint;
        const flip = note.lastIndexOf(' ') + 8;  // inside the signature's base64
        const swapped = note.slice(0, flip) + (note[flip] === 'A' ? 'B' : 'A') + note.slice(flip + 1);
        a.proofs = (a.proofs || []).map((p) => p.replace(note, swapped));
        a.checkpoint = swapped;
      }
      await route.fulfill({ response: res, json: a });
    };
    await page.route('**/v1/images/*/audit*', tamper);
    await go('#/vms');
    await go('#/audit');
    // Per image with records: its proofs' verdicts and its checkpoint's.
    const auditShown = (await page.$$eval('table', (ts) => ts.map((t) => ({
      proofs: [...t.querySelectorAll('.audit-verdict')].map((x) => x.textContent),
      cp: t.nextElementSibling && t.nextElementSibling.classList.contains('checkpoint-verdict') ? t.nextElementSibling.textContent : '',
    })))).filter((x) => x.proofs.length > 0);
    const tv = auditShown.map((x) => x.proofs), tcp = auditShown.map((x) => x.cp);
    await shot('10b-audit-tampered');
    check('a record rewritten on the way is shown failed, the others verified',
      recordTampered && tv.length > 0 && /^failed: the record is not in the signed tree/.test(tv[0][0]) && tv[0].slice(1).every((v) => v === 'verified') &&
      tcp[0].startsWith('Log checkpoint: signature verified'), JSON.stringify({ tv, tcp }));
    check('a checkpoint whose signature was altered is shown failed, and no record is verified against it',
      checkpointTampered && tcp.length >= 2 && (/^Log checkpoint: failed: checkpoint: the signature does not verify/.test(tcp[1]) &&
      tv[1].every((v) => v.startsWith('failed'))), JSON.stringify({ tv, tcp }));
    await page.unroute('**/v1/images/*/audit*', tamper);
    // The checkpoint saved by the first (verified) visit: the log extends it.
    await go('#/vms');
    await go('#/audit');
    const extendsSaved = await page.textContent('.consistency-verdict').catch(() => '');
    check('the audit page proves the log extends the checkpoint this browser saved (consistency proof verified)',
      /^The log extends the checkpoint saved in this browser \(\d+ records\), consistency proof verified/.test(extendsSaved), extendsSaved);
    // A portal replays the image's answer from before the launches (signed,
    // but a smaller tree than the one saved here): rolled back.
    const rollBack = (route) => route.fulfill({ status: 200, contentType: 'application/json', json: earlyAudit });
    await page.route('**/v1/images/*/audit*', rollBack);
    await go('#/vms');
    await go('#/audit');
    const rolledBack = await page.textContent('.consistency-verdict').catch(() => '');
    await shot('10c-audit-rolled-back');
    check('a rolled-back log (an older signed answer replayed) is shown as failed on the audit page',
      /^Saved checkpoint: failed: rolled back: the saved checkpoint covers \d+ records but the log shows only \d+/.test(rolledBack), rolledBack);
    await page.unroute('**/v1/images/*/audit*', rollBack);
    const savedAfter = await page.evaluate(() => Object.entries(localStorage).filter(([k]) => k.startsWith('vmseal-audit-checkpoint:')).map(([, v]) => v.split('\n')[1]));
    check('a failed check keeps the checkpoint saved before (not the rolled-back one)',
      savedAfter.length === 1 && Number(savedAfter[0]) > Number(String(earlyAudit.checkpoint).split('\n')[1]), JSON.stringify(savedAfter));

    // Operator pages.
    await go('#/login');
    await page.fill('#operator-token', operatorToken);
    await page.click('#operator-form button[type=submit]');
    await page.waitForFunction(() => document.body.dataset.ready === 'operator');
    const trust = await page.$$eval('table tbody tr', (rows) => rows.map((r) => [...r.cells].map((c) => c.textContent)));
    const hostB = trust.find((r) => r[0] === 'host-b');
    check('the operator page shows host-b untrusted with its reason', hostB && hostB[2] === 'untrusted' && /pcr/.test(hostB[4]), JSON.stringify(trust.slice(0, 3)));
    const flavorNames = await page.$$eval('.flavor-name', (n) => n.map((x) => x.textContent));
    check('the operator page shows the KMS flavor definitions', flavorNames.includes('demo-good'), JSON.stringify(flavorNames));
    const kmsVerdicts = await page.$$eval('.kms-audit-verdict', (n) => n.map((x) => x.textContent));
    const kmsCp = await page.textContent('.kms-checkpoint-verdict').catch(() => '');
    check('the operator page shows the KMS-wide audit log, each proof and the checkpoint verified in the browser',
      kmsVerdicts.length > 0 && kmsVerdicts.every((v) => v === 'verified') && kmsCp.startsWith('Log checkpoint: signature verified'),
      JSON.stringify({ kmsVerdicts: kmsVerdicts.slice(0, 3), kmsCp }));
    const kmsConsistency = await page.textContent('.kms-consistency-verdict').catch(() => '');
    check('the operator page checks the log key\'s endorsement by the KMS CA',
      /endorsed by the KMS CA/.test(kmsCp) && /^[0-9a-f]{64}$/.test(await page.textContent('#kms-ca-fingerprint').catch(() => '')), kmsCp);
    // The whole log, page by page, each proof verified.
    await page.click('#kms-audit-all');
    await page.waitForFunction(() => /^Every record of the log/.test(document.getElementById('kms-audit-count')?.textContent || ''), null, { timeout: 60000 });
    const allCount = await page.textContent('#kms-audit-count');
    const allVerdicts = await page.$$eval('.kms-audit-verdict', (n) => n.map((x) => x.textContent));
    const [, shownN, treeN, pagesN] = /(\d+) of (\d+), in (\d+) pages/.exec(allCount) || [];
    check('the operator pages through the whole KMS log, every record verified and consistent with the saved checkpoint',
      Number(shownN) === Number(treeN) && Number(treeN) > 20 && Number(pagesN) >= 2 && allVerdicts.length === Number(treeN) &&
      allVerdicts.every((v) => v === 'verified') && /^No checkpoint saved in this browser yet; this one is saved now/.test(kmsConsistency) &&
      /^The log extends the checkpoint saved in this browser/.test(await page.textContent('.kms-consistency-verdict')),
      JSON.stringify({ allCount, bad: allVerdicts.filter((v) => v !== 'verified').slice(0, 3), kmsConsistency }));
    // The portal replays the early (smaller, signed) tree with one record
    // rewritten: rolled back, and that record failed.
    const opRollBack = async (route) => {
      const res = await route.fetch();
      const a = await res.json();
      const proofs = earlyOperatorAudit.proofs.map((p) => p);
      if (proofs.length) {
        const lines = proofs[0].split('\n');
        const at = lines.findIndex((l) => l.startsWith('extra '));
        lines[at] = `extra ${Buffer.from(Buffer.from(lines[at].slice(6), 'base64').toString('utf8').replace('"event":"', '"event":"x')).toString('base64')}`;
        proofs[0] = lines.join('\n');
      }
      await route.fulfill({ response: res, json: { ...earlyOperatorAudit, kms_ca_cert_pem: a.kms_ca_cert_pem, proofs, consistency: '', next_after: 0 } });
    };
    await page.route('**/v1/operator/audit*', opRollBack);
    await go('#/images');
    await go('#/operator');
    await page.waitForSelector('.kms-consistency-verdict');
    const opRolled = await page.textContent('.kms-consistency-verdict');
    const opVerdicts = await page.$$eval('.kms-audit-verdict', (n) => n.map((x) => x.textContent));
    await shot('11b-operator-rolled-back');
    check('a rolled-back KMS log and a tampered record are shown as failed on the operator page',
      /^Saved checkpoint: failed: rolled back/.test(opRolled) && opVerdicts.some((v) => /^failed: the record is not in the signed tree/.test(v)) &&
      opVerdicts.filter((v) => v === 'verified').length === opVerdicts.length - 1, JSON.stringify({ opRolled, opVerdicts }));
    await page.unroute('**/v1/operator/audit*', opRollBack);
    await page.click('table tbody tr button');
    await page.waitForSelector('#placement-detail table');
    await shot('11-operator');
    await axe('the operator page');
    check('no Content-Security-Policy violation on any page', cspViolations.length === 0, cspViolations.join('; '));
    await context.close();
  } finally {
    if (browser) await browser.close();
    await stopDemo(demo);
  }
}

// The byte-exact check needs no portal: a package sealed in Chromium to keys
// this test holds opens with `vmseal unseal` to the same bytes.
async function byteExact() {
  const dir = path.join(work, 'exact');
  fs.mkdirSync(dir, { mode: 0o700 });
  const keys = {};
  for (const [name, type, opts] of [['rsa', 'rsa', { modulusLength: 3072 }], ['x25519', 'x25519', {}]]) {
    const { publicKey, privateKey } = generateKeyPairSync(type, opts);
    keys[name] = { pub: publicKey.export({ type: 'spki', format: 'pem' }) };
    fs.writeFileSync(path.join(dir, `${name}.pem`), privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  }
  const signKey = path.join(dir, 'sign.pem');
  execFileSync('openssl', ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', signKey]);
  fs.chmodSync(signKey, 0o600);
  const signCert = execFileSync('openssl', ['req', '-new', '-x509', '-key', signKey, '-subj', '/CN=acme', '-days', '1',
    '-addext', 'extendedKeyUsage=codeSigning'], { encoding: 'utf8' });
  // 3 chunks of 64 KiB and a tail, so chunking and the final flag matter.
  const plain = randomBytes(3 * 65536 + 12345);
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
  try {
    const page = await browser.newPage();
    // A secure context of the console's own origin serves the modules.
    const http = await import('node:http');
    const server = http.createServer((req, res) => {
      const rel = req.url.replace(/^\/console\//, '').split('?')[0];
      const file = path.join(SOURCE, 'src/console/assets', rel || 'index.html');
      if (!file.startsWith(path.join(SOURCE, 'src/console/assets')) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
        res.writeHead(200, { 'Content-Type': 'text/html' });
        res.end('<!doctype html><title>seal</title>');
        return;
      }
      res.writeHead(200, { 'Content-Type': file.endsWith('.js') ? 'text/javascript' : 'text/html' });
      res.end(fs.readFileSync(file));
    });
    await new Promise((r) => server.listen(0, '127.0.0.1', r));
    await page.goto(`http://localhost:${server.address().port}/`);
    const workerUrls = [];
    page.on('worker', (w) => workerUrls.push(w.url()));
    for (const name of ['rsa', 'x25519']) {
      const out = await page.evaluate(async ({ plainB64, pub, pem, cert }) => {
        const { sealPackage, importSigningKey } = await import('/console/js/seal.js');
        const bytes = Uint8Array.from(atob(plainB64), (c) => c.charCodeAt(0));
        const r = await sealPackage(new File([bytes], 'disk.img'), { recipientPem: pub, tenant: 'acme', imageId: 'img-0001',
          signingKey: await importSigningKey(pem), signingCertPem: cert, name: 'exact', chunkBytes: 65536 });
        const b = new Uint8Array(await r.blob.arrayBuffer());
        let s = '';
        for (let i = 0; i < b.length; i += 0x8000) s += String.fromCharCode(...b.subarray(i, i + 0x8000));
        return btoa(s);
      }, { plainB64: plain.toString('base64'), pub: keys[name].pub, pem: fs.readFileSync(signKey, 'utf8'), cert: signCert });
      const ova = path.join(dir, `${name}.ova`);
      fs.writeFileSync(ova, Buffer.from(out, 'base64'));
      const outDir = path.join(dir, `${name}-out`);
      let err = '';
      try { execFileSync(VMSEAL, ['unseal', ova, '--key', path.join(dir, `${name}.pem`), '-o', outDir], { stdio: 'pipe' }); } catch (e) { err = String(e.stderr || e); }
      const got = err ? null : fs.readFileSync(path.join(outDir, 'disk1.raw'));
      check(`a package sealed in Chromium to ${name} opens byte-exact with vmseal unseal`, got && Buffer.compare(got, plain) === 0, err.slice(0, 500));
      // A flipped ciphertext byte is refused (the browser's tags are checked).
      const bad = fs.readFileSync(ova);
      bad[bad.length - 4096] ^= 1;
      const badOva = path.join(dir, `${name}-bad.ova`);
      fs.writeFileSync(badOva, bad);
      let refused = false;
      try { execFileSync(VMSEAL, ['unseal', badOva, '--key', path.join(dir, `${name}.pem`), '-o', path.join(dir, `${name}-bad`)], { stdio: 'pipe' }); } catch { refused = true; }
      check(`a changed byte of the Chromium-sealed ${name} package is refused`, refused && !fs.existsSync(path.join(dir, `${name}-bad`)));
    }
    const sealWorkers = workerUrls.filter((u) => u.endsWith('/seal_worker.js')).length;
    const hashWorkers = workerUrls.filter((u) => u.endsWith('/hash_worker.js')).length;
    check('the chunks were sealed in several Web Workers and the manifest digest made in another',
      sealWorkers >= 4 && hashWorkers >= 2, JSON.stringify({ sealWorkers, hashWorkers }));
    server.close();
  } finally {
    await browser.close();
  }
}

try {
  await byteExact();
  if (args.mode !== 'exact') await main();
} catch (e) {
  check('the browser test ran to the end', false, e.stack || String(e));
} finally {
  console.log(`# ${results.length} checks, ${failures} failed, ${elapsed()} s; screenshots in ${ARTIFACTS}`);
  fs.rmSync(work, { recursive: true, force: true });
}
process.exit(failures ? 1 : 0);
