// The console's pages: a hash router over the portal's JSON API. Every
// datum reaches the page through dom.js (textContent, attribute values).
import { ApiError, del, get, post, setCsrf, setOperatorCsrf } from './api.js';
import { bytes, clear, el, table, when } from './dom.js';
import { importSigningKey, newSigningKey, sealPackage, sha256File, CONSOLE_CHUNK_BYTES } from './seal.js';
import { hex } from './sha256.js';
import { pemBlock } from './bytes.js';
import { readTag } from './tag.js';
import { uploadPackage } from './upload.js';
import { checkpointSize, verifyAuditPage } from './audit_verify.js';

const $ = (id) => document.getElementById(id);
const session = { customerId: '', operator: false };
let lastSealed = null;  // {blob, name, ...} of the last package sealed here
let poller = null;
// Closes the live job page's event stream (set while it is open).
let liveStop = null;

function status(text, kind = '') {
  const s = $('status');
  s.textContent = text;
  s.className = kind;
}

function fail(e) {
  status(e instanceof ApiError ? `${e.message}${e.reason ? ` (${e.reason})` : ''}` : String(e.message || e), 'error');
}

function download(name, blob, text) {
  const a = el('a', { href: URL.createObjectURL(blob), download: name, text: text || `Download ${name}` });
  return a;
}

async function refreshSession() {
  try {
    const s = await get('/v1/console/session');
    session.customerId = s.customer_id;
    setCsrf(s.csrf_token);
  } catch {
    session.customerId = '';
    setCsrf('');
  }
  try {
    const o = await get('/v1/console/operator/session');
    session.operator = true;
    setOperatorCsrf(o.csrf_token);
  } catch {
    session.operator = false;
  }
  const who = $('who');
  clear(who);
  if (session.customerId) {
    who.append(`Signed in as ${session.customerId} `,
      el('button', { type: 'button', class: 'secondary', text: 'Sign out', on: { click: async () => {
        await post('/v1/console/logout').catch(() => {});
        await refreshSession();
        location.hash = '#/login';
      } } }));
  } else if (session.operator) {
    who.append('Operator');
  }
}

function requireLogin(page) {
  if (session.customerId) return true;
  page.append(el('p', {}, 'Sign in first: ', el('a', { href: '#/login', text: 'Sign in' })));
  return false;
}

