// The cluster detail page (/clusters/{name}): create a token (shown once, with
// the manifest that carries it), revoke tokens and change the scheduling
// settings, through the HRPC methods `lapdev cluster token create|revoke` and
// `lapdev cluster placement` call. Loaded after app.js, whose
// helpers (rpc, el, toast, timeEl, showError, clearFieldErrors,
// showManifestWarnings) it uses.
'use strict';

function tokenState(t) {
  if (t.revoked_at) return 'revoked';
  if (t.expires_at && Date.parse(t.expires_at) <= Date.now()) return 'expired';
  return 'live';
}

// One token's row, as the server renders it (pages/cluster.rs).
function tokenRow(t) {
  const state = tokenState(t);
  const actions = el('td', { class: 'actions' });
  if (state === 'live') {
    actions.append(el('button', { type: 'button', class: 'danger', dataset: { action: 'revoke-token', id: t.id, name: t.name } },
      'Revoke', el('span', { class: 'sr-only' }, ` token ${t.name}`)));
  }
  return el('tr', { dataset: { id: t.id } },
    el('th', { scope: 'row' }, t.name),
    el('td', {}, el('code', {}, `${t.display_prefix}…`)),
    el('td', { class: 'status' }, el('span', { class: 'badge', dataset: { status: state } }, state)),
    el('td', {}, timeEl(t.created_at)),
    el('td', {}, timeEl(t.last_used_at)),
    el('td', {}, t.expires_at ? timeEl(t.expires_at) : 'never'),
    actions);
}

async function refreshTokens(cluster) {
  const body = document.querySelector('#tokens tbody');
  if (!body) return;
  const list = await rpc('AdminRpc', 'list_cluster_tokens', { cluster });
  body.replaceChildren(...list.map(tokenRow));
}

let tokenManifestUrl = null;

function setupClusterDetail() {
  const form = document.getElementById('create-token');
  if (!form) return;
  const cluster = form.dataset.cluster;
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearFieldErrors(form);
    const name = form.name.value.trim();
    const button = form.querySelector('button[type=submit]');
    button.disabled = true;
    toast(`Creating token ${name}…`);
    try {
      const created = await rpc('AdminRpc', 'create_cluster_token', { cluster, name, expires_in_secs: null });
      document.getElementById('token-secret').textContent = created.token_secret;
      if (tokenManifestUrl) URL.revokeObjectURL(tokenManifestUrl);
      tokenManifestUrl = URL.createObjectURL(new Blob([created.manifest], { type: 'application/yaml' }));
      const a = document.getElementById('token-manifest');
      a.href = tokenManifestUrl;
      a.setAttribute('download', `${cluster}-manager.yaml`);
      showManifestWarnings('token-warnings', created.warnings);
      document.getElementById('token-result').hidden = false;
      form.name.value = '';
      toast(`Token ${created.token.name} created; copy it now, it is not shown again.`);
      await refreshTokens(cluster);
    } catch (e) {
      showError(form, document.getElementById('create-token-error'), e);
      toast(`Not created: ${e.message}`, true);
    } finally {
      button.disabled = false;
    }
  });
  document.addEventListener('click', async (ev) => {
    const b = ev.target.closest('button[data-action="revoke-token"]');
    if (!b) return;
    const { id, name } = b.dataset;
    if (!confirm(`Revoke token ${name}? A manager using it is cut off at once.`)) return;
    b.disabled = true;
    try {
      await rpc('AdminRpc', 'revoke_cluster_token', { cluster, token_id: id });
      toast(`Token ${name} revoked.`);
      await refreshTokens(cluster);
    } catch (e) {
      toast(`${name}: ${e.message}`, true);
      b.disabled = false;
    }
  });
}

// The scheduling form: the cluster's placement as the server has it, with the
// form's fields put in (tolerations and autoscaling unchanged).
function setupPlacement() {
  const form = document.getElementById('edit-placement');
  if (!form) return;
  const cluster = form.dataset.cluster;
  const list = (v) => v.split(',').map((x) => x.trim()).filter(Boolean);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearFieldErrors(form);
    const err = document.getElementById('placement-error');
    const nodeSelector = {};
    for (const kv of list(form['pl-node-selector'].value)) {
      const i = kv.indexOf('=');
      if (i <= 0) { err.textContent = `Node selector ${kv}: expected key=value.`; return; }
      nodeSelector[kv.slice(0, i).trim()] = kv.slice(i + 1).trim();
    }
    try {
      const { placement } = await rpc('AdminRpc', 'get_cluster', { name: cluster });
      placement.capacity_mode = form['pl-capacity'].value;
      Object.assign(placement.scheduling, {
        node_selector: nodeSelector,
        arch: form['pl-arch'].value.trim() || null,
        image_pull_secrets: list(form['pl-pull-secrets'].value),
        priority_class: form['pl-priority'].value.trim() || null,
        user_namespaces: form['pl-userns'].checked,
      });
      await rpc('AdminRpc', 'set_cluster_placement', { name: cluster, placement });
      location.reload();
    } catch (e) {
      err.textContent = e.message;
      toast(`Not saved: ${e.message}`, true);
    }
  });
}

document.addEventListener('DOMContentLoaded', () => {
  setupClusterDetail();
  setupPlacement();
});
