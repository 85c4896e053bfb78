// Lapdev dashboard: the users and tokens pages. Uses app.js's helpers (rpc,
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

document.addEventListener('DOMContentLoaded', () => {
  setupUsers();
  setupTokens();
});
