// The signed-in person's own account: password, authenticator app (TOTP)
// and recovery codes, and the sessions signed in as them. Privileged changes
// go through withReauth (a fresh TOTP code or the password first).

import { api } from '../lib/api.js';
import { h, field, message, replace, table, fmtTime, fmtRelative, confirmDialog } from '../lib/dom.js';
import { explain } from '../lib/errors.js';
import { withReauth } from '../lib/reauth.js';
import {
  codeField,
  enrollmentBlock,
  errorMessage,
  newPasswordFields,
  readCode,
  recoveryCodesBlock,
  sentence,
  wireForm,
} from './auth-common.js';

export const title = 'Account';

export async function render(main, ctx) {
  const state = { me: ctx.me };
  const pwCard = h('section', { class: 'card', 'aria-labelledby': 'acct-pw' });
  const mfaCard = h('section', { class: 'card', 'aria-labelledby': 'acct-mfa' });
  const sessCard = h('section', { class: 'card', 'aria-labelledby': 'acct-sessions' });
  replace(
    main,
    h('h1', {}, 'Account'),
    h('p', { class: 'muted' }, `Signed in as ${ctx.me.username} · ${roleName(ctx.me.role)}`),
    h('div', { class: 'account-grid' }, pwCard, mfaCard),
    sessCard,
  );
  if (ctx.me.via !== 'session' && ctx.me.via !== 'access_token') {
    replace(pwCard, message('info', 'This is the host’s admin token, not a person: it has no account to manage.'));
    mfaCard.remove();
    sessCard.remove();
    return;
  }
  passwordCard(pwCard, ctx.me.username);
  mfaSection(mfaCard, ctx, state);
  await sessionsSection(sessCard);
}

function roleName(role) {
  return { admin: 'administrator', user: 'user', guest: 'guest' }[role] || role;
}

// ---- password --------------------------------------------------------------

function passwordCard(card, username) {
  const current = field({
    label: 'Current password',
    name: 'current-password',
    type: 'password',
    autocomplete: 'current-password',
    required: true,
    maxlength: 256,
  });
  const pw = newPasswordFields({ label: 'New password', repeatLabel: 'Repeat new password', username });
  const done = h('div', { 'aria-live': 'polite' });
  // For password managers: which account this password belongs to.
  const who = h('input', { type: 'text', name: 'username', autocomplete: 'username', value: username, readonly: true, hidden: true, tabindex: '-1', 'aria-hidden': 'true' });
  const form = h(
    'form',
    {},
    who,
    current,
    pw.nodes,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Change password')),
  );
  wireForm(form, async () => {
    done.replaceChildren();
    if (!current.control.value) {
      current.control.setAttribute('aria-invalid', 'true');
      current.control.focus();
      throw new Error('Enter your current password.');
    }
    current.control.removeAttribute('aria-invalid');
    const bad = pw.check();
    if (bad) throw new Error(bad);
    try {
      await api('POST', '/api/account/password', {
        current_password: current.control.value,
        new_password: pw.password.value,
      });
    } catch (err) {
      if (err.code === 'invalid_credentials') {
        current.control.value = '';
        current.control.setAttribute('aria-invalid', 'true');
        current.control.focus();
        throw new Error('The current password is not right.');
      }
      throw err;
    }
    current.control.value = '';
    pw.clear();
    done.replaceChildren(
      message(
        'ok',
        'Password changed. Your other sessions stay signed in: sign them out below if someone else might know the old password.',
      ),
    );
  });
  replace(card, h('h2', { id: 'acct-pw' }, 'Password'), form, done);
}

// ---- authenticator app and recovery codes ---------------------------------------

