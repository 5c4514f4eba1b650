// Pieces shared by the screens that deal with credentials: setup, sign-in,
// invite and account. Password fields with strength feedback, the TOTP
// enrollment block (QR code + key for manual entry), recovery codes shown
// once, the second sign-in step, and forms that wait out a lockout.
//
// Secrets (setup token, invite token, MFA ticket, passwords, codes) live only
// in closures and DOM fields of the current page: never in web storage or
// the URL.

import { api } from '../lib/api.js';
import { h, field, message, copyButton, downloadText, nextId, replace } from '../lib/dom.js';
import { explain } from '../lib/errors.js';

export const MIN_PASSWORD = 12;
export const MAX_PASSWORD = 256;

/** The small brand line above the heading on public screens. */
export function brand() {
  return h(
    'div',
    { class: 'auth-brand' },
    h('img', { src: '/assets/icon.svg', alt: '', width: 32, height: 32 }),
    h('span', {}, 'Latchkey'),
  );
}

/** Marks `main` as a narrow, centred public page. */
export function publicPage(main) {
  main.classList.add('narrow', 'auth-page');
}

/** Reads a secret from the URL fragment, then removes it from the address bar and history entry. */
export function takeFragment(read) {
  const hash = location.hash.startsWith('#') ? location.hash.slice(1) : location.hash;
  const value = hash ? read(hash) : '';
  if (hash) history.replaceState(history.state, '', location.pathname + location.search);
  return value || '';
}

