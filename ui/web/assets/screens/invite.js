// Accepting an invite (/invite#<token>): choose a username and password,
// then sign in with them (a second step or authenticator enrollment when the
// role needs one). The token leaves the address bar at once and is kept in
// memory only.

import { api } from '../lib/api.js';
import { h, message, replace } from '../lib/dom.js';
import { explain } from '../lib/errors.js';
import {
  brand,
  newPasswordFields,
  publicPage,
  readNewAccount,
  secondFactor,
  sentence,
  takeFragment,
  usernameField,
  wireForm,
} from './auth-common.js';

export const title = 'Join Latchkey';

let inviteToken = '';

export async function render(main, ctx) {
  const fromUrl = takeFragment((hash) => (hash.startsWith('token=') ? new URLSearchParams(hash).get('token') : hash));
  if (fromUrl) inviteToken = fromUrl;
  publicPage(main);
  const box = h('div', { class: 'card' });
  replace(main, brand(), h('h1', {}, 'Join Latchkey'), box);

  if (!inviteToken) {
    replace(
      box,
      h('p', {}, 'Joining Latchkey needs the invite link an administrator sent you. It looks like ', h('code', {}, 'https://…/invite#…'), '.'),
      h('p', {}, 'Open that exact link in this browser. An invite works once and expires; if yours has, ask for a new one.'),
      h('p', {}, 'Already have an account? ', h('a', { href: '/login' }, 'Sign in'), '.'),
    );
    return;
  }
  if (ctx.me) {
    box.before(
      message(
        'warn',
        `You are signed in as ${ctx.me.username}. Creating a new account here signs this browser in as the new user.`,
      ),
    );
  }
  joinForm(box, ctx);
}

function joinForm(box, ctx) {
  const user = usernameField();
  const pw = newPasswordFields({ username: () => user.control.value.trim() });
  const form = h(
    'form',
    {},
    h('p', {}, 'You were invited to Latchkey. Choose your username and password.'),
    user,
    pw.nodes,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Join')),
  );
  wireForm(form, async () => {
    const { username, password } = readNewAccount(user, pw);
    await api('POST', '/api/invites/accept', { token: inviteToken, username, password });
    inviteToken = '';
    pw.clear();
    await signIn(box, ctx, username, password);
  });
  replace(box, form);
  user.control.focus();
}

async function signIn(box, ctx, username, password) {
  const toLogin = (why) =>
    replace(
      box,
      message('ok', `Your account ${username} is ready.`),
      why ? message('info', why) : null,
      h('p', {}, h('a', { href: `/login` }, 'Sign in'), ' with your new username and password.'),
    );
  let res;
  try {
    res = await api('POST', '/api/auth/login', { username, password });
  } catch (err) {
    toLogin(sentence(explain(err)));
    return;
  }
  if (!res.mfa_required) {
    await ctx.signedIn('/');
    return;
  }
  replace(box, message('ok', `Your account ${username} is ready.`), h('div', {}));
  secondFactor(box.lastChild, ctx, res, { username, next: '/', restart: (msg) => toLogin(msg) });
}
