// Verifies the customer's audit page in the browser (docs/format/audit-log.md
// §3-§6.1), with WebCrypto, as `vmseal customer audit` does on the command
// line: the log key's endorsement by the KMS CA (ECDSA P-256), the
// checkpoint's Ed25519 signature and origin, and each record's RFC 6962
// inclusion proof against the checkpoint's root.
import { concat, fromBase64, pemBlock, utf8 } from './bytes.js';

const subtle = globalThis.crypto.subtle;
const sha256 = async (...parts) => new Uint8Array(await subtle.digest('SHA-256', concat(...parts)));
const equal = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
const MAX_PATH = 64;

// --- DER, just enough to find a certificate's SubjectPublicKeyInfo ---
function derItem(d, at) {
  if (at + 2 > d.length) throw new Error('certificate: truncated');
  let len = d[at + 1], hdr = 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n < 1 || n > 3 || at + 2 + n > d.length) throw new Error('certificate: bad length');
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + d[at + 2 + i];
    hdr += n;
  }
  if (at + hdr + len > d.length) throw new Error('certificate: truncated');
  return { tag: d[at], start: at, body: at + hdr, end: at + hdr + len };
}

// The SPKI DER of an X.509 certificate (PEM).
export function certificateSpki(pem) {
  const d = pemBlock(pem, 'CERTIFICATE');
  const cert = derItem(d, 0);
  const tbs = derItem(d, cert.body);
  let at = tbs.body;
  let item = derItem(d, at);
  if (item.tag === 0xa0) { at = item.end; item = derItem(d, at); }  // [0] version
  // serial, signature, issuer, validity, subject, then the SPKI.
  for (let i = 0; i < 5; i++) { at = item.end; item = derItem(d, at); }
  if (item.tag !== 0x30) throw new Error('certificate: no SubjectPublicKeyInfo');
  return d.subarray(item.start, item.end);
}

// DER ECDSA-Sig-Value to WebCrypto's r || s (P-256).
function ecdsaDerToRaw(der) {
  const seq = derItem(der, 0);
  const r = derItem(der, seq.body), s = derItem(der, r.end);
  const fix = (x) => {
    let v = der.subarray(x.body, x.end);
    while (v.length > 32 && v[0] === 0) v = v.subarray(1);
    if (v.length > 32) throw new Error('signature: bad integer');
    const out = new Uint8Array(32);
    out.set(v, 32 - v.length);
    return out;
  };
  return concat(fix(r), fix(s));
}

// §4: <name>+<8 hex key id>+<base64(0x01 || Ed25519 public key)>.
export async function parseVerifierKey(vkey) {
  // The name has no '+'; the base64 may.
  const m = /^([^+]+)\+([0-9a-f]{8})\+([A-Za-z0-9+/]+={0,2})$/.exec(String(vkey));
  if (!m) throw new Error('log key: malformed');
  const parts = m.slice(1);
  const raw = fromBase64(parts[2]);
  if (raw.length !== 33 || raw[0] !== 0x01) throw new Error('log key: not an Ed25519 verifier key');
  const pub = raw.subarray(1);
  const id = (await sha256(utf8.encode(parts[0]), new Uint8Array([0x0a, 0x01]), pub)).subarray(0, 4);
  if ([...id].map((b) => b.toString(16).padStart(2, '0')).join('') !== parts[1]) throw new Error('log key: key id does not match');
  const key = await subtle.importKey('raw', pub, { name: 'Ed25519' }, false, ['verify']);
  return { name: parts[0], id, key };
}

// §3, §4: the checkpoint's text verified with the log key; {size, root}.
export async function verifyCheckpoint(note, logKey) {
  const split = note.lastIndexOf('\n\n');
  if (split < 0) throw new Error('checkpoint: no signatures');
  const text = note.slice(0, split + 1);
  let verified = false;
  for (const line of note.slice(split + 2).split('\n')) {
    if (!line) continue;
    const m = /^\u2014 (\S+) (\S+)$/.exec(line);
    if (!m) throw new Error('checkpoint: malformed signature line');
    if (m[1] !== logKey.name) continue;
    const sig = fromBase64(m[2]);
    if (sig.length < 5 || !equal(sig.subarray(0, 4), logKey.id)) continue;
    if (!await subtle.verify({ name: 'Ed25519' }, logKey.key, sig.subarray(4), utf8.encode(text))) {
      throw new Error('checkpoint: the signature does not verify');
    }
    verified = true;
  }
  if (!verified) throw new Error('checkpoint: no signature of the log key');
  const [origin, size, root] = text.split('\n');
  if (origin !== logKey.name) throw new Error('checkpoint: origin is not the log key\'s');
  if (!/^(0|[1-9][0-9]{0,15})$/.test(size)) throw new Error('checkpoint: bad size');
  const rootHash = fromBase64(root);
  if (rootHash.length !== 32) throw new Error('checkpoint: bad root hash');
  return { size: Number(size), root: rootHash, text: note };
}