/** A same-origin path to go to after signing in; anything else becomes '/'. */
export function safeNext(raw) {
  if (!raw || typeof raw !== 'string') return '/';
  if (!raw.startsWith('/') || raw.startsWith('//') || raw.includes('\\')) return '/';
  if (/^\/(login|setup|invite)(\/|\?|#|$)/.test(raw)) return '/';
  return raw;
}

/** "Step 2 of 3" with the names of all steps; the current one marked. */
export function steps(current, names) {
  return h(
    'div',
    { class: 'steps' },
    h('p', { class: 'step-count' }, `Step ${current} of ${names.length}`),
    h(
      'ol',
      { 'aria-label': 'Steps' },
      names.map((name, i) =>
        h(
          'li',
          {
            class: i + 1 < current ? 'done' : i + 1 === current ? 'current' : null,
            'aria-current': i + 1 === current ? 'step' : null,
          },
          name,
        ),
      ),
    ),
  );
}

// ---- passwords ----------------------------------------------------------

/** 0 (too short) … 4 (strong), by length and character variety. */
export function passwordScore(pw) {
  const len = [...pw].length;
  if (len < MIN_PASSWORD || len > MAX_PASSWORD) return 0;
  const kinds = [/[a-z]/, /[A-Z]/, /[0-9]/, /[^a-zA-Z0-9]/].filter((re) => re.test(pw)).length;
  const distinct = new Set(pw).size;
  let score = 1;
  if (len >= 16) score += 1;
  if (len >= 20) score += 1;
  if (kinds >= 3) score += 1;
  // "aaaaaaaaaaaaaaaa" or "abcabcabcabc…" is long but not strong.
  if (distinct < Math.max(6, len / 3)) score = Math.min(score, 1);
  return Math.min(score, 4);
}

const SCORE_WORDS = ['Too short', 'Weak', 'Fair', 'Good', 'Strong'];

function strengthText(pw) {
  const len = [...pw].length;
  if (!len) return `At least ${MIN_PASSWORD} characters. A few unrelated words make a good password.`;
  if (len < MIN_PASSWORD) {
    const more = MIN_PASSWORD - len;
    return `Too short: ${more} more character${more === 1 ? '' : 's'} needed.`;
  }
  if (len > MAX_PASSWORD) return `Too long: at most ${MAX_PASSWORD} characters.`;
  const score = passwordScore(pw);
  const tip = score < 3 ? ' Longer is better: add another word or two.' : '';
  return `Strength: ${SCORE_WORDS[score]}.${tip}`;
}

/**
 * "Password" (or `label`) with a strength meter, and "Repeat password".
 * Returns { nodes, password, repeat, check() } where check() returns an
 * error sentence (after marking and focusing the field) or null.
 */
export function newPasswordFields({ label = 'Password', repeatLabel = 'Repeat password', username } = {}) {
  const pw = field({
    label,
    name: 'new-password',
    type: 'password',
    autocomplete: 'new-password',
    required: true,
    minlength: MIN_PASSWORD,
    maxlength: MAX_PASSWORD,
  });
  const strengthId = nextId('strength');
  const bar = h('span', { class: 'lvl-0' });
  const meter = h('div', { class: 'meter', 'aria-hidden': 'true' }, bar);
  const text = h('p', { class: 'hint', id: strengthId, 'aria-live': 'polite' }, strengthText(''));
  pw.append(meter, text);
  pw.control.setAttribute('aria-describedby', strengthId);

  const repeat = field({
    label: repeatLabel,
    name: 'repeat-password',
    type: 'password',
    autocomplete: 'new-password',
    required: true,
    maxlength: MAX_PASSWORD,
  });
  const matchId = nextId('match');
  const match = h('p', { class: 'hint', id: matchId, 'aria-live': 'polite' });
  repeat.append(match);
  repeat.control.setAttribute('aria-describedby', matchId);

  const update = () => {
    const v = pw.control.value;
    let t = strengthText(v);
    const name = typeof username === 'function' ? username() : username;
    if (name && name.length >= 3 && v.toLowerCase().includes(name.toLowerCase())) {
      t += ' It contains your username: better leave that out.';
    }
    bar.className = `lvl-${v ? Math.max(passwordScore(v), [...v].length >= MIN_PASSWORD ? 1 : 0) : 'none'}`;
    text.textContent = t;
    pw.control.removeAttribute('aria-invalid');
    const r = repeat.control.value;
    if (!r) match.textContent = '';
    else if (r === v) match.textContent = 'The passwords match.';
    else if (v.startsWith(r)) match.textContent = '';
    else match.textContent = 'The passwords do not match yet.';
    repeat.control.removeAttribute('aria-invalid');
  };
  pw.control.addEventListener('input', update);
  repeat.control.addEventListener('input', update);
  update();

  const check = () => {
    const v = pw.control.value;
    const len = [...v].length;
    let problem = null;
    let target = pw.control;
    if (len < MIN_PASSWORD) problem = `The password needs at least ${MIN_PASSWORD} characters.`;
    else if (len > MAX_PASSWORD) problem = `The password can have at most ${MAX_PASSWORD} characters.`;
    else if (repeat.control.value !== v) {
      problem = 'The two passwords are not the same. Type it again in “' + repeatLabel + '”.';
      target = repeat.control;
    }
    if (problem) {
      target.setAttribute('aria-invalid', 'true');
      target.focus();
    }
    return problem;
  };
  const clear = () => {
    pw.control.value = '';
    repeat.control.value = '';
    update();
  };
  return { nodes: [pw, repeat], password: pw.control, repeat: repeat.control, check, clear };
}

/**
 * The checked values of a new-account form (a `usernameField` and
 * `newPasswordFields`): `{ username, password }`, or throws the sentence to
 * show, marking and focusing the username when it is empty.
 */
export function readNewAccount(user, pw) {
  const username = user.control.value.trim();
  if (!username) {
    user.control.setAttribute('aria-invalid', 'true');
    user.control.focus();
    throw new Error('Choose a username.');
  }
  user.control.removeAttribute('aria-invalid');
  const bad = pw.check();
  if (bad) throw new Error(bad);
  return { username, password: pw.password.value };
}

/** The "Username" field for a new account. */
export function usernameField(attrs = {}) {
  return field({
    label: 'Username',
    name: 'username',
    autocomplete: 'username',
    autocapitalize: 'none',
    spellcheck: 'false',
    required: true,
    maxlength: 64,
    hint: 'Letters, digits and . _ - @ (start with a letter or digit).',
    ...attrs,
  });
}

/** The server's messages start in lower case and end without a stop: make them a sentence. */
export function sentence(text) {
  const t = String(text || '').trim();
  if (!t) return t;
  const first = t.charAt(0).toUpperCase() + t.slice(1);
  return /[.!?)]$/.test(first) ? first : `${first}.`;
}

/** Shows `err` (via lib/errors.js explain) as an error message. */
export function errorMessage(err) {
  return message('error', sentence(explain(err)));
}

/** A client-side check failed: an error whose text is shown as is. */
export function problem(text) {
  const err = new Error(text);
  err.code = 'client_check';
  return err;
}

// ---- forms ---------------------------------------------------------------

/**
 * Wires a <form> like lib/dom.js onSubmit, and waits out 429s: the submit
 * button stays disabled until Retry-After has passed, with a countdown.
 * `onError(err)` may handle an error itself by returning true.
 */
export function wireForm(form, action, { onError } = {}) {
  const slot = h('div', { class: 'form-msg', 'aria-live': 'polite' });
  const wait = h('p', { class: 'hint wait', hidden: true });
  form.append(slot, wait);
  let lockedUntil = 0;
  let generation = 0;
  const buttons = () => [...form.querySelectorAll('button')];
  const submit = () => form.querySelector('button[type="submit"]');
  const release = () => {
    const btn = submit();
    if (btn) btn.disabled = false;
    wait.hidden = true;
  };
  const unlock = () => {
    if (Date.now() >= lockedUntil) return;
    generation += 1;
    lockedUntil = 0;
    release();
    slot.replaceChildren();
  };
  const lock = (seconds) => {
    generation += 1;
    const mine = generation;
    lockedUntil = Date.now() + seconds * 1000;
    const tick = () => {
      if (mine !== generation || !form.isConnected) return;
      const left = Math.ceil((lockedUntil - Date.now()) / 1000);
      if (left <= 0) {
        lockedUntil = 0;
        release();
        slot.replaceChildren(message('info', 'You can try again now.'));
        return;
      }
      const btn = submit();
      if (btn) btn.disabled = true;
      const m = Math.floor(left / 60);
      const sec = String(left % 60).padStart(2, '0');
      wait.hidden = false;
      wait.textContent = `You can try again in ${m}:${sec}.`;
      setTimeout(tick, Math.min(1000, lockedUntil - Date.now() + 20));
    };
    tick();
  };

  form.noValidate = true;
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (Date.now() < lockedUntil) return;
    const all = buttons();
    all.forEach((b) => (b.disabled = true));
    form.setAttribute('aria-busy', 'true');
    slot.replaceChildren();
    let retry = 0;
    try {
      await action(form);
    } catch (err) {
      if (!(onError && onError(err, slot))) {
        slot.replaceChildren(errorMessage(err));
      }
      if (err && err.status === 429) retry = Number.isFinite(err.retryAfter) ? err.retryAfter : 60;
    } finally {
      form.removeAttribute('aria-busy');
      all.forEach((b) => (b.disabled = false));
    }
    if (retry > 0) lock(retry);
  });
  // unlock(): end a wait early (e.g. another username was typed after a lockout).
  slot.unlock = unlock;
  return slot;
}