function mfaSection(card, ctx, state) {
  const me = state.me;
  const on = Boolean(me.mfa_enabled);
  const isAdmin = me.role === 'admin';
  const slot = h('div', { 'aria-live': 'polite' });
  const work = h('div', {});

  const refresh = async (note) => {
    state.me = (await ctx.reloadMe()) || state.me;
    mfaSection(card, ctx, state);
    if (note) card.querySelector('.mfa-msg').replaceChildren(note);
  };

  const enroll = h('button', { type: 'button', class: on ? 'secondary' : 'primary' }, on ? 'Set up a new authenticator' : 'Turn on two-factor sign-in');
  const fresh = () => {
    slot.replaceChildren();
    card.querySelector('.mfa-msg').replaceChildren();
  };
  enroll.addEventListener('click', async () => {
    fresh();
    try {
      const enrollment = await withReauth(
        state.me,
        () => api('POST', '/api/account/totp'),
        'Setting up an authenticator app needs a fresh confirmation.',
      );
      if (!enrollment) return;
      enrollForm(work, enrollment, {
        username: state.me.username,
        onCancel: () => {
          work.replaceChildren();
          enroll.focus();
        },
        onDone: (note) => refresh(note),
      });
    } catch (err) {
      slot.replaceChildren(errorMessage(err));
    }
  });

  const regen = h('button', { type: 'button', class: 'secondary' }, 'New recovery codes');
  regen.addEventListener('click', async () => {
    fresh();
    const ok = await confirmDialog(
      'Make new recovery codes?',
      'Your current recovery codes stop working at once. You will see the new ones only once.',
      'Make new codes',
      false,
    );
    if (!ok) return;
    try {
      const res = await withReauth(
        state.me,
        () => api('POST', '/api/account/recovery-codes'),
        'New recovery codes need a fresh confirmation.',
      );
      if (!res) return;
      const heading = h('h3', { tabindex: '-1' }, 'Your new recovery codes');
      replace(
        work,
        heading,
        recoveryCodesBlock(res.recovery_codes || [], {
          username: state.me.username,
          doneLabel: 'Done',
          onDone: () => refresh(message('ok', 'New recovery codes saved. The old ones no longer work.')),
        }),
      );
      heading.focus();
    } catch (err) {
      slot.replaceChildren(errorMessage(err));
    }
  });

  const off = h('button', { type: 'button', class: 'danger' }, 'Turn off two-factor sign-in');
  off.addEventListener('click', async () => {
    fresh();
    const ok = await confirmDialog(
      'Turn off two-factor sign-in?',
      'Signing in will need only your password, and your recovery codes stop working.',
      'Turn off',
    );
    if (!ok) return;
    try {
      const done = await withReauth(
        state.me,
        async () => {
          await api('DELETE', '/api/account/totp');
          return true;
        },
        'Turning off two-factor sign-in needs a fresh confirmation.',
      );
      if (!done) return;
      await refresh(message('ok', 'Two-factor sign-in is off.'));
    } catch (err) {
      const text =
        err.code === 'mfa_required_for_role'
          ? 'Administrators must keep two-factor sign-in: it guards every secret in the vault. Set up a new authenticator instead.'
          : sentence(explain(err));
      slot.replaceChildren(message('error', text));
    }
  });

  replace(
    card,
    h('h2', { id: 'acct-mfa' }, 'Two-factor sign-in'),
    h(
      'p',
      { class: 'row' },
      h('span', { class: `badge ${on ? 'ok' : 'warn'}` }, on ? 'On' : 'Off'),
      h('span', {}, on ? 'Signing in needs a code from your authenticator app.' : 'Signing in needs only your password.'),
    ),
    on && typeof me.recovery_codes_left === 'number'
      ? h(
          'p',
          { class: me.recovery_codes_left <= 3 ? 'msg warn' : '' },
          `Recovery codes left: ${me.recovery_codes_left} of 10.`,
          me.recovery_codes_left <= 3 ? ' Make new ones before you run out.' : '',
        )
      : null,
    on
      ? h('p', { class: 'muted' }, 'Lost your phone or replacing it? Set up the new one here. The current authenticator keeps working until the new one is confirmed.')
      : h('p', { class: 'muted' }, 'Add an authenticator app so a stolen password alone cannot open your account.'),
    h('div', { class: 'mfa-msg' }),
    h(
      'div',
      { class: 'actions' },
      enroll,
      on ? regen : null,
      on && !isAdmin ? off : null,
    ),
    on && isAdmin ? h('p', { class: 'hint admin-note' }, 'Administrators cannot turn two-factor sign-in off.') : null,
    slot,
    work,
  );
}

function enrollForm(work, enrollment, { username, onCancel, onDone }) {
  const code = codeField();
  const heading = h('h3', { tabindex: '-1' }, 'Add Latchkey to your authenticator app');
  const form = h(
    'form',
    {},
    heading,
    enrollmentBlock(enrollment),
    code,
    h(
      'div',
      { class: 'actions' },
      h('button', { type: 'submit', class: 'primary' }, 'Confirm'),
      h('button', { type: 'button', class: 'secondary', onclick: onCancel }, 'Cancel'),
    ),
  );
  wireForm(form, async () => {
    const res = await api('POST', '/api/account/totp/confirm', { code: readCode(code.control) });
    const codes = (res && res.recovery_codes) || [];
    if (!codes.length) {
      await onDone(message('ok', 'Your new authenticator app is set up. Your recovery codes stay the same.'));
      return;
    }
    const h3 = h('h3', { tabindex: '-1' }, 'Your recovery codes');
    replace(
      work,
      message('ok', 'Your authenticator app is set up.'),
      h3,
      recoveryCodesBlock(codes, {
        username,
        doneLabel: 'Done',
        onDone: () => onDone(message('ok', 'Two-factor sign-in is on.')),
      }),
    );
    h3.focus();
  });
  replace(work, form);
  heading.focus();
}

// ---- sessions ------------------------------------------------------------------

