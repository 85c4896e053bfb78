// Lapdev dashboard: the users, tokens and providers pages. Uses app.js's helpers (rpc,
// el, toast, showError, clearFieldErrors, timeEl), loaded before this script.
// Every action is the PeopleRpc method the CLI calls; text is set with
// textContent only.
'use strict';

// ---- users (owners act; admins read) ---------------------------------------

function setupUsers() {
  const form = document.getElementById('create-user');
  if (form) {
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      clearFieldErrors(form);
      const name = form.name.value.trim();
      toast(`Adding ${name}…`);
      try {
        await rpc('PeopleRpc', 'create_user', {
          name,
          email: form.email.value.trim() || null,
          role: form.role.value,
          password: form.password.value || null,
        });
        form.password.value = '';
        toast(`User ${name} added; reloading the list.`);
        location.reload();
      } catch (e) {
        showError(form, document.getElementById('create-user-error'), e);
        toast(`Not added: ${e.message}`, true);
      }
    });
  }
  if (!document.getElementById('users')) return;
  document.addEventListener('change', async (ev) => {
    const s = ev.target.closest('select[data-action="set-role"]');
    if (!s) return;
    const { name } = s.dataset;
    try {
      const u = await rpc('PeopleRpc', 'set_user_role', { name, role: s.value });
      toast(`${name} is now ${u.role}.`);
    } catch (e) {
      toast(`${name}: ${e.message}`, true);
    }
  });
  document.addEventListener('click', async (ev) => {
    const b = ev.target.closest('button[data-action]');
    if (!b || !['enable-user', 'disable-user', 'delete-user'].includes(b.dataset.action)) return;
    const { action, name } = b.dataset;
    try {
      if (action === 'delete-user') {
        const typed = prompt(`Type the user's name (${name}) to delete them and end their sessions.`);
        if (typed === null) return;
        if (typed !== name) { toast('The name did not match; nothing was deleted.', true); return; }
        await rpc('PeopleRpc', 'delete_user', { name });
        toast(`User ${name} deleted.`);
      } else {
        const disabled = action === 'disable-user';
        await rpc('PeopleRpc', 'set_user_disabled', { name, disabled });
        toast(`User ${name} ${disabled ? 'disabled: their sessions ended' : 'enabled'}.`);
      }
      location.reload();
    } catch (e) {
      toast(`${name}: ${e.message}`, true);
    }
  });
}

// ---- a user's own tokens ---------------------------------------------------

function tokenRow(t) {
  const state = t.revoked_at ? 'revoked' : Date.parse(t.expires_at) < Date.now() ? 'expired' : null;
  const actions = el('td', { class: 'actions' });
  if (!t.revoked_at) {
    actions.append(el('button', { type: 'button', class: 'danger', dataset: { action: 'revoke-token', id: t.id, name: t.name } },
      'Revoke', el('span', { class: 'sr-only' }, ` ${t.name}`)));
  }
  return el('tr', { dataset: { id: t.id } },
    el('th', { scope: 'row' }, t.name),
    el('td', {}, el('code', {}, `${t.display_prefix}…`)),
    el('td', {}, timeEl(t.created_at)),
    el('td', {}, timeEl(t.expires_at)),
    el('td', {}, timeEl(t.last_used_at)),
    el('td', { class: 'state' }, state ? el('span', { class: 'badge', dataset: { status: state } }, state) : 'active'),
    actions);
}

async function refreshTokens() {
  const table = document.getElementById('tokens');
  if (!table) return;
  const list = await rpc('PeopleRpc', 'list_tokens', {});
  table.tBodies[0].replaceChildren(...list.map(tokenRow));
  document.getElementById('tokens-empty').hidden = list.length > 0;
}

function setupTokens() {
  const form = document.getElementById('create-token');
  if (!form) return;
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearFieldErrors(form);
    const name = form.name.value.trim();
    const days = form.days.value ? Number(form.days.value) : null;
    try {
      const created = await rpc('PeopleRpc', 'create_token', { name, expires_in_days: days });
      document.getElementById('token-secret').textContent = created.token_secret;
      document.getElementById('token-result').hidden = false;
      form.name.value = '';
      toast(`Token ${created.token.name} created: copy it now, it is not shown again.`);
      await refreshTokens();
    } catch (e) {
      showError(form, document.getElementById('create-token-error'), e);
      toast(`Not created: ${e.message}`, true);
    }
  });
  document.addEventListener('click', async (ev) => {
    const b = ev.target.closest('button[data-action="revoke-token"]');
    if (!b) return;
    const { id, name } = b.dataset;
    if (!confirm(`Revoke token ${name}? Scripts using it stop working.`)) return;
    try {
      await rpc('PeopleRpc', 'revoke_token', { token_id: id });
      toast(`Token ${name} revoked.`);
      await refreshTokens();
    } catch (e) {
      toast(`${name}: ${e.message}`, true);
    }
  });
}

// ---- providers (admins) ----------------------------------------------------

function providerRow(p) {
  return el('tr', { dataset: { name: p.name } },
    el('th', { scope: 'row' }, p.name),
    el('td', {}, p.kind),
    el('td', {}, (p.config && p.config.project) || '—'),
    el('td', {}, (p.config && p.config.location) || '—'),
    el('td', { class: 'actions' },
      el('a', {
        class: 'button',
        href: `/providers?${new URLSearchParams({ clusters: p.name })}#provider-clusters-heading`,
        dataset: { action: 'provider-clusters', name: p.name },
      }, 'Clusters', el('span', { class: 'sr-only' }, ` of ${p.name}`)),
      ' ',
      el('button', { type: 'button', class: 'danger', dataset: { action: 'delete-provider', name: p.name } },
        'Delete', el('span', { class: 'sr-only' }, ` ${p.name}`))));
}