// ---- TOTP ----------------------------------------------------------------

/** "Code from your authenticator app": digits only, 6 of them. */
export function codeField(attrs = {}) {
  return field({
    label: 'Code from your authenticator app',
    name: 'code',
    inputmode: 'numeric',
    autocomplete: 'one-time-code',
    maxlength: 9,
    required: true,
    class: 'code-input',
    hint: 'The 6-digit number your app shows for Latchkey. It changes every 30 seconds.',
    ...attrs,
  });
}

/** The code typed into `input` without spaces; throws a readable error unless it is 6 digits. */
export function readCode(input) {
  const code = input.value.replace(/[\s-]/g, '');
  if (!/^[0-9]{6}$/.test(code)) {
    input.setAttribute('aria-invalid', 'true');
    input.focus();
    throw problem('Enter the 6 digits your authenticator app shows for Latchkey.');
  }
  input.removeAttribute('aria-invalid');
  return code;
}

/** Splits an otpauth:// URI into { secret, issuer, account }. */
export function parseOtpauth(uri) {
  const out = { secret: '', issuer: 'Latchkey', account: '' };
  const m = /^otpauth:\/\/totp\/([^?]*)\??(.*)$/i.exec(String(uri || ''));
  if (!m) return out;
  const params = new URLSearchParams(m[2]);
  out.secret = (params.get('secret') || '').toUpperCase();
  let label = m[1];
  try {
    label = decodeURIComponent(label);
  } catch {
    // keep it as it came
  }
  const colon = label.indexOf(':');
  out.issuer = params.get('issuer') || (colon > 0 ? label.slice(0, colon) : 'Latchkey');
  out.account = colon >= 0 ? label.slice(colon + 1) : label;
  return out;
}

/** "JBSW Y3DP EHPK 3PXP". */
export function groupKey(secret) {
  return (secret.match(/.{1,4}/g) || []).join(' ');
}

