// Sealing in the browser (docs/console.md "Sealing in the browser"): the
// sealed OVF package of docs/format/package.md, as an OVA, made with
// WebCrypto from a File read in chunks with File.slice. The plaintext and
// the data key never leave this page; the signing key is imported from the
// customer's own PEM file and is not sent anywhere.
import { base64, concat, ecdsaRawToDer, pemBlock, str, toPem, u32be, u64be, utf8 } from './bytes.js';
import { Sha256, hex } from './sha256.js';
import { tarEnd, tarHeader, tarPadding } from './tar.js';
import { descriptorText } from './descriptor.js';
import { HashWorker, sealChunksInWorkers } from './workers.js';

const subtle = globalThis.crypto.subtle;

// docs/format/stream.md §2, §5; package.md §3, §5.
export const STREAM_URI = 'urn:vmseal:stream:v1';
export const RSA_OAEP_URI = 'http://www.w3.org/2009/xmlenc11#rsa-oaep';
export const X25519_WRAP_URI = 'https://vmseal.dev/ns/wrap/x25519-hkdf-sha256-aes256gcm-v1';
export const DEFAULT_CHUNK_BYTES = 1 << 20;
// The chunk size the console seals with: 256 KiB (the format allows 16 B to
// 16 MiB, stream.md §5). Each WebCrypto call copies its input and allocates
// its output; at 1 MiB those are fresh pages every call (above Chromium's
// allocator buckets), and a fresh page is what costs most on a machine
// like the test VM (docs/console.md "Why the browser seals slowly").
export const CONSOLE_CHUNK_BYTES = 256 << 10;
const MAGIC = new Uint8Array([0x89, 0x56, 0x4d, 0x53, 0x45, 0x41, 0x4c, 0x0a]);
const HEADER_BYTES = 80;
const TAG_BYTES = 16;
const ID_RE = /^[A-Za-z0-9._:@-]{1,128}$/;

// stream.md §5: the sealed length of a p-byte plaintext.
export function sealedLength(p, c) {
  const n = Math.max(1, Math.ceil(p / c));
  return HEADER_BYTES + p + TAG_BYTES * n;
}

// package.md §5.
export function oaepLabel(imageId, tenant, keyVersion, dataAlgorithm = STREAM_URI) {
  return concat(utf8.encode('vmseal-package-key-v1'), new Uint8Array([0]), str(imageId), str(tenant),
                u64be(keyVersion), str(dataAlgorithm));
}

async function hkdf(ikm, salt, info) {
  const key = await subtle.importKey('raw', ikm, 'HKDF', false, ['deriveBits']);
  return new Uint8Array(await subtle.deriveBits({ name: 'HKDF', hash: 'SHA-256', salt, info }, key, 256));
}

// stream.md §4: u88be(i) || last.
function nonce(i, last) {
  const n = new Uint8Array(12);
  const v = new DataView(n.buffer);
  v.setUint32(3, Math.floor(i / 0x100000000));
  v.setUint32(7, i >>> 0);
  n[11] = last ? 1 : 0;
  return n;
}

// One sealed-image stream (stream.md) over `file` (a Blob), handed to
// `sink(bytes)` in order; `progress(done)` after each chunk. `workers`:
// true (one per core, js/workers.js), a number of Workers, or false (all
// on the page's thread).
export async function sealStream(file, dataKey, context, chunkBytes, sink, progress = () => {}, workers = true) {
  const salt = crypto.getRandomValues(new Uint8Array(32));
  const prefix = concat(MAGIC, u32be(1), u32be(chunkBytes), salt);
  const ctx = concat(str(context.imageId), str(context.tenant), u64be(context.keyVersion));
  const streamKeyBytes = await hkdf(dataKey, salt, concat(utf8.encode('vmseal/stream/v1/key'), new Uint8Array([0]), prefix, ctx));
  const commitment = await hkdf(dataKey, salt, concat(utf8.encode('vmseal/stream/v1/commitment'), new Uint8Array([0]), prefix, ctx));
  const key = await subtle.importKey('raw', streamKeyBytes, 'AES-GCM', false, ['encrypt']);
  streamKeyBytes.fill(0);
  await sink(concat(prefix, commitment));
  const size = file.size;
  const n = Math.max(1, Math.ceil(size / chunkBytes));
  if (workers && typeof Worker !== 'undefined') {
    // Chunks sealed in parallel in Workers, handed on in order.
    await sealChunksInWorkers(file, key, chunkBytes, n, async (sealed, i) => {
      await sink(sealed);
      progress(Math.min(size, (i + 1) * chunkBytes));
    }, { count: workers === true ? undefined : workers });
    return;
  }
  // On the page's thread: a few chunks in flight, reading the next slices
  // while WebCrypto seals.
  const depth = 4;
  const pending = [];
  const start = (i) => (async () => {
    const a = i * chunkBytes;
    const plain = new Uint8Array(await file.slice(a, Math.min(size, a + chunkBytes)).arrayBuffer());
    const sealed = new Uint8Array(await subtle.encrypt({ name: 'AES-GCM', iv: nonce(i, i === n - 1), tagLength: 128 }, key, plain));
    plain.fill(0);
    return sealed;
  })();
  for (let i = 0; i < Math.min(depth, n); i++) pending.push(start(i));
  for (let i = 0; i < n; i++) {
    const sealed = await pending.shift();
    if (i + depth < n) pending.push(start(i + depth));
    await sink(sealed);
    progress(Math.min(size, (i + 1) * chunkBytes));
  }
}

