// Users (administrators): who may use this Latchkey, with which role;
// invite links (shown once), role changes, disabling and MFA resets.
// Privileged changes (admin invites, role changes, MFA resets) ask for a
// fresh confirmation through withReauth.

import { api } from '../lib/api.js';
import { h, replace, field, message, onSubmit, copyButton, fmtTime, fmtRelative, fmtNumber, confirmDialog, table, nextId } from '../lib/dom.js';
import { explain } from '../lib/errors.js';
import { withReauth } from '../lib/reauth.js';

export const title = 'Users';

const ROLES = [
  { value: 'user', label: 'user' },
  { value: 'guest', label: 'guest' },
  { value: 'admin', label: 'admin' },
];

const EXPIRY = [
  { value: '3600', label: '1 hour' },
  { value: '86400', label: '1 day' },
  { value: '604800', label: '7 days', selected: true },
];

/** Errors of this screen in words that say what to do. */
function explainUsers(err) {
  if (err && err.code === 'last_admin') {
    return 'This is the last active administrator. Make another user an administrator first, so someone can still manage Latchkey.';
  }
  if (err && err.code === 'cannot_disable_self') {
    return 'You cannot disable your own account. Another administrator can.';
  }
  return explain(err);
}

export async function render(main, ctx) {
  const flash = h('div', { 'aria-live': 'polite' });
  const inviteButton = h('button', { type: 'button', class: 'primary' }, 'Invite');
  const formSlot = h('div');
  const linkSlot = h('div');
  const list = h('div', { 'aria-busy': 'true' }, h('p', { class: 'muted' }, 'Loading…'));
  const say = (kind, text) => replace(flash, message(kind, text));

  replace(
    main,
    h('div', { class: 'spread screen-head' }, h('h1', {}, 'Users'), inviteButton),
    h(
      'p',
      { class: 'muted' },
      'Administrators manage the vault, users and settings. Users connect their own accounts and create keys for their agents. Guests may only use the proxy with keys. Administrators must keep an authenticator app.',
    ),
    flash,
    linkSlot,
    formSlot,
    list,
  );

  // ---------- Invite ----------
  inviteButton.addEventListener('click', () => {
    if (formSlot.firstChild) {
      formSlot.querySelector('select').focus();
      return;
    }
    const role = field({ label: 'Role', name: 'role', type: 'select', options: ROLES, hint: 'An invited administrator sets up an authenticator app when signing in the first time.' });
    const expiry = field({ label: 'Expires', name: 'expires', type: 'select', options: EXPIRY });
    const cancel = h('button', { type: 'button', class: 'secondary' }, 'Cancel');
    const form = h(
      'form',
      { class: 'card stack', 'aria-labelledby': 'invite-head' },
      h('h2', { id: 'invite-head' }, 'Invite someone'),
      h('div', { class: 'inline-fields' }, role, expiry),
      h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Create invite link'), cancel),
    );
    cancel.addEventListener('click', () => {
      replace(formSlot);
      inviteButton.focus();
    });
    onSubmit(
      form,
      async () => {
        const body = { role: role.control.value, expires_in_secs: Number(expiry.control.value) };
        const r = await withReauth(ctx.me, () => api('POST', '/api/users/invites', body), 'Inviting an administrator needs a fresh confirmation.');
        if (!r) return;
        replace(formSlot);
        showLink(r, body.role);
      },
      explainUsers,
    );
    replace(formSlot, form);
    role.control.focus();
  });

  function showLink(invite, role) {
    let url = invite.url;
    const done = h('button', { type: 'button', class: 'secondary' }, 'Done');
    const box = h(
      'section',
      { class: 'card', 'aria-labelledby': 'invite-link-head' },
      h('h2', { id: 'invite-link-head' }, 'Invite created'),
      h('p', {}, `Send this link to the new ${role}. It works once, until ${fmtTime(invite.expires_at)}, and is shown only now.`),
      h('p', { class: 'secret-once', 'aria-label': 'Invite link' }, url),
      h('div', { class: 'actions' }, copyButton(() => url), done),
    );
    done.addEventListener('click', () => {
      url = '';
      replace(linkSlot);
      inviteButton.focus();
    });
    replace(linkSlot, box);
    done.focus();
  }

  // ---------- List ----------
  async function load() {
    let users;
    try {
      users = await api('GET', '/api/users');
    } catch (err) {
      list.removeAttribute('aria-busy');
      replace(list, message('error', explain(err)));
      return;
    }
    list.removeAttribute('aria-busy');
    users.sort((a, b) => a.username.localeCompare(b.username));
    replace(
      list,
      table({
        caption: 'Users',
        rows: users,
        empty: 'No users yet.',
        columns: [
          { label: 'Username', cell: (u) => h('span', {}, h('strong', {}, u.username), u.id === ctx.me.id ? h('span', { class: 'muted' }, ' (you)') : null) },
          { label: 'Role', cell: (u) => roleCell(u) },
          { label: 'TOTP', cell: (u) => (u.mfa_enabled ? h('span', { class: 'badge ok' }, 'On') : h('span', { class: `badge ${u.role === 'admin' ? 'warn' : ''}` }, u.role === 'admin' ? 'Set up at next sign-in' : 'Off')) },
          { label: 'Recovery codes left', cell: (u) => (u.mfa_enabled ? h('span', { class: u.recovery_codes_left < 3 ? 'badge warn' : null }, fmtNumber(u.recovery_codes_left)) : h('span', { class: 'muted' }, '—')) },
          { label: 'Status', cell: (u) => (u.disabled ? h('span', { class: 'badge danger' }, 'Disabled') : h('span', { class: 'badge ok' }, 'Active')) },
          { label: 'Created', cell: (u) => h('time', { datetime: new Date(u.created_at * 1000).toISOString(), title: fmtTime(u.created_at) }, fmtRelative(u.created_at)) },
          { label: 'Actions', cell: (u) => actionsCell(u) },
        ],
      }),
    );
  }

  function roleCell(u) {
    const id = nextId('role');
    const select = h(
      'select',
      { id, class: 'compact' },
      ROLES.map((r) => h('option', { value: r.value, selected: r.value === u.role }, r.label)),
    );
    const save = h('button', { type: 'button', class: 'secondary small' }, 'Save');
    save.disabled = true;
    select.addEventListener('change', () => {
      save.disabled = select.value === u.role;
    });
    save.addEventListener('click', async () => {
      const role = select.value;
      save.disabled = true;
      try {
        const r = await withReauth(
          ctx.me,
          () => api('PUT', `/api/users/${encodeURIComponent(u.username)}/role`, { role }),
          `Changing ${u.username}’s role needs a fresh confirmation.`,
        );
        if (!r) {
          save.disabled = false;
          return;
        }
        say('ok', `${u.username} is now ${role === 'admin' ? 'an' : 'a'} ${role}.`);
        await load();
      } catch (err) {
        say('error', `${u.username}: ${explainUsers(err)}`);
        select.value = u.role;
      }
    });
    return h('div', { class: 'row nowrap' }, h('label', { for: id, class: 'visually-hidden' }, `Role of ${u.username}`), select, save);
  }

  function actionsCell(u) {
    const toggle = h('button', { type: 'button', class: u.disabled ? 'secondary small' : 'danger small' }, u.disabled ? 'Enable' : 'Disable');
    toggle.setAttribute('aria-label', `${u.disabled ? 'Enable' : 'Disable'} ${u.username}`);
    toggle.addEventListener('click', async () => {
      const disabling = !u.disabled;
      const ok = await confirmDialog(
        disabling ? `Disable ${u.username}?` : `Enable ${u.username}?`,
        disabling
          ? `${u.username} is signed out everywhere at once, and their access tokens and API keys stop working. Their connections and keys are kept; enabling the account again restores them.`
          : `${u.username} can sign in again, and their API keys work again.`,
        disabling ? 'Disable' : 'Enable',
        disabling,
      );
      if (!ok) return;
      try {
        const r = await withReauth(
          ctx.me,
          () => api('POST', `/api/users/${encodeURIComponent(u.username)}/${disabling ? 'disable' : 'enable'}`),
          `${disabling ? 'Disabling' : 'Enabling'} ${u.username} needs a fresh confirmation.`,
        );
        if (!r) return;
        say('ok', `${u.username} is ${disabling ? 'disabled' : 'enabled'}.`);
        await load();
      } catch (err) {
        say('error', `${u.username}: ${explainUsers(err)}`);
      }
    });
    const reset = h('button', { type: 'button', class: 'secondary small' }, 'Reset MFA');
    reset.setAttribute('aria-label', `Reset MFA of ${u.username}`);
    reset.addEventListener('click', async () => {
      const ok = await confirmDialog(
        `Reset ${u.username}’s MFA?`,
        `Their authenticator app and recovery codes stop working and their sessions end. ${u.role === 'admin' ? 'As an administrator they set up a new authenticator at their next sign-in.' : 'They can sign in with their password and set up a new authenticator on the Account screen.'} Do this only when you are sure who is asking.`,
        'Reset MFA',
      );
      if (!ok) return;
      try {
        const r = await withReauth(
          ctx.me,
          () => api('POST', `/api/users/${encodeURIComponent(u.username)}/reset-mfa`),
          'Resetting someone’s MFA needs a fresh confirmation.',
        );
        if (!r) return;
        say('ok', `${u.username}’s MFA was reset.`);
        await load();
      } catch (err) {
        say('error', `${u.username}: ${explainUsers(err)}`);
      }
    });
    return h('div', { class: 'row' }, toggle, reset);
  }

  await load();
}
