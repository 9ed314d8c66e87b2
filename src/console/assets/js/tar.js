// USTAR member headers for an OVA (docs/format/package.md §8): regular
// members, mode 0644, mtime 0, names of at most 100 ASCII bytes. Sizes of
// 8 GiB or more use the GNU base-256 size field.
import { utf8 } from './bytes.js';

function octal(buf, off, len, value) {
  const s = value.toString(8).padStart(len - 1, '0');
  for (let i = 0; i < len - 1; i++) buf[off + i] = s.charCodeAt(i);
  buf[off + len - 1] = 0;
}

export function tarHeader(name, size) {
  const n = utf8.encode(name);
  if (n.length > 100 || /[^\x20-\x7e]/.test(name)) throw new Error(`OVA member name ${name} is not short ASCII`);
  const h = new Uint8Array(512);
  h.set(n, 0);
  octal(h, 100, 8, 0o644);
  octal(h, 108, 8, 0);
  octal(h, 116, 8, 0);
  if (size < 8 * 1024 ** 3) {
    octal(h, 124, 12, size);
  } else {
    h[124] = 0x80;
    let v = BigInt(size);
    for (let i = 135; i > 124; i--) { h[i] = Number(v & 0xffn); v >>= 8n; }
  }
  octal(h, 136, 12, 0);
  for (let i = 148; i < 156; i++) h[i] = 0x20;  // checksum computed over spaces
  h[156] = 0x30;  // '0': regular file
  h.set(utf8.encode('ustar\x00'), 257);
  h.set(utf8.encode('00'), 263);
  h.set(utf8.encode('root'), 265);  // uname
  h.set(utf8.encode('root'), 297);  // gname
  let sum = 0;
  for (const b of h) sum += b;
  const s = sum.toString(8).padStart(6, '0');
  for (let i = 0; i < 6; i++) h[148 + i] = s.charCodeAt(i);
  h[154] = 0;
  h[155] = 0x20;
  return h;
}

export function tarPadding(size) {
  return new Uint8Array((512 - (size % 512)) % 512);
}

export const tarEnd = () => new Uint8Array(1024);