/** "Firefox on Linux" from a User-Agent header; the raw text when unknown. */
export function describeAgent(ua) {
  if (!ua) return 'Unknown device';
  const browsers = [
    [/Edg(?:e|A|iOS)?\/(\d+)/, 'Edge'],
    [/OPR\/(\d+)/, 'Opera'],
    [/Firefox\/(\d+)/, 'Firefox'],
    [/FxiOS\/(\d+)/, 'Firefox'],
    [/CriOS\/(\d+)/, 'Chrome'],
    [/HeadlessChrome\/(\d+)/, 'Headless Chrome'],
    [/Chrom(?:e|ium)\/(\d+)/, 'Chrome'],
    [/Version\/(\d+)[^ ]* (?:Mobile\/\S+ )?Safari\//, 'Safari'],
    [/^curl\/(\S+)/, 'curl'],
    [/^python-requests\/(\S+)/, 'Python requests'],
    [/^Latchkey[- ]?Desktop/i, 'Latchkey desktop app'],
  ];
  const systems = [
    [/iPhone|iPad|iPod/, 'iOS'],
    [/Android/, 'Android'],
    [/Windows/, 'Windows'],
    [/Mac OS X|Macintosh/, 'macOS'],
    [/CrOS/, 'ChromeOS'],
    [/Linux/, 'Linux'],
  ];
  const b = browsers.find(([re]) => re.test(ua));
  const s = systems.find(([re]) => re.test(ua));
  if (!b && !s) return ua.length > 60 ? `${ua.slice(0, 57)}…` : ua;
  const name = b ? `${b[1]} ${ua.match(b[0])[1].split('.')[0]}` : 'Browser';
  return s ? `${name} on ${s[1]}` : name;
}

function when(t, relative) {
  if (!t) return '—';
  return h(
    'time',
    { datetime: new Date(t * 1000).toISOString(), title: fmtTime(t) },
    relative ? fmtRelative(t) : fmtTime(t),
  );
}

async function sessionsSection(card) {
  const list = h('div', {});
  const slot = h('div', { 'aria-live': 'polite' });
  const others = h('button', { type: 'button', class: 'secondary' }, 'Sign out all other sessions');

  const load = async () => {
    let rows;
    try {
      rows = await api('GET', '/api/account/sessions');
    } catch (err) {
      replace(list, errorMessage(err));
      return;
    }
    rows.sort((a, b) => Number(b.current) - Number(a.current) || b.last_seen_at - a.last_seen_at);
    replace(
      list,
      table({
        caption: 'Sessions',
        rows,
        empty: 'No sessions. (This page is open with an access token rather than a session.)',
        columns: [
          {
            label: 'Device',
            cell: (s) =>
              h(
                'span',
                { class: 'device' },
                h('span', { title: s.user_agent || '' }, describeAgent(s.user_agent)),
                s.current ? [' ', h('span', { class: 'badge ok' }, 'This session')] : null,
              ),
          },
          { label: 'IP address', cell: (s) => h('span', { class: 'mono' }, s.ip || '—') },
          { label: 'Signed in', cell: (s) => when(s.created_at, false) },
          { label: 'Last seen', cell: (s) => when(s.last_seen_at, true) },
          { label: 'Expires', cell: (s) => when(s.expires_at, false) },
          {
            label: 'Action',
            cell: (s) =>
              s.current
                ? h('span', { class: 'muted' }, '—')
                : h(
                    'button',
                    {
                      type: 'button',
                      class: 'secondary small',
                      onclick: () => revoke(s),
                    },
                    'Revoke',
                  ),
          },
        ],
      }),
    );
  };

  const revoke = async (s) => {
    slot.replaceChildren();
    const ok = await confirmDialog(
      'Revoke this session?',
      `${describeAgent(s.user_agent)}${s.ip ? ` at ${s.ip}` : ''} will be signed out at once.`,
      'Revoke',
    );
    if (!ok) return;
    try {
      await api('DELETE', `/api/account/sessions/${encodeURIComponent(s.id)}`);
      slot.replaceChildren(message('ok', 'Session revoked: that device is signed out.'));
    } catch (err) {
      slot.replaceChildren(errorMessage(err));
    }
    await load();
  };

  others.addEventListener('click', async () => {
    slot.replaceChildren();
    const ok = await confirmDialog(
      'Sign out all other sessions?',
      'Every other browser and app signed in as you is signed out at once. This session stays signed in.',
      'Sign out others',
    );
    if (!ok) return;
    try {
      const res = await api('DELETE', '/api/account/sessions');
      const n = (res && res.revoked) || 0;
      slot.replaceChildren(
        message('ok', n === 0 ? 'No other sessions were signed in.' : `Signed out ${n} other session${n === 1 ? '' : 's'}.`),
      );
    } catch (err) {
      slot.replaceChildren(errorMessage(err));
    }
    await load();
  });

  replace(
    card,
    h(
      'div',
      { class: 'spread sessions-head' },
      h('h2', { id: 'acct-sessions' }, 'Where you are signed in'),
      others,
    ),
    h('p', { class: 'muted' }, 'Each browser or app that signed in as you. Revoke any you do not recognise, then change your password.'),
    slot,
    list,
  );
  await load();
}