// The customer key as the KMS certified it (GET /v1/customer/key):
// {type: 'rsa'|'x25519', spki, keyId}.
export async function recipientFromPem(publicKeyPem) {
  const spki = pemBlock(publicKeyPem, 'PUBLIC KEY');
  const keyId = 'sha256:' + hex(new Uint8Array(await subtle.digest('SHA-256', spki)));
  // id-X25519 is OID 1.3.101.110 (06 03 2b 65 6e); its SPKI is 44 bytes.
  const x25519 = spki.length === 44 && spki[6] === 0x2b && spki[7] === 0x65 && spki[8] === 0x6e;
  return { type: x25519 ? 'x25519' : 'rsa', spki, keyId };
}

// package.md §3: the data key wrapped to the recipient with AD/label.
export async function wrapDataKey(recipient, dataKey, label) {
  if (recipient.type === 'rsa') {
    const pub = await subtle.importKey('spki', recipient.spki, { name: 'RSA-OAEP', hash: 'SHA-256' }, false, ['encrypt']);
    return new Uint8Array(await subtle.encrypt({ name: 'RSA-OAEP', label }, pub, dataKey));
  }
  // key-wrap.md "X25519".
  const R = recipient.spki.subarray(12);
  const rKey = await subtle.importKey('raw', R, { name: 'X25519' }, false, []);
  const eph = await subtle.generateKey({ name: 'X25519' }, true, ['deriveBits']);
  const E = new Uint8Array(await subtle.exportKey('raw', eph.publicKey));
  const shared = new Uint8Array(await subtle.deriveBits({ name: 'X25519', public: rKey }, eph.privateKey, 256));
  if (shared.every((b) => b === 0)) throw new Error('decryption failed');
  const wrapKeyBytes = await hkdf(shared, concat(E, R), concat(utf8.encode('vmseal x25519 key wrap v1'), label));
  shared.fill(0);
  const wrapKey = await subtle.importKey('raw', wrapKeyBytes, 'AES-GCM', false, ['encrypt']);
  wrapKeyBytes.fill(0);
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const ct = new Uint8Array(await subtle.encrypt({ name: 'AES-GCM', iv, additionalData: label, tagLength: 128 }, wrapKey, dataKey));
  return concat(new Uint8Array([1]), E, iv, ct);
}