// --- sign in and register ---
function loginPage(page) {
  const loginId = el('input', { id: 'login-id', name: 'login_id', autocomplete: 'username', required: true });
  const password = el('input', { id: 'login-password', name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  page.append(el('h2', { text: 'Sign in' }),
    el('form', { id: 'login-form', on: { submit: async (ev) => {
      ev.preventDefault();
      try {
        const r = await post('/v1/console/login', { login_id: loginId.value, password: password.value });
        setCsrf(r.csrf_token);
        password.value = '';
        await refreshSession();
        status(`Signed in as ${r.customer_id}`, 'ok');
        location.hash = '#/images';
      } catch (e) { fail(e); }
    } } },
    el('label', { for: 'login-id' }, 'Login id', loginId),
    el('label', { for: 'login-password' }, 'Password', password),
    el('button', { type: 'submit', text: 'Sign in' })));

  const algorithm = el('select', { id: 'reg-algorithm', name: 'key_algorithm' },
    el('option', { value: 'rsa3072', text: 'RSA-3072 (RSA-OAEP-256)' }),
    el('option', { value: 'x25519', text: 'X25519' }));
  const result = el('div', { id: 'register-result' });
  page.append(el('h2', { text: 'Register' }),
    el('p', { text: 'Registration makes your customer key at the KMS and a package-signing key here, in this browser. ' +
      'Save the signing key file: it never leaves your machine, and you need it to seal.' }),
    el('form', { id: 'register-form', on: { submit: async (ev) => {
      ev.preventDefault();
      try {
        status('Making a signing key...');
        const signing = await newSigningKey();
        const r = await post('/v1/register', { key_algorithm: algorithm.value,
          signing_public_key_pem: signing.publicPem, signing_key_proof: signing.proof });
        clear(result).append(el('dl', {},
          el('dt', { text: 'Login id' }), el('dd', {}, el('code', { id: 'new-login-id', text: r.login_id })),
          el('dt', { text: 'Password (shown once)' }), el('dd', {}, el('code', { id: 'new-password', text: r.password })),
          el('dt', { text: 'Customer id' }), el('dd', { text: r.customer_id }),
          el('dt', { text: 'Signing key' }),
          el('dd', {}, download('signing-key.pem', new Blob([signing.privatePem], { type: 'application/x-pem-file' }),
            'Save signing-key.pem (private; keep it)'))));
        loginId.value = r.login_id;
        status('Registered. Save the signing key, then sign in.', 'ok');
      } catch (e) { fail(e); }
    } } },
    el('label', { for: 'reg-algorithm' }, 'Customer key', algorithm),
    el('button', { type: 'submit', text: 'Register' })),
    result);

  const token = el('input', { id: 'operator-token', type: 'password', autocomplete: 'off' });
  page.append(el('h2', { text: 'Operator sign in' }),
    el('form', { id: 'operator-form', on: { submit: async (ev) => {
      ev.preventDefault();
      try {
        const r = await post('/v1/console/operator/login', { token: token.value });
        token.value = '';
        setOperatorCsrf(r.csrf_token);
        await refreshSession();
        location.hash = '#/operator';
      } catch (e) { fail(e); }
    } } },
    el('label', { for: 'operator-token' }, 'Operator credential', token),
    el('button', { type: 'submit', text: 'Sign in as operator' })));
}

async function sha256Hex(data) {
  return hex(new Uint8Array(await crypto.subtle.digest('SHA-256', data)));
}

// --- the agent and the certificates, with fingerprints ---
async function downloadsPage(page) {
  page.append(el('h2', { text: 'The agent' }));
  try {
    const a = await get('/v1/agent/sha256');
    page.append(el('dl', {},
      el('dt', { text: 'File' }), el('dd', {}, el('a', { href: '/v1/agent', download: 'vmseal', text: 'vmseal (the customer agent)' })),
      el('dt', { text: 'Size' }), el('dd', { text: `${a.size_bytes} bytes` }),
      el('dt', { text: 'SHA-256' }), el('dd', {}, el('code', { id: 'agent-sha256', text: a.sha256 }))),
    el('p', { text: 'Verify before running it:' }),
    el('pre', { text: `echo "${a.sha256}  vmseal" | sha256sum -c -\nchmod +x vmseal && ./vmseal --help` }));
  } catch (e) {
    page.append(el('p', { class: 'error', text: `No agent is served: ${e.message}` }));
  }
  if (!requireLogin(page)) return;
  const k = await get('/v1/customer/key');
  const certs = [
    ['customer.pem', 'Your customer certificate (seal to it)', k.cert_pem],
    ['kms-ca.pem', 'The KMS CA certificate', k.kms_ca_cert_pem],
  ];
  if (k.signing_key && k.signing_key.cert_pem) certs.push(['signing-cert.pem', 'Your signing certificate', k.signing_key.cert_pem]);
  page.append(el('h2', { text: 'Certificates' }));
  const rows = [];
  for (const [file, what, pem] of certs) {
    const fp = await sha256Hex(pemBlock(pem, 'CERTIFICATE'));
    rows.push([what, download(file, new Blob([pem], { type: 'application/x-pem-file' }), file),
      el('code', { class: 'fingerprint', text: fp })]);
  }
  page.append(table('Certificates and their SHA-256 fingerprints (of the DER)', ['What', 'File', 'SHA-256 fingerprint'], rows),
    el('p', { text: 'Verify a downloaded certificate: the fingerprint openssl prints must be the one above (without colons), ' +
      'and the customer certificate must chain to the KMS CA:' }),
    el('pre', { text: 'openssl x509 -in customer.pem -noout -fingerprint -sha256\n' +
      'openssl verify -CAfile kms-ca.pem customer.pem' }),
    el('dl', {}, el('dt', { text: 'Customer key id' }), el('dd', {}, el('code', { text: k.key_id })),
      el('dt', { text: 'Algorithm' }), el('dd', { text: k.algorithm })));
}

// --- images ---
async function imagesPage(page) {
  if (!requireLogin(page)) return;
  const { images } = await get('/v1/images');
  const detail = el('div', { id: 'image-detail' });
  const rows = images.map((i) => [
    el('span', { class: 'image-name', text: i.name }),
    el('code', { text: i.image_id }),
    bytes(i.size_bytes),
    when(i.created_unix),
    el('span', {},
      el('button', { type: 'button', class: 'secondary', text: 'Details', 'aria-label': `Details of ${i.name}`,
        on: { click: () => imageDetail(detail, i) } }), ' ',
      el('button', { type: 'button', text: 'Launch', 'aria-label': `Launch ${i.name}`,
        on: { click: () => launch(i.image_id) } })),
  ]);
  page.append(table('Your images', ['Name', 'Image id', 'Size', 'Uploaded', 'Actions'], rows), detail);
}

async function imageDetail(box, i) {
  clear(box).append(el('h2', {}, 'Image ', el('span', { text: i.name })));
  const dl = el('dl', {},
    el('dt', { text: 'Image id' }), el('dd', { text: i.image_id }),
    el('dt', { text: 'Package SHA-256' }), el('dd', {}, el('code', { text: i.sha256 })),
    el('dt', { text: 'Tagged image id' }), el('dd', { text: i.tagged_image_id }));
  box.append(dl);
  try {
    const tag = await readTag(i.image_id);
    const rows = Object.entries(tag).map(([k, v]) => [k, el('code', { text: v })]);
    box.append(table('Encryption tag (from the signed descriptor)', ['Attribute', 'Value'], rows));
  } catch (e) {
    box.append(el('p', { class: 'error', text: `Encryption tag: ${e.message}` }));
  }
  try {
    const p = await get(`/v1/images/${encodeURIComponent(i.image_id)}/placement`);
    box.append(placementTable(p, 'Where it would run now'));
  } catch (e) {
    box.append(el('p', { class: 'error', text: `Placement: ${e.message}` }));
  }
}

function placementTable(p, caption) {
  const rows = (p.decisions || []).map((d) => [d.host_id, d.chosen ? 'chosen' : (d.eligible ? 'eligible' : 'not eligible'),
    (d.reasons || []).join(', '), d.kms_reason || '', `${d.load}/${d.capacity_slots}`]);
  return table(`${caption} (decided ${when(p.decided_unix)})`, ['Host', 'Verdict', 'Reasons', 'KMS reason', 'Load'], rows);
}

// --- launch and live job status ---
async function launch(imageId) {
  try {
    const j = await post('/v1/launch', { image_id: imageId });
    location.hash = `#/vms/${j.job_id}`;
  } catch (e) { fail(e); }
}

function jobView(j) {
  return el('dl', { id: 'job-status' },
    el('dt', { text: 'Job' }), el('dd', {}, el('code', { text: j.job_id })),
    el('dt', { text: 'State' }), el('dd', { class: `state-${j.state}`, id: 'job-state', text: j.state }),
    el('dt', { text: 'Host' }), el('dd', { text: j.host_id || '(not placed)' }),
    el('dt', { text: 'VM' }), el('dd', { text: j.vm_name || '' }),
    el('dt', { text: 'Wanted' }), el('dd', { id: 'job-wanted', text: j.wanted }),
    el('dt', { text: 'Ended' }), el('dd', { id: 'job-ended', text: j.end_reason ? `${j.end_reason} ${j.end_text || ''} ${when(j.ended_unix)}` : '' }),
    el('dt', { text: 'Failure' }), el('dd', { text: j.failure_reason || '' }),
    el('dt', { text: 'Attempts' }), el('dd', { text: (j.attempts || []).map((a) => `${a.host_id}: ${a.refusal || a.reason}`).join('; ') }),
    el('dt', { text: 'Updated' }), el('dd', { text: when(j.updated_unix) }));
}

async function vmsPage(page, jobId) {
  if (!requireLogin(page)) return;
  if (jobId) {
    const live = el('div', { id: 'live' });
    const log = el('pre', { id: 'console-log', 'aria-label': 'Serial console log', tabindex: '0' });
    const actions = el('p', {},
      el('button', { type: 'button', text: 'Stop', on: { click: () => vmAction(jobId, 'stop') } }), ' ',
      el('button', { type: 'button', text: 'Start', on: { click: () => vmAction(jobId, 'start') } }), ' ',
      el('button', { type: 'button', class: 'secondary', text: 'Delete', on: { click: () => vmAction(jobId, 'delete') } }));
    page.append(el('h2', { text: 'Job status (live)' }), live, actions, el('h2', { text: 'Serial console' }), log);
    const mode = el('p', { id: 'live-mode', text: '' });
    page.insertBefore(mode, live);
    const tick = async () => {
      try {
        const j = await get(`/v1/jobs/${encodeURIComponent(jobId)}`);
        clear(live).append(jobView(j));
        try {
          const c = await get(`/v1/vms/${encodeURIComponent(jobId)}/console`);
          log.textContent = c.text;
        } catch (e) {
          if (!log.textContent) log.textContent = `(${e.message})`;
        }
      } catch (e) { fail(e); }
    };
    const poll = async () => {
      mode.textContent = 'Updates: polling every second';
      mode.setAttribute('data-mode', 'polling');
      await tick();
      if (location.hash === `#/vms/${jobId}` && !poller) poller = setInterval(tick, 1000);
    };
    // Live: server-sent events from GET /v1/jobs/{id}/events (the session
    // cookie goes with it; nothing secret in the URL). When the stream
    // cannot be opened (no EventSource, refused, too many streams) the page
    // polls instead.
    if (typeof EventSource === 'undefined') { await poll(); return; }
    const es = new EventSource(`/v1/jobs/${encodeURIComponent(jobId)}/events`);
    liveStop = () => es.close();
    es.addEventListener('job', (e) => {
      mode.textContent = 'Updates: live (server-sent events)';
      mode.setAttribute('data-mode', 'events');
      clear(live).append(jobView(JSON.parse(e.data)));
    });
    es.addEventListener('console', (e) => { log.textContent = JSON.parse(e.data).text; });
    es.addEventListener('gone', () => { es.close(); liveStop = null; status('This job is gone.'); });
    es.onerror = () => {
      // CONNECTING: the browser reconnects by itself (the portal ends each
      // stream after a few minutes). CLOSED: refused; poll instead.
      if (es.readyState !== EventSource.CLOSED) return;
      liveStop = null;
      if (location.hash === `#/vms/${jobId}`) poll();
    };
    return;
  }
  const { jobs } = await get('/v1/jobs');
  const rows = jobs.map((j) => [el('a', { href: `#/vms/${j.job_id}`, text: j.vm_name || j.job_id }),
    j.image_id, el('span', { class: `state-${j.state}`, text: j.state }), j.host_id || '', j.wanted, when(j.updated_unix)]);
  page.append(table('Your VMs and launches', ['VM / job', 'Image', 'State', 'Host', 'Wanted', 'Updated'], rows));
}

async function vmAction(jobId, action) {
  try {
    const path = `/v1/vms/${encodeURIComponent(jobId)}`;
    if (action === 'delete') await del(path); else await post(`${path}/${action}`);
    status(`${action} requested`, 'ok');
  } catch (e) { fail(e); }
}

// --- sealing in the browser ---
async function sealPage(page) {
  if (!requireLogin(page)) return;
  const k = await get('/v1/customer/key');
  const disk = el('input', { id: 'seal-disk', type: 'file' });
  const keyFile = el('input', { id: 'seal-signing-key', type: 'file', accept: '.pem' });
  const name = el('input', { id: 'seal-name', value: 'vm', pattern: '[A-Za-z0-9._-]{1,64}' });
  const cpus = el('input', { id: 'seal-cpus', type: 'number', min: '1', max: '64', value: '2' });
  const memory = el('input', { id: 'seal-memory', type: 'number', min: '64', max: '1048576', value: '2048' });
  const bar = el('progress', { id: 'seal-progress', max: '1', value: '0', 'aria-label': 'Sealing progress' });
  const out = el('div', { id: 'seal-result' });
  page.append(el('h2', { text: 'Seal an image in this browser' }),
    el('p', { text: 'The disk image (raw or qcow2) is encrypted here with WebCrypto, chunk by chunk; neither it nor its key ' +
      'leaves this page unencrypted. The package is signed with your signing key file, read here and not uploaded.' }),
    el('dl', {}, el('dt', { text: 'Recipient key' }), el('dd', {}, el('code', { text: k.key_id })),
      el('dt', { text: 'Tenant' }), el('dd', { text: session.customerId })),
    el('form', { id: 'seal-form', on: { submit: async (ev) => {
      ev.preventDefault();
      try {
        if (!disk.files[0]) throw new Error('choose a disk image');
        if (!keyFile.files[0]) throw new Error('choose your signing key file (signing-key.pem)');
        if (!k.signing_key) throw new Error('your account has no signing key');
        const signingKey = await importSigningKey(await keyFile.files[0].text());
        const t0 = performance.now();
        status('Sealing...');
        const r = await sealPackage(disk.files[0], {
          recipientPem: k.public_key_pem, tenant: session.customerId, signingKey,
          signingCertPem: k.signing_key.cert_pem, name: name.value, chunkBytes: CONSOLE_CHUNK_BYTES,
          cpus: Number(cpus.value) || 2, memoryMib: Number(memory.value) || 2048, ovaSha256: true,
          progress: (done, total) => { bar.max = String(total || 1); bar.value = String(done); },
        });
        const seconds = (performance.now() - t0) / 1000;
        lastSealed = r;
        // The package's digest, for comparing with the downloaded file (and
        // for the upload's commit): computed in a Worker while sealing.
        const sealedHash = el('code', { id: 'sealed-sha256', text: r.sha256 || '' });
        if (!r.sha256) {
          sealedHash.id = 'sealed-sha256-pending';
          sha256File(r.blob).then((h) => { sealedHash.textContent = h; sealedHash.id = 'sealed-sha256'; });
        }
        clear(out).append(el('dl', {},
          el('dt', { text: 'Package' }), el('dd', {}, download(r.name, r.blob)),
          el('dt', { text: 'Size' }), el('dd', { id: 'sealed-size', text: String(r.blob.size) }),
          el('dt', { text: 'SHA-256' }), el('dd', {}, sealedHash),
          el('dt', { text: 'Image id (tag)' }), el('dd', {}, el('code', { text: r.imageId })),
          el('dt', { text: 'Seconds' }), el('dd', { id: 'seal-seconds', text: seconds.toFixed(3) })),
        el('button', { type: 'button', id: 'upload-sealed', text: 'Upload this package',
          on: { click: () => { location.hash = '#/upload'; } } }));
        status('Sealed.', 'ok');
      } catch (e) { fail(e); }
    } } },
    el('label', { for: 'seal-disk' }, 'Disk image (raw or qcow2)', disk),
    el('label', { for: 'seal-signing-key' }, 'Signing key file (signing-key.pem)', keyFile),
    el('label', { for: 'seal-name' }, 'Package name', name),
    el('label', { for: 'seal-cpus' }, 'Virtual CPUs', cpus),
    el('label', { for: 'seal-memory' }, 'Memory (MiB)', memory),
    el('button', { type: 'submit', text: 'Seal' })),
    el('label', { for: 'seal-progress' }, 'Progress'), bar, out);
}

// --- upload with progress and resume ---
function uploadPage(page) {
  if (!requireLogin(page)) return;
  const file = el('input', { id: 'upload-file', type: 'file', accept: '.ova' });
  const name = el('input', { id: 'upload-name', value: lastSealed ? lastSealed.name.replace(/\.ova$/, '') : '' });
  const bar = el('progress', { id: 'upload-progress', max: '1', value: '0', 'aria-label': 'Upload progress' });
  const out = el('div', { id: 'upload-result' });
  let controller = null;
  const run = async (blob, sha256 = null) => {
    controller = new AbortController();
    const t0 = performance.now();
    try {
      const img = await uploadPackage(blob, name.value || blob.name, { signal: controller.signal, sha256,
        progress: (sent, total) => { bar.max = String(total || 1); bar.value = String(sent); } });
      clear(out).append(el('p', { class: 'ok' }, 'Uploaded image ', el('code', { id: 'uploaded-image-id', text: img.image_id }),
        ` in ${((performance.now() - t0) / 1000).toFixed(3)} s `,
        el('button', { type: 'button', id: 'launch-uploaded', text: 'Launch it', on: { click: () => launch(img.image_id) } })));
      status('Uploaded.', 'ok');
    } catch (e) {
      if (e.name === 'AbortError') status('Paused: choose the same file again to resume.');
      else fail(e);
    }
  };
  page.append(el('h2', { text: 'Upload a sealed package' }),
    el('p', { text: 'A package sealed here or by `vmseal seal` (an .ova). An interrupted upload resumes where the portal has it.' }),
    el('form', { id: 'upload-form', on: { submit: (ev) => {
      ev.preventDefault();
      if (file.files[0]) run(file.files[0]); else if (lastSealed) run(Object.assign(lastSealed.blob, { name: lastSealed.name }), lastSealed.sha256);
      else fail(new Error('choose a package'));
    } } },
    el('label', { for: 'upload-file' }, 'Package (.ova)', file),
    el('label', { for: 'upload-name' }, 'Image name', name),
    el('button', { type: 'submit', id: 'upload-start', text: lastSealed ? 'Upload (the package sealed here, or the chosen file)' : 'Upload' }),
    el('button', { type: 'button', class: 'secondary', text: 'Pause', on: { click: () => controller && controller.abort() } })),
    el('label', { for: 'upload-progress' }, 'Progress'), bar, out);
}

// --- audit checks shared by the customer's and the operator's pages ---
// (docs/console.md "Audit in the browser"): a checkpoint saved in this
// browser (localStorage) after a fully verified visit; the next visit asks
// for the consistency proof from it and shows a log that was rolled back or
// rewritten since as failed (and keeps the saved one).
const savedKey = (scope) => `vmseal-audit-checkpoint:${scope}`;
function savedCheckpoint(scope) {
  try { return localStorage.getItem(savedKey(scope)); } catch { return null; }
}
function saveCheckpoint(scope, text) {
  try { localStorage.setItem(savedKey(scope), text); } catch { /* private mode: nothing kept */ }
}

// Every page of an audit listing from `after` = 0 (or just `url` when
// `paged` is false), each verified: [{a, v}]. caPem null: the answer's
// own kms_ca_cert_pem (the operator's, pinned by the caller).
async function verifiedAuditPages(url, caPem, saved, { paged = true, operator = false } = {}) {
  const oldSize = checkpointSize(saved);
  const sep = url.includes('?') ? '&' : '?';
  const out = [];
  let after = 0;
  for (let n = 0; n < 10000; n++) {
    const q = paged ? `${url}${sep}after=${after}` : url;
    let a;
    try {
      a = await get(oldSize ? `${q}${q.includes('?') ? '&' : '?'}old=${oldSize}` : q, { operator });
    } catch (e) {
      // A KMS whose log is smaller than the saved tree cannot prove from it:
      // ask without, and the check below says what happened.
      if (!oldSize) throw e;
      a = await get(q, { operator });
    }
    const v = await verifyAuditPage(a, caPem === null ? (a.kms_ca_cert_pem || '') : caPem, { saved });
    out.push({ a, v });
    if (!paged || !a.next_after || a.next_after <= after) break;
    after = a.next_after;
  }
  return out;
}

// The saved-checkpoint verdict of verified pages, and whether all of them
// verified (then their newest checkpoint is saved).
function consistencyVerdict(pages, saved, scope, cls) {
  const failed = pages.map((p) => p.v.consistency).find((c) => c && !c.ok);
  const allOk = pages.every((p) => p.v.checkpoint.ok && (!p.v.consistency || p.v.consistency.ok) && p.v.records.every((r) => r.ok));
  if (allOk && pages.length) {
    const newest = pages.reduce((x, p) => (p.v.checkpoint.size >= x.v.checkpoint.size ? p : x));
    saveCheckpoint(scope, newest.v.checkpoint.text);
  }
  const text = failed ? `Saved checkpoint: failed: ${failed.error}`
    : saved ? `The log extends the checkpoint saved in this browser (${checkpointSize(saved)} records), consistency proof verified`
      : 'No checkpoint saved in this browser yet' + (allOk ? '; this one is saved now' : '');
  return el('p', { class: `${failed ? 'error' : 'ok'} ${cls}`, text });
}

// --- the customer's audit: key releases of their images ---
async function auditPage(page) {
  if (!requireLogin(page)) return;
  const [{ images }, key] = await Promise.all([get('/v1/images'), get('/v1/customer/key')]);
  page.append(el('h2', { text: 'Key releases of your images' }),
    el('p', { text: 'Each record\'s inclusion proof and the log checkpoint\'s signature are verified here, in this browser ' +
      '(the log key must be endorsed by the KMS CA whose fingerprint the downloads page shows; compare it with your own copy), ' +
      'and the log must extend the checkpoint this browser saved at your last visit. ' +
      'vmseal customer audit IMAGE --kms-ca kms-ca.pem --checkpoint F checks the same on the command line.' }));
  const scope = `customer:${session.customerId}`;
  const saved = savedCheckpoint(scope);
  const all = [];
  for (const i of images) {
    try {
      const pages = await verifiedAuditPages(`/v1/images/${encodeURIComponent(i.tagged_image_id || i.image_id)}/audit`,
        key.kms_ca_cert_pem || '', saved);
      all.push(...pages);
      // A record that fails its proof is still shown (decoded from the
      // proof's extra line), marked failed.
      const rows = pages.flatMap(({ a, v }) => (a.proofs || []).map((proof, n) => {
        const r = v.records[n].record || auditRecord(proof) || {};
        const verdict = v.records[n].ok ? el('span', { class: 'ok audit-verdict', text: 'verified' })
          : el('span', { class: 'error audit-verdict', text: `failed: ${v.records[n].error}` });
        return [String(r.seq ?? ''), when(r.time), el('code', { class: 'audit-event', text: r.event || '' }),
          r.subject || '', el('code', { text: JSON.stringify(r.details || {}) }), verdict];
      }));
      const last = pages[pages.length - 1];
      page.append(table(`Image ${i.name}`, ['#', 'Time', 'Event', 'Subject', 'Details', 'Inclusion proof'], rows));
      const bad = pages.find((p) => !p.v.checkpoint.ok);
      page.append(el('p', { class: !bad ? 'ok checkpoint-verdict' : 'error checkpoint-verdict',
        text: !bad ? `Log checkpoint: signature verified (log key endorsed by the KMS CA; ${last.v.checkpoint.size} records in the log)`
          : `Log checkpoint: failed: ${bad.v.checkpoint.error}` }));
      if (last.a.checkpoint) page.append(el('pre', { class: 'checkpoint', text: last.a.checkpoint }));
    } catch (e) {
      page.append(el('p', { class: 'error' }, `Image ${i.name}: `, e.message));
    }
  }
  page.append(consistencyVerdict(all, saved, scope, 'consistency-verdict'));
}

// The record a c2sp.org/tlog-proof@v1 text carries on its `extra` line.
function auditRecord(proof) {
  const line = String(proof).split('\n').find((l) => l.startsWith('extra '));
  if (!line) return null;
  try {
    const bytes = Uint8Array.from(atob(line.slice(6)), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

// --- operator ---
async function operatorPage(page) {
  if (!session.operator) {
    page.append(el('p', {}, 'Sign in as the operator first: ', el('a', { href: '#/login', text: 'Sign in' })));
    return;
  }
  const [{ hosts }, { jobs }] = await Promise.all([get('/v1/operator/hosts', { operator: true }), get('/v1/operator/jobs', { operator: true })]);
  // A host's trust state is the KMS's verdict in the latest placement that
  // considered it.
  const last = new Map();
  for (const j of jobs) {
    for (const d of (j.last_placement && j.last_placement.decisions) || []) {
      const seen = last.get(d.host_id);
      if (!seen || j.last_placement.decided_unix >= seen.unix) last.set(d.host_id, { unix: j.last_placement.decided_unix, d });
    }
  }
  const rows = hosts.map((h) => {
    const v = last.get(h.host_id);
    const trusted = v ? (v.d.kms_reason ? 'untrusted' : 'trusted') : 'unknown';
    return [h.host_id, h.in_pool ? 'in pool' : 'out of pool', el('span', { class: 'trust', text: trusted }),
      v ? (v.d.eligible ? 'eligible' : 'not eligible') : '', v ? [v.d.kms_reason, ...(v.d.reasons || [])].filter(Boolean).join(', ') : '',
      `${h.vcpus} vCPU, ${h.memory_mib} MiB, ${h.capacity_slots} slots`, Object.entries(h.tags || {}).map(([k, x]) => `${k}=${x}`).join(' '),
      when(h.last_heartbeat_unix)];
  });
  page.append(el('h2', { text: 'Hosts' }),
    table('Hosts, trust state and last verdict', ['Host', 'Pool', 'Trust', 'Last verdict', 'Reason', 'Capacity', 'Tags (flavor)', 'Heartbeat'], rows));
  const detail = el('div', { id: 'placement-detail' });
  const jobRows = jobs.map((j) => [j.job_id, j.customer_id, el('span', { class: `state-${j.state}`, text: j.state }), j.host_id || '',
    el('button', { type: 'button', class: 'secondary', text: 'Explain placement', 'aria-label': `Explain placement of ${j.job_id}`,
      on: { click: async () => {
        try {
          const p = await get(`/v1/operator/jobs/${encodeURIComponent(j.job_id)}/placement`, { operator: true });
          clear(detail).append(placementTable(p, `Placement of job ${j.job_id}`),
            ...(p.history || []).map((h, n) => placementTable(h, `Attempt ${n + 1}`)));
        } catch (e) { fail(e); }
      } } })]);
  page.append(el('h2', { text: 'Jobs and placement' }), table('All jobs', ['Job', 'Customer', 'State', 'Host', 'Placement'], jobRows), detail);
  await operatorKmsViews(page);
}

// The KMS as the operator sees it through the portal, read-only (the
// portal's own KMS identity may read these, change none): flavor
// definitions, and the newest audit records, each proof and the checkpoint
// verified here.
async function operatorKmsViews(page) {
  page.append(el('h2', { text: 'Flavors (KMS)' }));
  try {
    const { flavors } = await get('/v1/operator/flavors', { operator: true });
    const rows = (flavors || []).map((f) => [el('code', { class: 'flavor-name', text: f.name }),
      el('code', { text: Object.entries(f.pcrs || {}).map(([k, v]) => `${k}: ${v}`).join('\n') })]);
    page.append(table('Flavor definitions (expected PCR values)', ['Flavor', 'PCRs'], rows));
  } catch (e) {
    page.append(el('p', { class: 'error', text: `Flavors: ${e.message}` }));
  }
  page.append(el('h2', { text: 'KMS audit log' }));
  const box = el('div', { id: 'kms-audit' });
  page.append(box);
  await operatorAudit(box, false);
}

// The KMS audit log: the newest 20 records, or (whole) every record page by
// page; each proof, the checkpoint, the log key's endorsement by the KMS CA
// (pinned in this browser at the first visit) and the consistency with the
// checkpoint saved here verified in the browser.
async function operatorAudit(box, whole) {
  clear(box);
  const scope = 'operator';
  const saved = savedCheckpoint(scope);
  try {
    // Pages of 20 records for the newest view and for the whole-log walk,
    // which shows its progress page by page.
    const pages = await verifiedAuditPages('/v1/operator/audit?limit=20', null, saved,
      { paged: whole, operator: true });
    // The KMS CA: pinned by its SHA-256 at the first visit; another CA later
    // fails every check (a portal that substituted CA and log key).
    const caPem = pages[0].a.kms_ca_cert_pem || '';
    const fp = hex(new Uint8Array(await crypto.subtle.digest('SHA-256', pemBlock(caPem, 'CERTIFICATE'))));
    let pinned = null;
    try { pinned = localStorage.getItem('vmseal-kms-ca:operator'); } catch { /* none */ }
    if (pinned && pinned !== fp) {
      for (const p of pages) {
        p.v.checkpoint = { ok: false, error: `the KMS CA (SHA-256 ${fp}) is not the one pinned in this browser (${pinned})` };
        p.v.records = p.v.records.map(() => ({ ok: false, error: 'checkpoint not verified' }));
      }
    } else if (!pinned) {
      try { localStorage.setItem('vmseal-kms-ca:operator', fp); } catch { /* private mode */ }
    }
    const rows = pages.flatMap(({ a, v }) => (a.proofs || []).map((proof, n) => {
      const r = v.records[n].record || auditRecord(proof) || {};
      const verdict = v.records[n].ok ? el('span', { class: 'ok kms-audit-verdict', text: 'verified' })
        : el('span', { class: 'error kms-audit-verdict', text: `failed: ${v.records[n].error}` });
      return [String(r.seq ?? ''), when(r.time), el('code', { text: r.event || '' }), r.subject || '', verdict];
    })).reverse();
    const bad = pages.find((p) => !p.v.checkpoint.ok);
    const last = pages[pages.length - 1];
    box.append(el('p', { text: 'KMS CA SHA-256 (compare with your copy of the KMS CA; pinned in this browser): ' },
      el('code', { id: 'kms-ca-fingerprint', text: fp })),
    el('p', { class: !bad ? 'ok kms-checkpoint-verdict' : 'error kms-checkpoint-verdict',
      text: !bad ? `Log checkpoint: signature verified with log key ${last.a.log_key}, endorsed by the KMS CA (${last.v.checkpoint.size} records)`
        : `Log checkpoint: failed: ${bad.v.checkpoint.error}` }),
    consistencyVerdict(pages, saved, scope, 'kms-consistency-verdict'),
    el('p', { id: 'kms-audit-count', text: whole ? `Every record of the log: ${rows.length} of ${last.v.checkpoint.size || 0}, in ${pages.length} pages`
      : `The newest ${rows.length} records` }),
    el('button', { type: 'button', class: 'secondary', id: 'kms-audit-all', text: 'Verify the whole log',
      on: { click: () => operatorAudit(box, true).catch(fail) } }),
    table(whole ? 'Every KMS audit record, each with its inclusion proof' : 'Newest KMS audit records, each with its inclusion proof',
      ['#', 'Time', 'Event', 'Subject', 'Inclusion proof'], rows),
    el('pre', { class: 'checkpoint', text: last.a.checkpoint || '' }));
  } catch (e) {
    box.append(el('p', { class: 'error', text: `KMS audit log: ${e.message}` }));
  }
}

const pages = {
  login: ['Sign in or register', loginPage],
  downloads: ['Agent and certificate', downloadsPage],
  images: ['Images', imagesPage],
  seal: ['Seal an image', sealPage],
  upload: ['Upload', uploadPage],
  vms: ['VMs', vmsPage],
  audit: ['Audit', auditPage],
  operator: ['Operator', operatorPage],
};

async function route() {
  if (poller) { clearInterval(poller); poller = null; }
  if (liveStop) { liveStop(); liveStop = null; }
  const [, name = 'login', arg] = location.hash.split('/');
  const [title, render] = pages[name] || pages.login;
  $('title').textContent = title;
  document.title = `${title} - vmseal console`;
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.getAttribute('href') === `#/${name}`) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  status('');
  const page = clear($('page'));
  try {
    await render(page, arg && decodeURIComponent(arg));
  } catch (e) { fail(e); }
  document.body.dataset.ready = name;
}

window.addEventListener('hashchange', route);
refreshSession().then(route);
