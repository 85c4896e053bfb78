// Lapdev dashboard: forms, actions and live updates.
//
// Every action calls the HRPC method the CLI calls (POST /rpc/{Service}/{method}
// with a JSON body), signed in by the session cookie, with the CSRF header the
// server requires. Text from the server is only ever set with textContent:
// nothing here parses HTML.
'use strict';

const CSRF = { 'x-lapdev-csrf': '1' };

class RpcError extends Error {
  constructor(status, body) {
    super((body && body.message) || `request failed (${status})`);
    this.status = status;
    this.code = body && body.code;
    this.details = body && body.details;
  }
}

async function rpc(service, method, args) {
  const r = await fetch(`/rpc/${service}/${method}`, {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'content-type': 'application/json', ...CSRF },
    body: JSON.stringify(args || {}),
  });
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = { message: text }; }
  if (r.status === 401) { toSignIn(); }
  if (!r.ok) throw new RpcError(r.status, body);
  return body;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(typeof c === 'string' ? document.createTextNode(c) : c);
  }
  return e;
}

function toast(text, isError) {
  const t = document.getElementById('toast');
  if (!t) return;
  t.textContent = text;
  t.classList.toggle('error', !!isError);
}

// Human units, as the server renders them.
function trimNum(n, digits) {
  return n.toFixed(digits).replace(/\.?0+$/, '');
}
function cores(millis) {
  const t = millis % 1000 === 0 ? String(millis / 1000) : trimNum(millis / 1000, 2);
  return t === '1' ? '1 core' : `${t} cores`;
}
function gib(bytes) {
  return `${trimNum(bytes / 2 ** 30, 1)} GiB`;
}
function ago(iso) {
  const secs = Math.max(0, Math.floor((Date.now() - Date.parse(iso)) / 1000));
  if (secs < 10) return 'just now';
  if (secs < 60) return `${secs} s ago`;
  if (secs < 3600) return `${Math.floor(secs / 60)} min ago`;
  if (secs < 86400) return `${Math.floor(secs / 3600)} h ago`;
  return `${Math.floor(secs / 86400)} days ago`;
}
function timeEl(iso) {
  if (!iso) return document.createTextNode('never');
  const exact = new Date(iso).toISOString().replace(/\.\d{3}Z$/, 'Z');
  return el('time', { datetime: exact, title: exact }, ago(iso));
}
function refreshTimes() {
  for (const t of document.querySelectorAll('time[datetime]')) {
    t.textContent = ago(t.getAttribute('datetime'));
  }
}

function actionButton(action, name, label, danger) {
  return el('button', { type: 'button', class: danger ? 'danger' : null, dataset: { action, name } },
    label, el('span', { class: 'sr-only' }, ` ${name}`));
}

// ---- sign-in and sign-out -------------------------------------------------

// To the sign-in page, once: signing out, a 401 and the event stream's
// "ended" can all ask at the same moment, and a second navigation would abort
// the first.
let leaving = false;
function toSignIn() {
  if (leaving) return;
  leaving = true;
  location.assign('/sign-in');
}

function setupSignIn() {
  const form = document.getElementById('sign-in-form');
  if (!form) return;
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const err = document.getElementById('sign-in-error');
    err.textContent = '';
    const r = await fetch('/auth/session', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'content-type': 'application/json', ...CSRF },
      body: JSON.stringify({ user: form.user.value, password: form.password.value }),
    });
    if (r.ok) { location.assign('/'); return; }
    let message = `sign-in failed (${r.status})`;
    try { message = (await r.json()).message || message; } catch (_) { /* plain text */ }
    err.textContent = message;
  });
}

function setupSignOut() {
  const b = document.getElementById('sign-out');
  if (!b) return;
  b.addEventListener('click', async () => {
    await fetch('/auth/logout', { method: 'POST', credentials: 'same-origin', headers: CSRF });
    tellEvents('ended');
    toSignIn();
  });
}

// ---- copy buttons ---------------------------------------------------------

function setupCopy() {
  document.addEventListener('click', async (ev) => {
    const b = ev.target.closest('button.copy');
    if (!b) return;
    const code = b.closest('.command').querySelector('code');
    try {
      await navigator.clipboard.writeText(code.textContent);
      toast('Copied.');
    } catch (_) {
      const range = document.createRange();
      range.selectNodeContents(code);
      const sel = getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      toast('Selected: press Ctrl+C to copy.');
    }
  });
}