// The customer's package-signing key from its PKCS#8 PEM file (made by
// `vmseal customer register` or by this console), never sent anywhere.
export async function importSigningKey(pemText) {
  const der = pemBlock(pemText, 'PRIVATE KEY');
  return subtle.importKey('pkcs8', der, { name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign']);
}

export async function signDer(privateKey, bytes) {
  const raw = new Uint8Array(await subtle.sign({ name: 'ECDSA', hash: 'SHA-256' }, privateKey, bytes));
  return ecdsaRawToDer(raw);
}

function diskNameFor(file) {
  return /\.qcow2$/i.test(file.name) ? 'disk1.qcow2' : 'disk1.raw';
}

// Seals `file` into an OVA Blob. opts: {recipientPem, tenant, imageId?,
// signingKey (CryptoKey) , signingCertPem, name, chunkBytes?, cpus?,
// memoryMib?, progress?(done, total), workers? (true: chunks sealed in
// Workers, the default; a number; false: on the page's thread),
// ovaSha256? (also the OVA's SHA-256, in a Worker)}. Returns {blob, name,
// imageId, keyId, sha256 (hex, or null without ovaSha256)}.
export async function sealPackage(file, opts) {
  const tenant = opts.tenant;
  const imageId = opts.imageId || crypto.randomUUID();
  if (!ID_RE.test(tenant) || !ID_RE.test(imageId)) throw new Error('imageId and tenant must be 1-128 of [A-Za-z0-9._:@-]');
  const stem = (opts.name || 'vm').replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 64) || 'vm';
  const chunkBytes = opts.chunkBytes || CONSOLE_CHUNK_BYTES;
  const qcow2 = await isQcow2(file);
  const diskName = qcow2 ? 'disk1.qcow2' : diskNameFor(file);
  const href = `${diskName}.vmseal`;
  const sealedSize = sealedLength(file.size, chunkBytes);
  const capacity = qcow2 ? await qcow2VirtualSize(file) : file.size;
  const recipient = await recipientFromPem(opts.recipientPem);
  const keyWrap = recipient.type === 'rsa' ? RSA_OAEP_URI : X25519_WRAP_URI;
  const label = oaepLabel(imageId, tenant, 1);
  const dataKey = crypto.getRandomValues(new Uint8Array(32));
  let wrapped;
  try {
    wrapped = await wrapDataKey(recipient, dataKey, label);
    const created = new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
    const descriptor = utf8.encode(descriptorText({
      href, sealedSize, capacity, qcow2, keyWrap, label: base64(label), keyId: recipient.keyId,
      wrapped: base64(wrapped), chunkBytes, imageId, tenant, created,
      cpus: opts.cpus || 2, memoryMib: opts.memoryMib || 2048, rsa: recipient.type === 'rsa',
    }));
    // Sealed bytes are folded into Blobs every 64 MiB, so that Chromium can
    // keep them in its blob store (on disk when large), not in the JS heap.
    const blobs = [];
    let parts = [], partBytes = 0;
    // The OVA's own SHA-256 (opts.ovaSha256: for the upload's commit, so it
    // need not read the package again) in a second Worker.
    const ovaHash = opts.ovaSha256 && typeof Worker !== 'undefined' ? new HashWorker() : null;
    const put = (b) => {
      if (ovaHash) ovaHash.update(b);
      parts.push(b);
      partBytes += b.length;
      if (partBytes >= 64 << 20) { blobs.push(new Blob(parts)); parts = []; partBytes = 0; }
    };
    const member = (name, bytes) => { put(tarHeader(name, bytes.length)); put(bytes); put(tarPadding(bytes.length)); };
    member(`${stem}.ovf`, descriptor);
    put(tarHeader(href, sealedSize));
    // The manifest's digest of the sealed file, in its own Worker while the
    // chunks are sealed in others.
    const useWorkers = opts.workers !== false && typeof Worker !== 'undefined';
    const fileHash = useWorkers ? new HashWorker() : new Sha256();
    // With Workers the sealed chunks travel to the digest's Worker and back
    // (transferred, not copied: fresh memory is what costs here, see
    // docs/console.md "Why the browser seals slowly"), at most 16 at a time.
    const passing = [];
    const sink = useWorkers
      ? async (b) => {
        passing.push(fileHash.pass(b));
        if (passing.length >= 16) put(await passing.shift());
      }
      : (b) => { fileHash.update(b); put(b); };
    await sealStream(file, dataKey, { imageId: `${imageId}/file1`, tenant, keyVersion: 1 }, chunkBytes,
      sink, (done) => opts.progress && opts.progress(done, file.size),
      useWorkers ? (opts.workers || true) : false);
    while (passing.length) put(await passing.shift());
    const fileDigest = useWorkers ? await fileHash.digest() : hex(fileHash.digest());
    put(tarPadding(sealedSize));
    const descriptorHash = new Sha256().update(descriptor).digest();
    const manifest = utf8.encode(`SHA256(${stem}.ovf)= ${hex(descriptorHash)}\nSHA256(${href})= ${fileDigest}\n`);
    member(`${stem}.mf`, manifest);
    if (opts.signingKey) {
      const sig = await signDer(opts.signingKey, manifest);
      const cert = utf8.encode(`SHA256(${stem}.mf)= ${hex(sig)}\n${opts.signingCertPem.trim()}\n`);
      member(`${stem}.cert`, cert);
    }
    put(tarEnd());
    return { blob: new Blob([...blobs, ...parts], { type: 'application/x-tar' }), name: `${stem}.ova`, imageId,
             keyId: recipient.keyId, sha256: ovaHash ? await ovaHash.digest() : null };
  } finally {
    dataKey.fill(0);
  }
}

async function isQcow2(file) {
  const head = new Uint8Array(await file.slice(0, 4).arrayBuffer());
  return head.length === 4 && head[0] === 0x51 && head[1] === 0x46 && head[2] === 0x49 && head[3] === 0xfb;
}

async function qcow2VirtualSize(file) {
  const head = new DataView(await file.slice(0, 32).arrayBuffer());
  return Number(head.getBigUint64(24));
}

// A new signing key pair (ECDSA P-256) for registration: the PKCS#8 PEM the
// customer saves, the SPKI PEM and the proof of possession the portal
// forwards to the KMS (package.md §8.2, last paragraph).
export async function newSigningKey() {
  const pair = await subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify']);
  const spki = new Uint8Array(await subtle.exportKey('spki', pair.publicKey));
  const pkcs8 = new Uint8Array(await subtle.exportKey('pkcs8', pair.privateKey));
  const message = concat(utf8.encode('vmseal-signing-key-proof-v1'), new Uint8Array([0]), spki);
  const proof = await signDer(pair.privateKey, message);
  return { privatePem: toPem(pkcs8, 'PRIVATE KEY'), publicPem: toPem(spki, 'PUBLIC KEY'), proof: base64(proof) };
}

// SHA-256 of a Blob, streamed (in a Worker where there are Workers).
export async function sha256File(blob, progress = () => {}) {
  if (typeof Worker !== 'undefined') return HashWorker.blob(blob, progress);
  const h = new Sha256();
  const step = 8 << 20;
  for (let a = 0; a < blob.size; a += step) {
    h.update(new Uint8Array(await blob.slice(a, a + step).arrayBuffer()));
    progress(Math.min(blob.size, a + step));
  }
  return hex(h.digest());
}