// RFC 9162 §2.1.3.2: is `leaf` at `index` of the tree of `size` with `root`?
export async function verifyInclusion(leaf, index, size, path, root) {
  if (index >= size) return false;
  let fn = index, sn = size - 1, r = leaf;
  const one = new Uint8Array([0x01]);
  for (const p of path) {
    if (sn === 0) return false;
    if (fn % 2 === 1 || fn === sn) {
      r = await sha256(one, p, r);
      while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
    } else {
      r = await sha256(one, r, p);
    }
    fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
  }
  return sn === 0 && equal(r, root);
}

// §5: one c2sp.org/tlog-proof@v1 text checked against the verified
// checkpoint. Returns the record (parsed) or throws why not.
export async function verifyRecordProof(proof, checkpoint) {
  const text = String(proof);
  const blank = text.indexOf('\n\n');
  if (blank < 0) throw new Error('proof: malformed');
  const lines = text.slice(0, blank).split('\n');
  if (lines[0] !== 'c2sp.org/tlog-proof@v1' || !lines[1].startsWith('extra ') || !/^index (0|[1-9][0-9]{0,15})$/.test(lines[2])) {
    throw new Error('proof: malformed');
  }
  if (text.slice(blank + 2) !== checkpoint.text) throw new Error('proof: for another checkpoint');
  const record = fromBase64(lines[1].slice(6));
  const index = Number(lines[2].slice(6));
  const path = lines.slice(3).map(fromBase64);
  if (path.length > MAX_PATH || path.some((h) => h.length !== 32)) throw new Error('proof: bad path');
  const leaf = await sha256(new Uint8Array([0x00]), record);
  if (!await verifyInclusion(leaf, index, checkpoint.size, path, checkpoint.root)) {
    throw new Error('the record is not in the signed tree');
  }
  const parsed = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(record));
  if (parsed.seq !== index + 1) throw new Error('seq is not the proof\'s index + 1');
  return parsed;
}

// RFC 9162 §2.1.4.2: does the tree of `size` with `root` extend the tree of
// `oldSize` with `oldRoot`, by `path`?
export async function verifyConsistency(oldSize, size, path, oldRoot, root) {
  if (oldSize > size) return false;
  if (oldSize === size) return path.length === 0 && equal(oldRoot, root);
  if (oldSize === 0) return path.length === 0;
  if (path.length === 0) return false;
  const one = new Uint8Array([0x01]);
  let p = path;
  let pow2 = oldSize;
  while (pow2 > 1 && pow2 % 2 === 0) pow2 /= 2;
  if (pow2 === 1) p = [oldRoot, ...path];
  let fn = oldSize - 1, sn = size - 1;
  while (fn % 2 === 1) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
  let fr = p[0], sr = p[0];
  for (const c of p.slice(1)) {
    if (sn === 0) return false;
    if (fn % 2 === 1 || fn === sn) {
      fr = await sha256(one, c, fr);
      sr = await sha256(one, c, sr);
      if (fn % 2 === 0) while (fn % 2 === 0 && fn !== 0) { fn = Math.floor(fn / 2); sn = Math.floor(sn / 2); }
    } else {
      sr = await sha256(one, sr, c);
    }
    fn = Math.floor(fn / 2); sn = Math.floor(sn / 2);
  }
  return sn === 0 && equal(fr, oldRoot) && equal(sr, root);
}