// ---- workspaces -----------------------------------------------------------

function workspaceRow(w) {
  const actions = el('td', { class: 'actions' });
  if (w.desired_state === 'running') actions.append(actionButton('stop', w.name, 'Stop'));
  else if (w.desired_state === 'stopped') actions.append(actionButton('start', w.name, 'Start'));
  actions.append(actionButton('delete', w.name, 'Delete', true));
  const message = el('td', { class: 'message' });
  if (w.reason) message.append(el('span', { class: 'reason' }, w.reason), ' ');
  message.append(el('span', { class: 'text' }, w.message || ''));
  return el('tr', { dataset: { name: w.name } },
    el('th', { scope: 'row' }, el('a', { href: `/workspaces/${encodeURIComponent(w.name)}` }, w.name)),
    el('td', { class: 'status' }, el('span', { class: 'badge', dataset: { status: w.status } }, w.status)),
    message,
    el('td', { class: 'image' }, w.image),
    el('td', { class: 'cluster' }, w.cluster || '—'),
    el('td', {}, `${cores(w.cpu_millis)} · ${gib(w.memory_bytes)} · ${gib(w.storage_bytes)}`),
    el('td', {}, timeEl(w.created_at)),
    actions);
}

async function refreshWorkspaces() {
  const table = document.getElementById('workspaces');
  if (!table) return;
  // The page this table shows (by name, as the server rendered it).
  const page = await rpc('WorkspaceRpc', 'list_workspaces_page', {
    page: { after: table.dataset.after || null, before: table.dataset.before || null },
  });
  const list = page.workspaces;
  table.tBodies[0].replaceChildren(...list.map(workspaceRow));
  const empty = document.getElementById('workspaces-empty');
  if (empty) empty.hidden = list.length > 0;
}

async function refreshWorkspace() {
  const facts = document.getElementById('workspace');
  if (!facts) return;
  let w;
  try {
    w = await rpc('WorkspaceRpc', 'get_workspace', { name: facts.dataset.name });
  } catch (e) { toast(e.message, true); return; }
  const badge = facts.querySelector('.status .badge');
  badge.textContent = w.status;
  badge.dataset.status = w.status;
  facts.querySelector('.reason').textContent = w.reason || '—';
  facts.querySelector('.message').textContent = w.message || '—';
  facts.querySelector('.cluster').textContent = w.cluster || '—';
}

function clearFieldErrors(form) {
  for (const p of form.querySelectorAll('.field-error, .form-error')) p.textContent = '';
  for (const i of form.querySelectorAll('[aria-invalid]')) i.removeAttribute('aria-invalid');
}

// Shows an HRPC error beside the field its `details.field` names, else on the
// form. Returns the element that shows it.
function showError(form, formError, e) {
  const field = e.details && e.details.field;
  const p = field && [...form.querySelectorAll('.field-error')].find((x) => x.dataset.field === field);
  if (p) {
    p.textContent = e.message;
    const input = document.getElementById(p.id.replace(/-error$/, ''));
    if (input) { input.setAttribute('aria-invalid', 'true'); input.focus(); }
    return p;
  }
  formError.textContent = e.message;
  return formError;
}

