// A Worker that computes one SHA-256 off the page's thread (js/workers.js
// drives it). WebCrypto's digest() takes its input whole, so the running
// digest is js/sha256.js; in its own Worker it overlaps with sending or
// sealing instead of adding to them. Messages in:
//   {op: 'blob', blob}       hash the whole Blob (read here in 8 MiB slices)
//   {op: 'update', bytes}    hash these bytes next (an ArrayBuffer)
//   {op: 'pass', bytes, n}   hash these bytes next and hand them back
//                            (transferred both ways, no copy): {n, bytes}
//   {op: 'digest'}           answer {digest: hex} and stop
// Out: {done: n} every 64 MiB of a Blob, {digest}, or {error}.
import { Sha256, hex } from './sha256.js';

const h = new Sha256();
const SLICE = 8 << 20;

self.onmessage = async (e) => {
  const m = e.data;
  try {
    if (m.op === 'update') {
      h.update(new Uint8Array(m.bytes));
    } else if (m.op === 'pass') {
      h.update(new Uint8Array(m.bytes));
      self.postMessage({ n: m.n, bytes: m.bytes }, [m.bytes]);
    } else if (m.op === 'blob') {
      for (let a = 0; a < m.blob.size; a += SLICE) {
        h.update(new Uint8Array(await m.blob.slice(a, Math.min(m.blob.size, a + SLICE)).arrayBuffer()));
        if ((a + SLICE) % (64 << 20) === 0) self.postMessage({ done: a + SLICE });
      }
      self.postMessage({ digest: hex(h.digest()) });
    } else if (m.op === 'digest') {
      self.postMessage({ digest: hex(h.digest()) });
    }
  } catch (err) {
    self.postMessage({ error: String(err && err.message || err) });
  }
};