async function refreshProviders() {
  const table = document.getElementById('providers');
  if (!table) return;
  const list = await rpc('ProviderRpc', 'list_providers', {});
  table.tBodies[0].replaceChildren(...list.map(providerRow));
  document.getElementById('providers-empty').hidden = list.length > 0;
}

let shownProvider = null;

function providerClusterRow(c) {
  const actions = el('td', { class: 'actions' });
  if (!c.imported_as) {
    actions.append(el('button', { type: 'button', dataset: { action: 'import-cluster', name: c.name, location: c.location } },
      'Import', el('span', { class: 'sr-only' }, ` ${c.name}`)));
  }
  return el('tr', { dataset: { name: c.name } },
    el('th', { scope: 'row' }, c.name),
    el('td', {}, c.location),
    el('td', { class: 'status' }, el('span', { class: 'badge', dataset: { status: c.status } }, c.status)),
    el('td', {}, c.kubernetes_version || '—'),
    el('td', {}, String(c.node_count)),
    el('td', {}, c.imported_as || '—'),
    actions);
}

async function showProviderClusters(name) {
  shownProvider = name;
  document.getElementById('provider-clusters-section').hidden = false;
  document.getElementById('provider-clusters-of').textContent = name;
  toast(`Asking ${name} for its clusters…`);
  const list = await rpc('ProviderRpc', 'list_provider_clusters', { provider: name });
  document.querySelector('#provider-clusters tbody').replaceChildren(...list.map(providerClusterRow));
  toast(`${name} has ${list.length} cluster${list.length === 1 ? '' : 's'}.`);
}

// Follows a cluster from the provider's work to its manager connecting.
async function followCluster(name) {
  document.getElementById('cluster-progress-section').hidden = false;
  const steps = document.getElementById('cluster-progress');
  steps.replaceChildren();
  let last = null;
  for (;;) {
    let m;
    try {
      m = await rpc('ProviderRpc', 'get_managed_cluster', { name });
    } catch (e) {
      steps.append(el('li', {}, `${name}: ${e.message}`));
      return;
    }
    const line = `${name}: ${m.cluster.status}${m.message ? ` (${m.message})` : ''}`;
    if (line !== last) { steps.append(el('li', {}, line)); last = line; }
    if (m.cluster.status === 'connected') { toast(`${name} is connected.`); return; }
    if (m.cluster.status === 'error' || m.message) { toast(`${name}: ${m.message || 'failed'}`, true); return; }
    await new Promise((r) => setTimeout(r, 2000));
  }
}

function setupProviders() {
  const form = document.getElementById('add-provider');
  if (!form) return;
  // The server rendered the lists (and this provider's clusters, when asked).
  shownProvider = document.getElementById('provider-clusters-section').dataset.provider || null;
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearFieldErrors(form);
    const file = form.key.files[0];
    if (!file) {
      showError(form, null, { message: 'Choose the service-account key file (JSON).', details: { field: 'credential' } });
      return;
    }
    const name = form.name.value.trim();
    toast(`Checking the key for ${name}…`);
    try {
      const created = await rpc('ProviderRpc', 'create_provider', {
        name,
        kind: 'gcp',
        config: { project: form.project.value.trim(), location: form.location.value.trim() || null, endpoint: null },
        credential: await file.text(),
        validate: true,
      });
      form.reset();
      toast(created.warning ? `Provider ${name} added: ${created.warning}` : `Provider ${name} added; its key works.`, !!created.warning);
      await refreshProviders();
    } catch (e) {
      // A bad key is said on the key's field.
      const onKey = /credential|key/i.test(e.message) ? { ...e, details: { field: 'credential' } } : e;
      showError(form, document.getElementById('add-provider-error'), onKey);
      toast(`Not added: ${e.message}`, true);
    }
  });
  const create = document.getElementById('create-provider-cluster');
  create.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearFieldErrors(create);
    const name = create.name.value.trim();
    const mode = create.mode.value === 'autopilot'
      ? { mode: 'autopilot' } : { mode: 'standard', machine_type: 'e2-standard-4', node_count: 3 };
    try {
      await rpc('ProviderRpc', 'create_cluster', {
        provider: shownProvider, name, location: create.location.value.trim() || null, mode,
      });
      toast(`Creating ${name} in ${shownProvider}; this takes minutes.`);
      followCluster(name);
    } catch (e) {
      showError(create, document.getElementById('create-provider-cluster-error'), e);
      toast(`Not created: ${e.message}`, true);
    }
  });
  document.addEventListener('click', async (ev) => {
    const b = ev.target.closest('[data-action]');
    if (!b || !['provider-clusters', 'delete-provider', 'import-cluster'].includes(b.dataset.action)) return;
    // The clusters link works without the script; with it, they are shown in place.
    ev.preventDefault();
    const { action, name } = b.dataset;
    try {
      if (action === 'provider-clusters') await showProviderClusters(name);
      else if (action === 'delete-provider') {
        if (!confirm(`Delete provider ${name}? Its clusters stay.`)) return;
        await rpc('ProviderRpc', 'delete_provider', { name });
        toast(`Provider ${name} deleted.`);
        await refreshProviders();
      } else {
        b.disabled = true;
        await rpc('ProviderRpc', 'import_cluster', {
          provider: shownProvider, cluster: name, location: b.dataset.location, name: null, install: true,
        });
        toast(`Imported ${name}; installing its manager.`);
        followCluster(name);
        await showProviderClusters(shownProvider);
      }
    } catch (e) {
      toast(`${name}: ${e.message}`, true);
      b.disabled = false;
    }
  });
}

document.addEventListener('DOMContentLoaded', () => {
  setupUsers();
  setupTokens();
  setupProviders();
});