function setupWorkspaces() {
  const form = document.getElementById('create-workspace');
  if (form) {
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      clearFieldErrors(form);
      const num = (input) => Number(input.value || '0');
      const request = {
        name: form.name.value.trim(),
        image: form.image.value.trim(),
        cpu_millis: Math.round(num(form.cpu) * 1000),
        memory_bytes: Math.round(num(form.memory) * 2 ** 30),
        storage_bytes: Math.round(num(form.storage) * 2 ** 30),
        cluster: form.cluster.value || null,
        region: form.region.value.trim() || null,
      };
      const button = form.querySelector('button[type=submit]');
      button.disabled = true;
      toast(`Creating ${request.name}…`);
      try {
        const w = await rpc('WorkspaceRpc', 'create_workspace', { workspace: request });
        toast(`Workspace ${w.name} created; it is ${w.status}.`);
        form.name.value = '';
        await refreshWorkspaces();
      } catch (e) {
        showError(form, document.getElementById('create-error'), e);
        toast(`Not created: ${e.message}`, true);
      } finally {
        button.disabled = false;
      }
    });
  }
  document.addEventListener('click', async (ev) => {
    const b = ev.target.closest('button[data-action]');
    if (!b || !['stop', 'start', 'delete'].includes(b.dataset.action)) return;
    const { action, name } = b.dataset;
    if (action === 'delete' && !confirm(`Delete workspace ${name} and its volume?`)) return;
    b.disabled = true;
    try {
      const w = await rpc('WorkspaceRpc', `${action}_workspace`, { name });
      toast(`${name}: ${w.status}.`);
      await refreshWorkspaces();
      await refreshWorkspace();
    } catch (e) {
      toast(`${name}: ${e.message}`, true);
      b.disabled = false;
    }
  });
}

// ---- clusters -------------------------------------------------------------

function capacity(c) {
  const cap = {
    cpuAlloc: c.cpu_allocatable_millis || 0, memAlloc: c.memory_allocatable_bytes || 0,
    cpuUsed: 0, memUsed: 0, largest: null,
  };
  for (const n of c.nodes || []) {
    const cpu = n.cpu_lapdev_millis + (n.cpu_other_millis || 0);
    const mem = n.memory_lapdev_bytes + (n.memory_other_bytes || 0);
    cap.cpuUsed += cpu;
    cap.memUsed += mem;
    const free = [Math.max(0, n.cpu_allocatable_millis - cpu), Math.max(0, n.memory_allocatable_bytes - mem)];
    if (!cap.largest || free[0] > cap.largest[1] || (free[0] === cap.largest[1] && free[1] > cap.largest[2])) {
      cap.largest = [n.name, free[0], free[1]];
    }
  }
  return cap;
}

function bar(label, used, alloc, show, tag) {
  const td = el(tag || 'td');
  if (alloc > 0) {
    td.append(el('meter', { min: 0, max: alloc, value: used, 'aria-label': label }),
      el('span', { class: 'bar-text' }, `${show(Math.max(0, alloc - used))} free of ${show(alloc)}`));
  } else td.append('—');
  return td;
}

function clusterRow(c) {
  const cap = capacity(c);
  const status = el('td', { class: 'status' }, el('span', { class: 'badge', dataset: { status: c.status } }, c.status));
  if (c.cordoned) status.append(' ', el('span', { class: 'badge', dataset: { status: 'cordoned' } }, 'cordoned'));
  const actions = el('td', { class: 'actions' },
    c.cordoned ? actionButton('uncordon', c.name, 'Uncordon') : actionButton('cordon', c.name, 'Cordon'),
    actionButton('delete-cluster', c.name, 'Delete', true));
  return el('tr', { dataset: { name: c.name } },
    el('th', { scope: 'row' }, el('a', { href: `/clusters/${encodeURIComponent(c.name)}` }, c.name)),
    status,
    el('td', {}, timeEl(c.last_reported_at)),
    el('td', { class: 'version' }, c.kubernetes_version || '—'),
    el('td', {}, c.node_count === null || c.node_count === undefined ? '—' : String(c.node_count)),
    el('td', { class: 'region' }, c.region || '—'),
    el('td', {}, c.provider),
    bar(`CPU used on ${c.name}`, cap.cpuUsed, cap.cpuAlloc, cores),
    bar(`Memory used on ${c.name}`, cap.memUsed, cap.memAlloc, gib),
    el('td', {}, cap.largest ? `${cap.largest[0]}: ${cores(cap.largest[1])} · ${gib(cap.largest[2])}` : '—'),
    actions);
}

async function refreshClusters() {
  const table = document.getElementById('clusters');
  if (!table) return;
  // The page this table shows (by name, as the server rendered it).
  const page = await rpc('AdminRpc', 'list_clusters_page', {
    page: { after: table.dataset.after || null, before: table.dataset.before || null },
  });
  table.tBodies[0].replaceChildren(...page.clusters.map(clusterRow));
  const empty = document.getElementById('clusters-empty');
  if (empty) empty.hidden = page.clusters.length > 0;
}

