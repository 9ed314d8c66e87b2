// A Worker that seals chunks of the sealed-image stream (stream.md §4) with
// WebCrypto AES-256-GCM, off the page's thread; js/seal.js runs several so
// chunks are sealed in parallel. The stream key arrives as a non-extractable
// CryptoKey (structured clone), the plaintext as the customer's File; the
// key bytes never exist here. Messages in:
//   {op: 'init', key, file, chunkBytes, chunks}
//   {op: 'seal', i}          seal chunk i; answer {i, sealed} (transferred)
// Out: {i, sealed: ArrayBuffer} or {i, error}.
let key = null, file = null, chunkBytes = 0, chunks = 0;

// stream.md §4: u88be(i) || last.
function nonce(i, last) {
  const n = new Uint8Array(12);
  const v = new DataView(n.buffer);
  v.setUint32(3, Math.floor(i / 0x100000000));
  v.setUint32(7, i >>> 0);
  n[11] = last ? 1 : 0;
  return n;
}

self.onmessage = async (e) => {
  const m = e.data;
  if (m.op === 'init') {
    ({ key, file, chunkBytes, chunks } = m);
    return;
  }
  const i = m.i;
  try {
    const a = i * chunkBytes;
    const plain = new Uint8Array(await file.slice(a, Math.min(file.size, a + chunkBytes)).arrayBuffer());
    const sealed = await crypto.subtle.encrypt({ name: 'AES-GCM', iv: nonce(i, i === chunks - 1), tagLength: 128 }, key, plain);
    plain.fill(0);
    self.postMessage({ i, sealed }, [sealed]);
  } catch (err) {
    self.postMessage({ i, error: String(err && err.message || err) });
  }
};
