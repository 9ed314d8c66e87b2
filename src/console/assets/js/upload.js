// Resumable upload of a package over the portal's upload sessions
// (docs/protocol.md; POST /v1/uploads, PUT ?offset=, GET, commit). The
// session id is kept in localStorage under the file's name, size and date,
// so choosing the same file again resumes at the offset the portal reports.
import { call, get, post } from './api.js';
import { Sha256, hex } from './sha256.js';

export const PIECE_BYTES = 32 << 20;

function resumeKey(file) {
  return `vmseal-upload:${file.name}:${file.size}:${file.lastModified || 0}`;
}

// Uploads `file` (a Blob with a name) and commits it as image `name`.
// progress(sent, total); returns the committed image. `signal` aborts
// between pieces (the session stays resumable).
// `headers` go with every call (a tool that holds a bearer token instead of
// the session cookie; the console itself passes none).
export async function uploadPackage(file, name, { progress = () => {}, signal, pieceBytes = PIECE_BYTES, headers = {} } = {}) {
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
  // The digest covers the whole file: bytes sent before a resume are read
  // again here (locally, not sent).
  const hash = new Sha256();
  for (let a = 0; a < offset; a += pieceBytes) {
    hash.update(new Uint8Array(await file.slice(a, Math.min(offset, a + pieceBytes)).arrayBuffer()));
  }
  progress(offset, file.size);
  while (offset < file.size) {
    if (signal && signal.aborted) throw new DOMException('upload paused', 'AbortError');
    const piece = new Uint8Array(await file.slice(offset, Math.min(file.size, offset + pieceBytes)).arrayBuffer());
    hash.update(piece);
    const state = await call('PUT', `/v1/uploads/${id}?offset=${offset}`, undefined, { raw: piece, headers });
    offset = state.offset_bytes;
    progress(offset, file.size);
  }
  const image = await post(`/v1/uploads/${id}/commit`, { name, sha256: hex(hash.digest()) }, { headers });
  localStorage.removeItem(key);
  return image;
}