// One cluster's facts, as the server renders them (pages/cluster.rs `facts`).
function clusterFacts(c) {
  const cap = capacity(c);
  const dash = (v) => (v === null || v === undefined ? '—' : String(v));
  const status = el('dd', { class: 'status' }, el('span', { class: 'badge', dataset: { status: c.status } }, c.status));
  if (c.cordoned) status.append(' ', el('span', { class: 'badge', dataset: { status: 'cordoned' } }, 'cordoned'));
  const facts = [
    ['Status', status],
    ['Last seen', el('dd', {}, timeEl(c.last_reported_at))],
    ['Kubernetes', el('dd', {}, dash(c.kubernetes_version))],
    ['Manager', el('dd', {}, dash(c.manager_version))],
    ['Nodes', el('dd', {}, dash(c.node_count))],
    ['Region', el('dd', {}, dash(c.region))],
    ['Provider', el('dd', {}, c.provider)],
    ['CPU allocatable', el('dd', {}, c.cpu_allocatable_millis === null ? '—' : cores(c.cpu_allocatable_millis))],
    ['Memory allocatable', el('dd', {}, c.memory_allocatable_bytes === null ? '—' : gib(c.memory_allocatable_bytes))],
    ['CPU used', bar(`CPU used on ${c.name}`, cap.cpuUsed, cap.cpuAlloc, cores, 'dd')],
    ['Memory used', bar(`Memory used on ${c.name}`, cap.memUsed, cap.memAlloc, gib, 'dd')],
    ['Largest free node', el('dd', { class: 'largest' }, cap.largest ? `${cap.largest[0]}: ${cores(cap.largest[1])} · ${gib(cap.largest[2])}` : '—')],
    ['Pod Security', el('dd', {}, c.security_profile)],
    ['Registered', el('dd', {}, timeEl(c.created_at))],
  ];
  facts[9][1].classList.add('cpu');
  facts[10][1].classList.add('memory');
  return facts.flatMap(([term, dd]) => [el('dt', {}, term), dd]);
}

// A workspace on the cluster page, as the server renders it
// (pages/cluster.rs `workspace_row`).
function clusterWorkspaceRow(w) {
  return el('tr', { dataset: { name: w.name } },
    el('th', { scope: 'row' }, el('a', { href: `/workspaces/${encodeURIComponent(w.name)}` }, w.name)),
    el('td', { class: 'status' }, el('span', { class: 'badge', dataset: { status: w.status } }, w.status)),
    el('td', { class: 'image' }, w.image),
    el('td', {}, `${cores(w.cpu_millis)} · ${gib(w.memory_bytes)} · ${gib(w.storage_bytes)}`),
    el('td', {}, timeEl(w.created_at)));
}

// The cluster page: its facts and the page of its workspaces it shows.
async function refreshCluster() {
  const facts = document.getElementById('cluster');
  if (!facts) return;
  const c = await rpc('AdminRpc', 'get_cluster', { name: facts.dataset.name });
  facts.replaceChildren(...clusterFacts(c));
  const table = document.getElementById('cluster-workspaces');
  if (!table) return;
  const page = await rpc('WorkspaceRpc', 'list_workspaces_page', {
    page: {
      after: table.dataset.after || null,
      before: table.dataset.before || null,
      cluster: table.dataset.cluster,
    },
  });
  table.tBodies[0].replaceChildren(...page.workspaces.map(clusterWorkspaceRow));
  table.closest('.table-wrap').hidden = page.workspaces.length === 0;
  document.getElementById('cluster-workspaces-empty').hidden = page.workspaces.length > 0;
}

let manifestUrl = null;

// What the server said about a manifest it rendered (a plain-http or loopback
// server URL), one item each, in the list with id `listId`; hidden when none.
function showManifestWarnings(listId, warnings) {
  const list = document.getElementById(listId);
  list.replaceChildren(...(warnings || []).map((w) => el('li', { dataset: { code: w.code } }, w.message)));
  list.hidden = list.children.length === 0;
}