/** The server's QR SVG as a DOM node (parsed, never injected as markup). */
export function qrCode(svgText, label) {
  const box = h('div', { class: 'qr' });
  const doc = new DOMParser().parseFromString(String(svgText || ''), 'image/svg+xml');
  const svg = doc.documentElement;
  if (!svg || svg.localName !== 'svg' || doc.getElementsByTagName('parsererror').length) {
    box.append(h('span', { class: 'qr-missing' }, 'The QR code could not be shown: enter the key by hand.'));
    return box;
  }
  // Our own server made it, but keep it inert all the same.
  for (const bad of svg.querySelectorAll('script, foreignObject, a, use, image')) bad.remove();
  for (const el of [svg, ...svg.querySelectorAll('*')]) {
    for (const attr of [...el.attributes]) {
      if (/^on/i.test(attr.name) || attr.name === 'style' || /href$/i.test(attr.name)) el.removeAttribute(attr.name);
    }
  }
  const node = document.importNode(svg, true);
  node.setAttribute('role', 'img');
  node.setAttribute('aria-label', label);
  node.setAttribute('focusable', 'false');
  box.append(node);
  return box;
}

/** QR code, the key for manual entry, and what the app will show. */
export function enrollmentBlock(enrollment) {
  const { secret, issuer, account } = parseOtpauth(enrollment.otpauth_uri);
  const keyText = groupKey(secret);
  return h(
    'div',
    { class: 'enroll' },
    qrCode(enrollment.qr_svg, `QR code to add ${issuer} (${account}) to an authenticator app`),
    h(
      'div',
      { class: 'enroll-manual' },
      h(
        'p',
        {},
        'Scan the QR code with an authenticator app (for example Aegis, 2FAS, Google Authenticator, 1Password or Bitwarden). ',
        'No camera? Add the account by hand with this key:',
      ),
      h('p', { class: 'totp-key mono', 'aria-label': `Key for manual entry: ${keyText}` }, keyText),
      h('div', { class: 'row' }, copyButton(() => secret, 'Copy key')),
      h(
        'dl',
        { class: 'facts' },
        h('dt', {}, 'Issuer'),
        h('dd', {}, issuer),
        h('dt', {}, 'Account'),
        h('dd', {}, account),
        h('dt', {}, 'Type'),
        h('dd', {}, 'Time-based, 6 digits, every 30 seconds'),
      ),
    ),
  );
}

// ---- recovery codes --------------------------------------------------------

/**
 * Recovery codes, shown once: the list, "Copy codes", "Download codes", the
 * "I have saved my recovery codes" box and a `doneLabel` button enabled once
 * it is ticked; `onDone()` runs when that is pressed.
 */
export function recoveryCodesBlock(codes, { username, doneLabel, onDone }) {
  const text = () =>
    [
      `Latchkey recovery codes${username ? ` for ${username}` : ''}`,
      `Created ${new Date().toLocaleString()}`,
      'Each code signs you in once, in place of a code from your authenticator app.',
      'Keep them somewhere safe and offline.',
      '',
      ...codes,
      '',
    ].join('\n');
  const saved = field({ type: 'checkbox', label: 'I have saved my recovery codes', name: 'saved' });
  const done = h('button', { type: 'button', class: 'primary', disabled: true }, doneLabel);
  saved.control.addEventListener('change', () => {
    done.disabled = !saved.control.checked;
  });
  done.addEventListener('click', async () => {
    done.disabled = true;
    try {
      await onDone();
    } finally {
      if (done.isConnected) done.disabled = !saved.control.checked;
    }
  });
  const download = h('button', { type: 'button', class: 'secondary' }, 'Download codes');
  download.addEventListener('click', () => downloadText('latchkey-recovery-codes.txt', text()));
  const listId = nextId('codes');
  return h(
    'div',
    { class: 'recovery' },
    message(
      'warn',
      'These recovery codes are shown only now. Each one signs you in once if you lose your authenticator app. Save them somewhere safe, away from this device.',
    ),
    h('ul', { class: 'codes', id: listId, 'aria-label': 'Recovery codes' }, codes.map((c) => h('li', {}, c))),
    h('div', { class: 'actions' }, copyButton(() => codes.join('\n'), 'Copy codes'), download),
    h('div', { class: 'saved-check' }, saved),
    h('div', { class: 'actions' }, done),
  );
}

// ---- the second sign-in step ---------------------------------------------

