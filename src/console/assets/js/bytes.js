// Byte helpers for the formats of docs/format (big-endian integers,
// length-prefixed strings, PEM and DER).
export const utf8 = new TextEncoder();

export function concat(...parts) {
  const n = parts.reduce((s, p) => s + p.length, 0);
  const out = new Uint8Array(n);
  let off = 0;
  for (const p of parts) { out.set(p, off); off += p.length; }
  return out;
}

export function u32be(n) {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n);
  return b;
}

export function u64be(n) {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(n));
  return b;
}

// str(x) = u32be(len(x)) || x
export function str(x) {
  const b = typeof x === 'string' ? utf8.encode(x) : x;
  return concat(u32be(b.length), b);
}

export function base64(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

export function fromBase64(text) {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

// The DER bytes of the first PEM block labelled `label` in `text`.
export function pemBlock(text, label) {
  const begin = `-----BEGIN ${label}-----`, end = `-----END ${label}-----`;
  const a = text.indexOf(begin);
  const b = text.indexOf(end, a + begin.length);
  if (a < 0 || b < 0) throw new Error(`no ${label} PEM block`);
  return fromBase64(text.slice(a + begin.length, b).replace(/\s+/g, ''));
}

export function toPem(der, label) {
  const b = base64(der).replace(/(.{64})/g, '$1\n').replace(/\n$/, '');
  return `-----BEGIN ${label}-----\n${b}\n-----END ${label}-----\n`;
}

// A WebCrypto ECDSA signature (r || s, 32 bytes each for P-256) as the DER
// ECDSA-Sig-Value that OpenSSL writes and vmseal verifies.
export function ecdsaRawToDer(raw) {
  const int = (x) => {
    let i = 0;
    while (i < x.length - 1 && x[i] === 0) i++;
    let v = x.subarray(i);
    if (v[0] & 0x80) v = concat(new Uint8Array([0]), v);
    return concat(new Uint8Array([0x02, v.length]), v);
  };
  const half = raw.length / 2;
  const body = concat(int(raw.subarray(0, half)), int(raw.subarray(half)));
  return concat(new Uint8Array([0x30, body.length]), body);
}
