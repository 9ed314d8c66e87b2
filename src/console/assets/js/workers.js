// The page's side of the console's Workers (docs/console.md "Sealing in the
// browser", "Upload"): a SHA-256 computed in its own Worker, and a pool of
// chunk-sealing Workers. Module workers from the console's own origin
// (CSP worker-src falls back to script-src 'self').

const workerUrl = (name) => new URL(`./${name}`, import.meta.url);

// A running SHA-256 in a Worker. update(bytes) copies the bytes to it (the
// caller keeps its own); digest() resolves to the hex digest.
export class HashWorker {
  constructor() {
    this.w = new Worker(workerUrl('hash_worker.js'), { type: 'module' });
    this.result = new Promise((resolve, reject) => {
      this.w.onmessage = (e) => {
        if (e.data.bytes) { this.passed(e.data); return; }
        if (e.data.error) reject(new Error(`sha-256 worker: ${e.data.error}`));
        else if (e.data.digest) resolve(e.data.digest);
        else if (this.onprogress) this.onprogress(e.data.done);
      };
      this.w.onerror = (e) => reject(new Error(`sha-256 worker: ${e.message || 'failed'}`));
    });
    this.result.finally(() => this.w.terminate()).catch(() => {});
  }

  update(bytes) {
    const copy = bytes.slice();
    this.w.postMessage({ op: 'update', bytes: copy.buffer }, [copy.buffer]);
  }
  // Hashes `bytes` next without copying them: the buffer is transferred to
  // the Worker and back; resolves to the same bytes (a Uint8Array over the
  // whole buffer `bytes` had, which must be exactly its view). Calls are
  // answered in order.
  pass(bytes) {
    if (bytes.byteOffset !== 0 || bytes.byteLength !== bytes.buffer.byteLength) bytes = bytes.slice();
    this.sent = (this.sent || 0) + 1;
    this.pending = this.pending || new Map();
    const n = this.sent;
    const p = new Promise((resolve, reject) => this.pending.set(n, { resolve, reject }));
    this.result.catch((err) => { for (const q of this.pending.values()) q.reject(err); this.pending.clear(); });
    this.w.postMessage({ op: 'pass', bytes: bytes.buffer, n }, [bytes.buffer]);
    return p;
  }
  passed({ n, bytes }) {
    const q = this.pending.get(n);
    this.pending.delete(n);
    if (q) q.resolve(new Uint8Array(bytes));
  }
  digest() { this.w.postMessage({ op: 'digest' }); return this.result; }
  // Hashes a whole Blob (read in the Worker); resolves to the hex digest.
  // An aborted `signal` stops the Worker and rejects.
  static blob(blob, onprogress, signal) {
    const h = new HashWorker();
    h.onprogress = onprogress;
    h.w.postMessage({ op: 'blob', blob });
    if (!signal) return h.result;
    const stopped = new Promise((resolve, reject) => {
      const stop = () => { h.w.terminate(); reject(new DOMException('hash stopped', 'AbortError')); };
      if (signal.aborted) stop(); else signal.addEventListener('abort', stop, { once: true });
    });
    return Promise.race([h.result, stopped]);
  }
}

// How many sealing Workers: the browser's cores, at least 2, at most 8.
export function sealWorkerCount() {
  const n = (globalThis.navigator && navigator.hardwareConcurrency) || 2;
  return Math.max(2, Math.min(8, n));
}

// Seals chunks 0..chunks-1 of `file` with `key` (a non-extractable AES-GCM
// CryptoKey) in `count` Workers, at most `depth` chunks in flight, and
// hands the sealed chunks to `sink(bytes, i)` in order.
export async function sealChunksInWorkers(file, key, chunkBytes, chunks, sink, { count = sealWorkerCount(), depth = 0 } = {}) {
  const inFlight = depth || count * 2;
  const workers = [];
  const waiting = new Map();  // i -> {resolve, reject}
  let failed = null;
  const fail = (err) => {
    failed = failed || err;
    for (const p of waiting.values()) p.reject(failed);
    waiting.clear();
  };
  try {
    for (let k = 0; k < count; k++) {
      const w = new Worker(workerUrl('seal_worker.js'), { type: 'module' });
      w.onmessage = (e) => {
        const p = waiting.get(e.data.i);
        if (!p) return;
        waiting.delete(e.data.i);
        if (e.data.error) p.reject(new Error(`seal worker: ${e.data.error}`));
        else p.resolve(new Uint8Array(e.data.sealed));
      };
      w.onerror = (e) => fail(new Error(`seal worker: ${e.message || 'failed'}`));
      w.postMessage({ op: 'init', key, file, chunkBytes, chunks });
      workers.push(w);
    }
    const promises = new Map();
    const start = (i) => {
      if (failed) throw failed;
      promises.set(i, new Promise((resolve, reject) => waiting.set(i, { resolve, reject })));
      workers[i % count].postMessage({ op: 'seal', i });
    };
    for (let i = 0; i < Math.min(inFlight, chunks); i++) start(i);
    for (let i = 0; i < chunks; i++) {
      const sealed = await promises.get(i);
      promises.delete(i);
      if (i + inFlight < chunks) start(i + inFlight);
      await sink(sealed, i);
    }
  } finally {
    for (const w of workers) w.terminate();
  }
}