/**
 * After POST /api/auth/login answered `mfa_required`: asks for a TOTP code
 * or a recovery code (or, with `enroll`, sets up the authenticator first)
 * inside `box`, then signs in. `restart(msg)` goes back to the password step.
 */
export function secondFactor(box, ctx, res, { username, next, restart }) {
  const ticket = res.ticket;
  const finish = async (answer) => {
    const codes = (answer && answer.recovery_codes) || [];
    if (!codes.length) {
      await ctx.signedIn(next);
      return;
    }
    const heading = h('h2', { tabindex: '-1' }, 'Save your recovery codes');
    replace(
      box,
      heading,
      recoveryCodesBlock(codes, { username, doneLabel: 'Continue to Latchkey', onDone: () => ctx.signedIn(next) }),
    );
    heading.focus();
  };

  const onError = (err, slot) => {
    if (err.code === 'invalid_ticket' || err.code === 'invalid_credentials') {
      restart(sentence(explain(err)));
      return true;
    }
    if (err.code === 'invalid_code' || err.code === 'code_replayed') {
      const input = [...box.querySelectorAll('input[name="code"], input[name="recovery_code"]')].find(
        (i) => !i.closest('[hidden]'),
      );
      if (input) {
        input.value = '';
        input.setAttribute('aria-invalid', 'true');
        input.focus();
      }
      slot.replaceChildren(errorMessage(err));
      return true;
    }
    return false;
  };

  if (res.enroll && res.enrollment) {
    const code = codeField();
    const form = h(
      'form',
      {},
      h('h2', {}, 'Set up your authenticator app'),
      h(
        'p',
        {},
        'Your account needs a second factor before you can sign in: administrators always use an authenticator app.',
      ),
      enrollmentBlock(res.enrollment),
      code,
      h(
        'div',
        { class: 'actions' },
        h('button', { type: 'submit', class: 'primary' }, 'Verify'),
        h('button', { type: 'button', class: 'secondary', onclick: () => restart('') }, 'Start over'),
      ),
    );
    wireForm(
      form,
      async () => {
        const answer = await api('POST', '/api/auth/mfa', { ticket, code: readCode(code.control) });
        await finish(answer);
      },
      { onError },
    );
    replace(box, form);
    code.control.focus();
    return;
  }

  let recovery = false;
  const code = codeField();
  const rc = field({
    label: 'Recovery code',
    name: 'recovery_code',
    autocomplete: 'one-time-code',
    autocapitalize: 'none',
    spellcheck: 'false',
    maxlength: 32,
    required: true,
    hint: 'One of the codes you saved when you set up your authenticator, like abcde-12345. Each works once.',
  });
  rc.hidden = true;
  const intro = h('p', {}, `Signing in as ${username}. Enter the code your authenticator app shows for Latchkey.`);
  const toggle = h('button', { type: 'button', class: 'link' }, 'Use a recovery code instead');
  toggle.addEventListener('click', () => {
    recovery = !recovery;
    code.hidden = recovery;
    rc.hidden = !recovery;
    toggle.textContent = recovery ? 'Use your authenticator app instead' : 'Use a recovery code instead';
    intro.textContent = recovery
      ? `Signing in as ${username}. Enter one of your recovery codes.`
      : `Signing in as ${username}. Enter the code your authenticator app shows for Latchkey.`;
    form.querySelector('.form-msg').replaceChildren();
    (recovery ? rc : code).control.focus();
  });
  const form = h(
    'form',
    {},
    h('h2', {}, 'Second step'),
    intro,
    code,
    rc,
    h(
      'div',
      { class: 'actions spread' },
      h('button', { type: 'submit', class: 'primary' }, 'Verify'),
      toggle,
    ),
  );
  const startOver = h(
    'p',
    { class: 'start-over' },
    h('button', { type: 'button', class: 'link', onclick: () => restart('') }, 'Start over with another account'),
  );
  wireForm(
    form,
    async () => {
      let body;
      if (recovery) {
        const v = rc.control.value.trim();
        if (!v) {
          rc.control.setAttribute('aria-invalid', 'true');
          rc.control.focus();
          throw problem('Enter one of your recovery codes.');
        }
        body = { ticket, recovery_code: v };
      } else {
        body = { ticket, code: readCode(code.control) };
      }
      const answer = await api('POST', '/api/auth/mfa', body);
      await finish(answer);
    },
    { onError },
  );
  replace(box, form, startOver);
  code.control.focus();
}