function setupClusters() {
  const form = document.getElementById('connect-cluster');
  if (form) {
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      clearFieldErrors(form);
      const name = form.name.value.trim();
      toast(`Registering ${name}…`);
      try {
        const created = await rpc('AdminRpc', 'create_cluster', {
          name, region: null, security_profile: null, placement: null,
        });
        const file = `${created.cluster.name}-manager.yaml`;
        document.getElementById('connect-command').textContent = `kubectl apply -f ${file}`;
        document.getElementById('connect-token').textContent = created.token_secret;
        if (manifestUrl) URL.revokeObjectURL(manifestUrl);
        manifestUrl = URL.createObjectURL(new Blob([created.manifest], { type: 'application/yaml' }));
        const a = document.getElementById('manifest-download');
        a.href = manifestUrl;
        a.setAttribute('download', file);
        showManifestWarnings('connect-warnings', created.warnings);
        document.getElementById('connect-result').hidden = false;
        toast(`Cluster ${name} registered; waiting for its manager.`);
        await refreshClusters();
      } catch (e) {
        const err = document.getElementById('connect-error');
        showError(form, err, e);
        toast(`Not registered: ${e.message}`, true);
      }
    });
  }
  document.addEventListener('click', async (ev) => {
    const b = ev.target.closest('button[data-action]');
    if (!b || !['cordon', 'uncordon', 'delete-cluster'].includes(b.dataset.action)) return;
    const { action, name } = b.dataset;
    try {
      if (action === 'delete-cluster') {
        const typed = prompt(`Type the cluster's name (${name}) to delete it.`);
        if (typed === null) return;
        if (typed !== name) { toast('The name did not match; nothing was deleted.', true); return; }
        await rpc('AdminRpc', 'delete_cluster', { name });
        toast(`Cluster ${name} deleted.`);
      } else {
        const c = await rpc('AdminRpc', 'set_cluster_cordoned', { name, cordoned: action === 'cordon' });
        toast(`Cluster ${name} is ${c.cordoned ? 'cordoned' : 'open for new workspaces'}.`);
      }
      await refreshClusters();
    } catch (e) {
      toast(`${name}: ${e.message}`, true);
    }
  });
}

// ---- live updates ---------------------------------------------------------

function refreshAll() {
  const jobs = [refreshWorkspaces(), refreshWorkspace(), refreshClusters(), refreshCluster()];
  return Promise.all(jobs.map((p) => p.catch((e) => toast(e.message, true))));
}

// The browser's one event stream: a SharedWorker holds it for every tab
// (plain HTTP/1.1 allows six connections per origin); without SharedWorker,
// a stream of this tab's own. `on(type, data)` gets change, reload, ended,
// open and error.
function liveEvents(on) {
  const meta = document.querySelector('meta[name="lapdev-events-worker"]');
  if (meta && typeof SharedWorker === 'function') {
    const worker = new SharedWorker(meta.content, { name: 'lapdev-events' });
    worker.port.onmessage = (m) => on(m.data.type, m.data.data);
    worker.port.start();
    addEventListener('pagehide', () => worker.port.postMessage('bye'));
    return (message) => worker.port.postMessage(message);
  }
  const source = new EventSource('/events');
  for (const type of ['change', 'reload', 'ended']) {
    source.addEventListener(type, (e) => on(type, e.data));
  }
  source.addEventListener('open', () => on('open'));
  source.addEventListener('error', () => on('error'));
  return (message) => { if (message === 'ended') source.close(); };
}

let tellEvents = () => {};

function setupEvents() {
  if (!document.querySelector('#workspaces, #workspace, #clusters, #cluster')) return;
  let pending = null;
  // Bursts of changes become one refresh.
  const schedule = () => {
    if (pending) return;
    pending = setTimeout(() => { pending = null; refreshAll(); }, 100);
  };
  tellEvents = liveEvents((type) => {
    if (type === 'change') schedule();
    else if (type === 'reload') location.reload();
    else if (type === 'ended') toSignIn();
    else if (type === 'open') document.body.dataset.live = 'open';
    else document.body.dataset.live = 'reconnecting';
  });
}

document.addEventListener('DOMContentLoaded', () => {
  setupSignIn();
  setupSignOut();
  setupCopy();
  setupWorkspaces();
  setupClusters();
  setupEvents();
  setInterval(refreshTimes, 30000);
});
