// An uploaded package's encryption tag (docs/format/package.md §4), read in
// the browser: the OVA's first member is the descriptor, fetched with a
// Range request and parsed as XML (DOMParser runs no script).
const VMSEAL_NS = 'https://vmseal.dev/ns/package/v1';

async function range(url, a, b) {
  const res = await fetch(url, { headers: { Range: `bytes=${a}-${b - 1}` }, credentials: 'same-origin' });
  if (!res.ok) throw new Error(`HTTP ${res.status}`);
  return new Uint8Array(await res.arrayBuffer());
}

export async function readTag(imageId) {
  const url = `/v1/images/${encodeURIComponent(imageId)}/package`;
  const header = await range(url, 0, 512);
  const name = new TextDecoder().decode(header.subarray(0, 100)).replace(/\0.*$/s, '');
  const size = parseInt(new TextDecoder().decode(header.subarray(124, 136)).replace(/\0.*$/s, ''), 8);
  if (!name.endsWith('.ovf') || !(size > 0) || size > 4 << 20) throw new Error('the package does not start with its descriptor');
  const text = new TextDecoder().decode(await range(url, 512, 512 + size));
  const doc = new DOMParser().parseFromString(text, 'application/xml');
  if (doc.getElementsByTagName('parsererror').length) throw new Error('descriptor is not well-formed');
  const tag = doc.getElementsByTagNameNS(VMSEAL_NS, 'Tag')[0];
  if (!tag) throw new Error('no encryption tag');
  const out = {};
  for (const a of tag.attributes) out[a.name] = a.value;
  const policy = doc.getElementsByTagNameNS(VMSEAL_NS, 'ReleasePolicy')[0];
  if (policy) out.releasePolicy = policy.textContent.trim();
  out.descriptor = name;
  return out;
}
