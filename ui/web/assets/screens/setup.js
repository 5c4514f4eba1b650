// First-run setup wizard, opened from the one-time link `latchkey serve`
// prints (/setup#token=…). The token is read from the fragment, removed from
// the address bar at once, and kept in memory only. Three steps: owner
// account, authenticator app, recovery codes.

import { sealedCard } from '../lib/unseal.js';
import { api } from '../lib/api.js';
import { h, message, replace } from '../lib/dom.js';
import {
  brand,
  codeField,
  enrollmentBlock,
  newPasswordFields,
  publicPage,
  readCode,
  readNewAccount,
  recoveryCodesBlock,
  steps,
  takeFragment,
  usernameField,
  wireForm,
} from './auth-common.js';

export const title = 'Set up Latchkey';

const STEPS = ['Your account', 'Authenticator app', 'Recovery codes'];

// The setup token for this page's lifetime (never in storage or the URL).
let setupToken = '';

export async function render(main, ctx) {
  const fromUrl = takeFragment((hash) => new URLSearchParams(hash).get('token'));
  if (fromUrl) setupToken = fromUrl;
  publicPage(main);
  const box = h('div', {});
  replace(main, brand(), h('h1', {}, 'Set up Latchkey'), box);

  const status = await api('GET', '/api/setup');
  if (!status || !status.needed) {
    setupToken = '';
    replace(
      box,
      h(
        'div',
        { class: 'card' },
        message('info', 'Latchkey is already set up: its owner account exists.'),
        ctx.me
          ? h('p', {}, h('a', { href: '/' }, 'Go to the home screen'))
          : h('p', {}, 'To use it, ', h('a', { href: '/login' }, 'sign in'), '.'),
      ),
    );
    return;
  }
  if (!setupToken) {
    replace(box, noToken());
    return;
  }
  // The owner's authenticator secret is sealed with the vault's key: a
  // sealed vault (passphrase mode) is unsealed before setup can go on.
  const sealed = await sealedCard(async () => accountStep(box, ctx, ''));
  if (sealed) {
    box.before(sealed);
    return;
  }
  accountStep(box, ctx, '');
}

function noToken() {
  return h(
    'div',
    { class: 'card' },
    h('p', {}, 'Setting up Latchkey needs the one-time setup link.'),
    h(
      'p',
      {},
      'When ',
      h('code', {}, 'latchkey serve'),
      ' starts for the first time, it prints that link in its output (the terminal, or ',
      h('code', {}, 'journalctl -u latchkey'),
      ' when it runs as a service). It looks like ',
      h('code', {}, 'https://…/setup#token=…'),
      '. Open that exact link in this browser.',
    ),
    h(
      'p',
      { class: 'muted' },
      'The link works once and expires after a while; restart ',
      h('code', {}, 'latchkey serve'),
      ' to get a new one.',
    ),
  );
}

function stepHeading(n) {
  return h('h2', { tabindex: '-1' }, STEPS[n - 1]);
}

function accountStep(box, ctx, username) {
  const user = usernameField({ value: username });
  const pw = newPasswordFields({ username: () => user.control.value.trim() });
  const heading = stepHeading(1);
  const form = h(
    'form',
    { class: 'card' },
    heading,
    h('p', {}, 'Create the owner account. The owner is an administrator and can invite others later.'),
    user,
    pw.nodes,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Continue')),
  );
  wireForm(form, async () => {
    const { username: name, password } = readNewAccount(user, pw);
    const enrollment = await api('POST', '/api/setup/begin', {
      token: setupToken,
      username: name,
      password,
    });
    pw.clear();
    totpStep(box, ctx, name, enrollment);
  });
  replace(box, steps(1, STEPS), form);
  user.control.focus();
}

function totpStep(box, ctx, username, enrollment) {
  const code = codeField();
  const heading = stepHeading(2);
  const form = h(
    'form',
    { class: 'card' },
    heading,
    h(
      'p',
      {},
      'Latchkey asks for a code from an authenticator app each time you sign in, so a stolen password alone is not enough.',
    ),
    enrollmentBlock(enrollment),
    h('p', {}, 'Then type the code the app shows, to prove it is set up correctly.'),
    code,
    h(
      'div',
      { class: 'actions' },
      h('button', { type: 'submit', class: 'primary' }, 'Confirm'),
      h('button', { type: 'button', class: 'secondary', onclick: () => accountStep(box, ctx, username) }, 'Back'),
    ),
  );
  wireForm(
    form,
    async () => {
      const res = await api('POST', '/api/setup/confirm', {
        token: setupToken,
        username,
        code: readCode(code.control),
      });
      // The token is used up; the session cookie is set.
      setupToken = '';
      codesStep(box, ctx, username, res.recovery_codes || []);
    },
    {
      onError: (err) => {
        if (err.code === 'invalid_code' || err.code === 'code_replayed') {
          code.control.value = '';
          code.control.setAttribute('aria-invalid', 'true');
          code.control.focus();
        }
        return false;
      },
    },
  );
  replace(box, steps(2, STEPS), form);
  heading.focus();
}

function codesStep(box, ctx, username, codes) {
  const heading = stepHeading(3);
  replace(
    box,
    steps(3, STEPS),
    h(
      'div',
      { class: 'card' },
      heading,
      h('p', {}, 'Your account is ready. One last thing: if you ever lose your authenticator app, these codes get you back in.'),
      recoveryCodesBlock(codes, {
        username,
        doneLabel: 'Continue to Latchkey',
        onDone: () => ctx.signedIn('/'),
      }),
    ),
  );
  heading.focus();
}
