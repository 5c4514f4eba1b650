// Sign in: username and password, then a TOTP code or a recovery code (or,
// for an administrator without an authenticator, enrollment first). The MFA
// ticket is kept in this closure only. Lockouts and rate limits say when to
// try again and keep the button disabled until then.

import { api } from '../lib/api.js';
import { h, field, message, replace } from '../lib/dom.js';
import { sealedCard } from '../lib/unseal.js';
import { brand, publicPage, safeNext, secondFactor, wireForm } from './auth-common.js';

export const title = 'Sign in';

export async function render(main, ctx) {
  const next = safeNext(ctx.params.get('next'));
  if (ctx.me) {
    ctx.navigate(next, { replace: true });
    return;
  }
  publicPage(main);
  const box = h('div', { class: 'card' });
  // Sealed (passphrase mode after a restart): unseal first, here.
  const sealed = await sealedCard(async () => {});
  replace(main, brand(), h('h1', {}, 'Sign in'), sealed, box);
  passwordStep(box, ctx, next, { username: '', notice: '' });
}

function passwordStep(box, ctx, next, { username, notice }) {
  const user = field({
    label: 'Username',
    name: 'username',
    autocomplete: 'username',
    autocapitalize: 'none',
    spellcheck: 'false',
    required: true,
    maxlength: 64,
    value: username || '',
  });
  const pass = field({
    label: 'Password',
    name: 'password',
    type: 'password',
    autocomplete: 'current-password',
    required: true,
    maxlength: 256,
  });
  const form = h(
    'form',
    {},
    notice ? message('info', notice) : null,
    user,
    pass,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Sign in')),
  );
  const restart = (msg) => passwordStep(box, ctx, next, { username: user.control.value, notice: msg });
  let lockedName = null;
  const slot = wireForm(
    form,
    async () => {
      const name = user.control.value.trim();
      const pw = pass.control.value;
      for (const [f, v] of [
        [user, name],
        [pass, pw],
      ]) {
        f.control.removeAttribute('aria-invalid');
        if (!v) {
          f.control.setAttribute('aria-invalid', 'true');
          f.control.focus();
          throw new Error(f === user ? 'Enter your username.' : 'Enter your password.');
        }
      }
      const res = await api('POST', '/api/auth/login', { username: name, password: pw });
      pass.control.value = '';
      if (!res.mfa_required) {
        await ctx.signedIn(next);
        return;
      }
      secondFactor(box, ctx, res, { username: name, next, restart });
    },
    {
      onError: (err) => {
        lockedName = err.code === 'account_locked' ? user.control.value.trim() : null;
        if (err.code === 'invalid_credentials') {
          pass.control.value = '';
          pass.control.setAttribute('aria-invalid', 'true');
          pass.control.focus();
        }
        return false;
      },
    },
  );
  // A locked account is about that name only: another may try at once.
  user.control.addEventListener('input', () => {
    if (lockedName !== null && user.control.value.trim() !== lockedName) {
      lockedName = null;
      slot.unlock();
    }
  });
  replace(box, form);
  (username ? pass : user).control.focus();
}
