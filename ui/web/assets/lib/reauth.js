// Privileged actions (revealing a secret, new recovery codes, admin keys,
// role changes, MFA resets) need a recent re-authentication. `withReauth`
// runs the action; when the server answers 403 reauth_required it asks for
// a TOTP code (or the password, for accounts without TOTP), sends it to
// /api/auth/reauth, and runs the action once more.

import { api } from './api.js';
import { h, field, modal, message } from './dom.js';
import { explain } from './errors.js';

/** Shows the re-auth dialog; resolves true once the server accepted it. */
export function askReauth(me, why) {
  const totp = Boolean(me && me.mfa_enabled);
  return modal('Confirm it is you', (close) => {
    const input = field(
      totp
        ? {
            label: 'Code from your authenticator app',
            name: 'code',
            inputmode: 'numeric',
            autocomplete: 'one-time-code',
            pattern: '[0-9]{6,8}',
            required: true,
          }
        : { label: 'Your password', name: 'password', type: 'password', autocomplete: 'current-password', required: true },
    );
    const slot = h('div', { 'aria-live': 'polite' });
    const form = h(
      'form',
      { class: 'stack' },
      why ? h('p', {}, why) : null,
      input,
      slot,
      h(
        'div',
        { class: 'actions' },
        h('button', { type: 'submit', class: 'primary' }, 'Confirm'),
        h('button', { type: 'button', class: 'secondary', onclick: () => close(false) }, 'Cancel'),
      ),
    );
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      slot.replaceChildren();
      const value = input.control.value.trim();
      try {
        await api('POST', '/api/auth/reauth', totp ? { code: value } : { password: input.control.value });
        close(true);
      } catch (err) {
        slot.replaceChildren(message('error', explain(err)));
        input.control.select();
      }
    });
    setTimeout(() => input.control.focus(), 0);
    return form;
  });
}

/** Runs `action()`; on 403 reauth_required asks once and retries. */
export async function withReauth(me, action, why) {
  try {
    return await action();
  } catch (err) {
    if (err && err.code === 'reauth_required') {
      const ok = await askReauth(me, why);
      if (!ok) return undefined;
      return action();
    }
    throw err;
  }
}
