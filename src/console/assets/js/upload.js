// Resumable upload of a package over the portal's upload sessions
// (docs/protocol.md; POST /v1/uploads, PUT ?offset=, GET, commit). The
// session id is kept in localStorage under the file's name, size and date,
// so choosing the same file again resumes at the offset the portal reports.
//
// Speed (docs/console.md "Upload"): each piece goes to fetch() as a Blob
// slice, so Chromium streams it from the file without copying it through
// the page's JavaScript; the SHA-256 the commit carries is computed in a
// Worker at the same time as the pieces are sent (or given by the caller,
// who computed it while sealing), not between them.
import { call, get, post } from './api.js';
import { HashWorker } from './workers.js';
import { Sha256, hex } from './sha256.js';

export const PIECE_BYTES = 64 << 20;

function resumeKey(file) {
  return `vmseal-upload:${file.name}:${file.size}:${file.lastModified || 0}`;
}

// The whole file's SHA-256: in a Worker when there are Workers.
function digestOf(file, signal) {
  if (typeof Worker !== 'undefined') return HashWorker.blob(file, undefined, signal);
  return (async () => {
    const h = new Sha256();
    for (let a = 0; a < file.size; a += 8 << 20) h.update(new Uint8Array(await file.slice(a, a + (8 << 20)).arrayBuffer()));
    return hex(h.digest());
  })();
}

// Uploads `file` (a Blob with a name) and commits it as image `name`.
// progress(sent, total); returns the committed image. `signal` aborts
// between pieces (the session stays resumable). `sha256`: the file's
// digest (hex) if the caller has it; otherwise it is computed alongside.
// `headers` go with every call (a tool that holds a bearer token instead of
// the session cookie; the console itself passes none).
export async function uploadPackage(file, name, { progress = () => {}, signal, pieceBytes = PIECE_BYTES, headers = {}, sha256 = null } = {}) {
  const key = resumeKey(file);
  let id = localStorage.getItem(key);
  let offset = 0;
  if (id) {
    try {
      offset = (await get(`/v1/uploads/${id}`, { headers })).offset_bytes;
    } catch {
      id = null;
    }
  }
  if (!id) {
    id = (await post('/v1/uploads', {}, { headers })).upload_id;
    localStorage.setItem(key, id);
    offset = 0;
  }
  // The digest covers the whole file, bytes sent before a resume too (read
  // again locally, not sent).
  const hashing = new AbortController();
  const digest = sha256 ? Promise.resolve(sha256) : digestOf(file, hashing.signal);
  digest.catch(() => {});  // awaited below; an early failure is not unhandled
  let image;
  try {
    progress(offset, file.size);
    while (offset < file.size) {
      if (signal && signal.aborted) throw new DOMException('upload paused', 'AbortError');
      const piece = file.slice(offset, Math.min(file.size, offset + pieceBytes));
      const state = await call('PUT', `/v1/uploads/${id}?offset=${offset}`, undefined, { raw: piece, headers });
      offset = state.offset_bytes;
      progress(offset, file.size);
    }
    image = await post(`/v1/uploads/${id}/commit`, { name, sha256: await digest }, { headers });
  } finally {
    hashing.abort();  // a paused or failed upload leaves no Worker hashing
  }
  localStorage.removeItem(key);
  return image;
}
