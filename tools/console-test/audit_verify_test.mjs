// Unit tests of the console's audit verification (src/console/assets/js/
// audit_verify.js) in node's WebCrypto: a log built here from RFC 9162's
// definitions (MTH, PATH, PROOF), signed as docs/format/audit-log.md §3-§6.1
// say (Ed25519 checkpoint, log key endorsed by an ECDSA P-256 CA), then
// attacked: a tampered record, another CA, a rolled-back log, a fork, a
// consistency proof with a changed hash.
//   node tools/console-test/audit_verify_test.mjs
import crypto from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const here = path.dirname(new URL(import.meta.url).pathname);
const av = await import(path.join(here, '../../src/console/assets/js/audit_verify.js'));

let failures = 0, checks = 0;
const check = (name, ok, detail = '') => {
  checks++;
  if (!ok) failures++;
  console.log(`${ok ? 'ok' : 'not ok'} ${checks} - ${name}${ok || !detail ? '' : ` # ${detail}`}`);
};

// --- RFC 9162 §2.1 over SHA-256 ---
const H = (...parts) => crypto.createHash('sha256').update(Buffer.concat(parts.map((p) => Buffer.from(p)))).digest();
const leafHash = (d) => H([0x00], d);
const k = (n) => { let p = 1; while (p * 2 < n) p *= 2; return p; };  // largest power of 2 < n
function mth(d) {
  if (d.length === 0) return H();
  if (d.length === 1) return leafHash(d[0]);
  const s = k(d.length);
  return H([0x01], mth(d.slice(0, s)), mth(d.slice(s)));
}
function auditPath(m, d) {
  if (d.length <= 1) return [];
  const s = k(d.length);
  return m < s ? [...auditPath(m, d.slice(0, s)), mth(d.slice(s))] : [...auditPath(m - s, d.slice(s)), mth(d.slice(0, s))];
}
function subproof(m, d, b) {
  const n = d.length;
  if (m === n) return b ? [] : [mth(d)];
  const s = k(n);
  return m <= s ? [...subproof(m, d.slice(0, s), b), mth(d.slice(s))] : [...subproof(m - s, d.slice(s), false), mth(d.slice(0, s))];
}
const consistencyPath = (m, d) => (m === 0 || m === d.length ? [] : subproof(m, d, true));

// --- the log's texts (audit-log.md) ---
const b64 = (b) => Buffer.from(b).toString('base64');
const ORIGIN = 'test.vmseal.dev/audit';
const { publicKey: edPub, privateKey: edKey } = crypto.generateKeyPairSync('ed25519');
const rawPub = edPub.export({ format: 'der', type: 'spki' }).subarray(12);
const keyId = H(ORIGIN, [0x0a, 0x01], rawPub).subarray(0, 4);
const logKey = `${ORIGIN}+${keyId.toString('hex')}+${b64(Buffer.concat([Buffer.from([0x01]), rawPub]))}`;
function checkpointOf(records) {
  const text = `${ORIGIN}\n${records.length}\n${b64(mth(records))}\n`;
  const sig = crypto.sign(null, Buffer.from(text), edKey);
  return `${text}\n\u2014 ${ORIGIN} ${b64(Buffer.concat([keyId, sig]))}\n`;
}
const record = (seq, what = 'key.release') => Buffer.from(JSON.stringify({ seq, event: what }));
const proofOf = (records, i, cp) =>
  `c2sp.org/tlog-proof@v1\nextra ${b64(records[i])}\nindex ${i}\n${auditPath(i, records).map(b64).map((x) => `${x}\n`).join('')}\n${cp}`;
const consistencyOf = (records, m, cp) =>
  `vmseal.dev/tlog-consistency@v1\nold ${m}\n${consistencyPath(m, records).map(b64).map((x) => `${x}\n`).join('')}\n${cp}`;

// --- the KMS CA and its endorsement of the log key ---
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'audit-verify-test-'));
function newCa(name) {
  const key = path.join(dir, `${name}.key`);
  execFileSync('openssl', ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', key], { stdio: 'pipe' });
  const pem = execFileSync('openssl', ['req', '-new', '-x509', '-key', key, '-subj', `/CN=${name}`, '-days', '1'], { encoding: 'utf8' });
  const endorsement = crypto.sign('sha256', Buffer.from(`vmseal audit log key v1\n${logKey}\n`), fs.readFileSync(key));
  return { pem, endorsement: b64(endorsement) };
}
const ca = newCa('kms-ca');
const otherCa = newCa('other-ca');

function answer(records, { seqs, old = 0, ca: c = ca } = {}) {
  const cp = checkpointOf(records);
  const list = seqs || records.map((_, i) => i + 1);
  return {
    log_key: logKey, log_key_endorsement: c.endorsement, checkpoint: cp,
    proofs: list.map((s) => proofOf(records, s - 1, cp)),
    consistency: old > 0 && old <= records.length ? consistencyOf(records, old, cp) : '',
  };
}

try {
  const log = Array.from({ length: 9 }, (_, i) => record(i + 1));
  // Every proof and the checkpoint of an honest answer verify.
  let r = await av.verifyAuditPage(answer(log), ca.pem);
  check('an honest answer verifies: endorsement, checkpoint, every record',
    r.checkpoint.ok && r.checkpoint.size === 9 && r.records.length === 9 && r.records.every((x) => x.ok), JSON.stringify(r.checkpoint));

  // A record rewritten on the way fails, alone.
  const tampered = answer(log);
  tampered.proofs[3] = tampered.proofs[3].replace(/^extra .*$/m, `extra ${b64(record(4, 'key.release.denied'))}`);
  r = await av.verifyAuditPage(tampered, ca.pem);
  check('a tampered record is shown as failed and the others verified',
    r.checkpoint.ok && !r.records[3].ok && r.records[3].error === 'the record is not in the signed tree' &&
    r.records.filter((x) => x.ok).length === 8, JSON.stringify(r.records[3]));

  // A log key endorsed by another CA (a substituted KMS) fails everything.
  r = await av.verifyAuditPage(answer(log, { ca: otherCa }), ca.pem);
  check('a log key not endorsed by the pinned KMS CA fails the checkpoint and every record',
    !r.checkpoint.ok && /not endorsed by the KMS CA/.test(r.checkpoint.error) && r.records.every((x) => !x.ok), r.checkpoint.error);

  // A checkpoint saved at 5 records, now 9: the log extends it.
  const saved5 = checkpointOf(log.slice(0, 5));
  r = await av.verifyAuditPage(answer(log, { old: 5 }), ca.pem, { saved: saved5 });
  check('the log extends the checkpoint saved earlier (consistency proof verified)',
    r.consistency && r.consistency.ok && r.consistency.oldSize === 5, JSON.stringify(r.consistency));

  // Rolled back: saved at 9 records, the answer is the old tree of 5.
  const saved9 = checkpointOf(log);
  r = await av.verifyAuditPage(answer(log.slice(0, 5), { old: 9 }), ca.pem, { saved: saved9 });
  check('a rolled-back log (fewer records than the saved checkpoint) is shown as failed',
    r.consistency && !r.consistency.ok && /^rolled back: the saved checkpoint covers 9 records but the log shows only 5/.test(r.consistency.error),
    JSON.stringify(r.consistency));

  // A fork: record 3 rewritten after the customer saved the tree of 5.
  const forked = log.map((x, i) => (i === 2 ? record(3, 'rewritten') : x));
  r = await av.verifyAuditPage(answer(forked, { old: 5 }), ca.pem, { saved: saved5 });
  check('a rewritten log (not an extension of the saved checkpoint) is shown as failed',
    r.consistency && !r.consistency.ok && /^fork or rewrite/.test(r.consistency.error), JSON.stringify(r.consistency));

  // The same size, another root.
  r = await av.verifyAuditPage(answer(forked.slice(0, 5)), ca.pem, { saved: saved5 });
  check('another tree of the saved size is shown as failed',
    r.consistency && !r.consistency.ok && /^fork or rewrite: another tree/.test(r.consistency.error), JSON.stringify(r.consistency));

  // No consistency proof at all (a portal that drops it).
  const dropped = answer(log, { old: 5 });
  dropped.consistency = '';
  r = await av.verifyAuditPage(dropped, ca.pem, { saved: saved5 });
  check('an answer without the consistency proof fails the saved-checkpoint check',
    r.consistency && !r.consistency.ok && /no consistency proof/.test(r.consistency.error), JSON.stringify(r.consistency));

  // RFC 9162 consistency for every pair of sizes up to 17, and each proof
  // with one hash changed refused.
  let good = 0, refused = 0, pairs = 0;
  for (let n = 1; n <= 17; n++) {
    const d = Array.from({ length: n }, (_, i) => record(i + 1));
    for (let m = 1; m <= n; m++) {
      pairs++;
      const p = consistencyPath(m, d);
      if (await av.verifyConsistency(m, n, p, mth(d.slice(0, m)), mth(d))) good++;
      if (p.length === 0) { refused++; continue; }
      const bad = p.map((h) => Buffer.from(h));
      bad[p.length - 1][0] ^= 1;
      if (!await av.verifyConsistency(m, n, bad, mth(d.slice(0, m)), mth(d))) refused++;
    }
  }
  check(`consistency proofs verify for all ${pairs} size pairs up to 17 and a changed hash is refused`,
    good === pairs && refused === pairs, JSON.stringify({ good, refused, pairs }));
  // Inclusion for every leaf of every size up to 17.
  let incl = 0, total = 0;
  for (let n = 1; n <= 17; n++) {
    const d = Array.from({ length: n }, (_, i) => record(i + 1));
    for (let i = 0; i < n; i++) {
      total++;
      if (await av.verifyInclusion(leafHash(d[i]), i, n, auditPath(i, d), mth(d))) incl++;
    }
  }
  check(`inclusion proofs verify for all ${total} leaves of sizes up to 17`, incl === total, `${incl}/${total}`);
} catch (e) {
  check('the test ran to the end', false, e.stack || String(e));
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
console.log(`# ${checks} checks, ${failures} failed`);
process.exit(failures ? 1 : 0);