// §5: a vmseal.dev/tlog-consistency@v1 text from the saved checkpoint
// (verified, {size, root}) to the answer's verified checkpoint. Throws why
// not: "rolled back: ..." when the log is smaller than it was, "fork or
// rewrite: ..." when it does not extend it.
export async function verifySavedCheckpoint(consistencyText, saved, checkpoint) {
  if (checkpoint.size < saved.size) {
    throw new Error(`rolled back: the saved checkpoint covers ${saved.size} records but the log shows only ${checkpoint.size}`);
  }
  if (checkpoint.size === saved.size) {
    if (!equal(checkpoint.root, saved.root)) throw new Error(`fork or rewrite: another tree of the same ${saved.size} records`);
    return;
  }
  const text = String(consistencyText || '');
  const blank = text.indexOf('\n\n');
  if (blank < 0) throw new Error('fork or rewrite: no consistency proof with the saved checkpoint');
  const lines = text.slice(0, blank).split('\n');
  if (lines[0] !== 'vmseal.dev/tlog-consistency@v1' || lines[1] !== `old ${saved.size}`) {
    throw new Error('fork or rewrite: the consistency proof is not from the saved checkpoint');
  }
  if (text.slice(blank + 2) !== checkpoint.text) throw new Error('fork or rewrite: the consistency proof is for another checkpoint');
  const path = lines.slice(2).map(fromBase64);
  if (path.length > MAX_PATH || path.some((h) => h.length !== 32)) throw new Error('fork or rewrite: bad consistency proof');
  if (!await verifyConsistency(saved.size, checkpoint.size, path, saved.root, checkpoint.root)) {
    throw new Error(`fork or rewrite: the log is not an extension of the saved checkpoint (tree of ${saved.size} records)`);
  }
}

// The KMS CA's endorsement of the log key (§6.1).
async function verifyEndorsement(answer, kmsCaPem) {
  const spki = certificateSpki(kmsCaPem);
  const ca = await subtle.importKey('spki', spki, { name: 'ECDSA', namedCurve: 'P-256' }, false, ['verify']);
  let sig;
  try { sig = ecdsaDerToRaw(fromBase64(answer.log_key_endorsement || '')); } catch { sig = new Uint8Array(64); }
  const endorsed = await subtle.verify({ name: 'ECDSA', hash: 'SHA-256' }, ca, sig,
    utf8.encode(`vmseal audit log key v1\n${answer.log_key}\n`));
  if (!endorsed) throw new Error('the log key is not endorsed by the KMS CA');
}

// The whole answer of GET /v1/images/{id}/audit against the KMS CA (PEM).
// Returns {checkpoint: {ok, error?, size, text?}, consistency: {ok, error?,
// oldSize} | null, records: [{ok, error?, record?}]}: a record is verified
// only when the checkpoint is. kmsCaPem: the CA the log key must be endorsed
// by (null: the log key taken as given). opts.saved: the text of a
// checkpoint saved earlier (verified before: by this log key), checked to be
// extended by this one with the answer's `consistency` proof.
export async function verifyAuditPage(answer, kmsCaPem, opts = {}) {
  const out = { checkpoint: { ok: false }, consistency: null, records: [] };
  let checkpoint = null;
  try {
    if (kmsCaPem !== null) await verifyEndorsement(answer, kmsCaPem);
    const logKey = await parseVerifierKey(answer.log_key);
    checkpoint = await verifyCheckpoint(answer.checkpoint || '', logKey);
    out.checkpoint = { ok: true, size: checkpoint.size, text: checkpoint.text };
    if (opts.saved) {
      let saved = null;
      try {
        saved = await verifyCheckpoint(opts.saved, logKey);
      } catch (e) {
        out.consistency = { ok: false, error: `the saved checkpoint: ${e.message}` };
      }
      if (saved) {
        try {
          await verifySavedCheckpoint(answer.consistency, saved, checkpoint);
          out.consistency = { ok: true, oldSize: saved.size };
        } catch (e) {
          out.consistency = { ok: false, oldSize: saved.size, error: e.message };
        }
      }
    }
  } catch (e) {
    out.checkpoint = { ok: false, error: e.message };
    checkpoint = null;
  }
  for (const proof of answer.proofs || []) {
    if (!checkpoint) { out.records.push({ ok: false, error: 'checkpoint not verified' }); continue; }
    try {
      out.records.push({ ok: true, record: await verifyRecordProof(proof, checkpoint) });
    } catch (e) {
      out.records.push({ ok: false, error: e.message });
    }
  }
  return out;
}

// The size of a checkpoint text (its second line), or 0; not a check.
export function checkpointSize(note) {
  const m = /^[^\n]*\n(0|[1-9][0-9]{0,15})\n/.exec(String(note || ''));
  return m ? Number(m[1]) : 0;
}
