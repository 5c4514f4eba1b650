// API keys: what programs and agents use instead of a password. A new key
// is shown once (only its hash is stored); per-key proxy limits; revoking.

import { api } from '../lib/api.js';
import { h, replace, field, message, onSubmit, copyButton, fmtTime, fmtRelative, fmtNumber, confirmDialog, modal, nextId } from '../lib/dom.js';
import { explain } from '../lib/errors.js';
import { withReauth } from '../lib/reauth.js';

export const title = 'API keys';

// Providers are configured on the server and not listed by the API: offer
// the common presets; "Other scopes" covers the rest.
const PROVIDERS = ['openai', 'anthropic', 'gemini', 'mistral', 'groq', 'openrouter'];
const EXPIRY = [
  { value: '', label: 'Never' },
  { value: '7', label: '7 days' },
  { value: '30', label: '30 days' },
  { value: '90', label: '90 days', selected: true },
  { value: '365', label: '1 year' },
];
const SCOPE_HINTS = {
  'proxy:*': 'every configured provider',
  'connections:*': 'read your connections’ tokens',
  'vault:read:*': 'read every vault entry',
  'keys:manage': 'list and create your keys, see usage',
  admin: 'everything you can do',
};

const now = () => Math.floor(Date.now() / 1000);

function status(k) {
  if (k.revoked_at) return h('span', { class: 'badge danger' }, 'Revoked');
  if (k.expires_at && k.expires_at <= now()) return h('span', { class: 'badge warn' }, 'Expired');
  return h('span', { class: 'badge ok' }, 'Active');
}

function when(t, none) {
  if (!t) return h('span', { class: 'muted' }, none);
  return h('time', { datetime: new Date(t * 1000).toISOString(), title: fmtTime(t) }, fmtRelative(t));
}

function limitsText(l) {
  const parts = [];
  if (l && l.requests_per_minute) parts.push(`${fmtNumber(l.requests_per_minute)} req/min`);
  if (l && l.tokens_per_day) parts.push(`${fmtNumber(l.tokens_per_day)} tokens/day`);
  return parts.length ? parts.join(', ') : h('span', { class: 'muted' }, 'Server default');
}

/** "" → null; otherwise a positive whole number, or an Error naming the field. */
function readLimit(input, label) {
  const v = input.value.trim();
  if (!v) return null;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${label}: a whole number of at least 1, or empty for no limit.`);
  return n;
}

function limitFields(current = {}) {
  const rpm = field({
    label: 'Requests per minute',
    name: 'requests_per_minute',
    type: 'number',
    min: 1,
    max: 1000000,
    step: 1,
    inputmode: 'numeric',
    value: current.requests_per_minute ?? '',
    hint: 'Empty: the server’s default (proxy.key_rpm).',
  });
  const tpd = field({
    label: 'Tokens per day',
    name: 'tokens_per_day',
    type: 'number',
    min: 1,
    step: 1,
    inputmode: 'numeric',
    value: current.tokens_per_day ?? '',
    hint: 'Input + output tokens per UTC day. Empty: no budget.',
  });
  const read = () => ({
    requests_per_minute: readLimit(rpm.control, 'Requests per minute'),
    tokens_per_day: readLimit(tpd.control, 'Tokens per day'),
  });
  return { rpm, tpd, read };
}

/**
 * Lines to paste into a shell so an SDK goes through Latchkey. `baseUrl` is
 * where agents reach this server, as the server said when it made the key
 * (its public URL; on the desktop app the loopback proxy,
 * http://127.0.0.1:7823): this page's own address may not be it.
 */
function example(key, scopes, baseUrl) {
  const origin = (baseUrl || location.origin).replace(/\/+$/, '');
  const base = `${origin}/proxy`;
  const ca = origin.startsWith('https:') ? '--cacert ca.pem ' : '';
  const named = PROVIDERS.find((p) => scopes.includes(`proxy:${p}`));
  const proxyish = scopes.some((s) => s.startsWith('proxy:') || s === 'admin');
  if (!proxyish) {
    return `curl ${ca}-H "Authorization: Bearer ${key}" ${origin}/api/auth/me`;
  }
  if (named === 'anthropic') {
    return `export ANTHROPIC_BASE_URL=${base}/anthropic\nexport ANTHROPIC_API_KEY=${key}`;
  }
  if (named === 'gemini') {
    return `# Gemini SDKs: base URL ${base}/gemini\nexport GEMINI_API_KEY=${key}`;
  }
  return `export OPENAI_BASE_URL=${base}/${named || 'openai'}/v1\nexport OPENAI_API_KEY=${key}`;
}

export async function render(main, ctx) {
  const flash = h('div', { 'aria-live': 'polite' });
  const createButton = h('button', { type: 'button', class: 'primary' }, 'Create key');
  const formSlot = h('div');
  const newKeySlot = h('div');
  const list = h('div', { 'aria-busy': 'true' }, h('p', { class: 'muted' }, 'Loading…'));
  const allBox = ctx.isAdmin ? field({ label: 'Show everyone’s keys', name: 'all', type: 'checkbox' }) : null;
  let keys = [];
  const say = (kind, text) => replace(flash, message(kind, text));

  replace(
    main,
    h('div', { class: 'spread screen-head' }, h('h1', {}, 'API keys'), createButton),
    h(
      'p',
      { class: 'muted' },
      'Keys let programs and agents use Latchkey without your password: call a provider through the proxy, read a connection’s token, or a vault entry. A key can only do what its scopes name, never more than your role allows, and you can revoke it at any time.',
    ),
    flash,
    newKeySlot,
    formSlot,
    allBox ? h('div', { class: 'row' }, allBox) : null,
    list,
  );

  // ---------- Create ----------
  function scopeBox(scope) {
    const id = nextId('scope');
    const hint = SCOPE_HINTS[scope];
    return h(
      'div',
      { class: 'field checkbox' },
      h('input', { type: 'checkbox', id, name: 'scope', value: scope, 'aria-describedby': hint ? `${id}-hint` : null }),
      h('label', { for: id, class: 'mono' }, scope),
      hint ? h('span', { class: 'hint', id: `${id}-hint` }, hint) : null,
    );
  }

  function openCreateForm() {
    const name = field({
      label: 'Name',
      name: 'name',
      required: true,
      maxlength: 64,
      autocomplete: 'off',
      hint: 'What uses it, e.g. “laptop agent” or “CI”.',
    });
    const role = ctx.me && ctx.me.role;
    const other = ['connections:*', 'vault:read:*', 'keys:manage'].filter(
      (s) => !(s === 'connections:*' && role === 'guest') && !(s === 'vault:read:*' && !ctx.isAdmin),
    );
    if (ctx.isAdmin) other.push('admin');
    const otherScopes = field({
      label: 'Other scopes',
      name: 'other_scopes',
      autocomplete: 'off',
      spellcheck: 'false',
      hint: 'Space or comma separated, e.g. proxy:ollama agent:notes vault:read:openai-main',
    });
    const expires = field({ label: 'Expires', name: 'expires', type: 'select', options: EXPIRY });
    const limits = limitFields();
    const cancel = h('button', { type: 'button', class: 'secondary' }, 'Cancel');
    const form = h(
      'form',
      { class: 'card', 'aria-labelledby': 'key-create-title' },
      h('h2', { id: 'key-create-title' }, 'Create a key'),
      h('div', { class: 'inline-fields' }, name, expires),
      h(
        'fieldset',
        {},
        h('legend', {}, 'Agent proxy'),
        h('div', { class: 'scope-grid' }, ['proxy:*', ...PROVIDERS.map((p) => `proxy:${p}`)].map(scopeBox)),
        h('p', { class: 'hint' }, 'Only providers configured on this server answer; others reply “unknown provider”.'),
      ),
      h('fieldset', {}, h('legend', {}, 'Other access'), h('div', { class: 'scope-grid' }, other.map(scopeBox)), otherScopes),
      h('fieldset', {}, h('legend', {}, 'Limits (optional)'), h('div', { class: 'inline-fields' }, limits.rpm, limits.tpd)),
      h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Create'), cancel),
    );
    const close = () => {
      formSlot.replaceChildren();
      createButton.hidden = false;
      createButton.focus();
    };
    cancel.addEventListener('click', close);
    onSubmit(
      form,
      async () => {
        const scopes = [...form.querySelectorAll('input[name="scope"]:checked')].map((i) => i.value);
        for (const s of otherScopes.control.value.split(/[\s,]+/)) {
          if (s && !scopes.includes(s)) scopes.push(s);
        }
        if (!scopes.length) throw new Error('Choose at least one scope: without one the key could do nothing.');
        const body = { name: name.control.value.trim(), scopes };
        const days = expires.control.value;
        if (days) body.expires_at = now() + Number(days) * 86400;
        const l = limits.read();
        if (l.requests_per_minute || l.tokens_per_day) body.limits = l;
        const created = await withReauth(
          ctx.me,
          () => api('POST', '/api/keys', body),
          'A key that reaches secrets (admin, vault or connections scopes) needs a fresh confirmation that it is you.',
        );
        if (!created) return; // re-auth cancelled
        formSlot.replaceChildren();
        createButton.hidden = false;
        showNewKey(created);
        await load();
      },
      (err) => (err.code === 'scope_exceeds_role' ? `${explain(err)}. Leave that scope out.` : explain(err)),
    );
    createButton.hidden = true;
    newKeySlot.replaceChildren();
    replace(flash);
    replace(formSlot, form);
    name.control.focus();
  }
  createButton.addEventListener('click', openCreateForm);

  function showNewKey(created) {
    let key = created.key;
    const titleId = nextId('newkey');
    const box = h('div', { class: 'secret-once', 'aria-label': 'New API key' }, key);
    const sample = h('pre', { class: 'example', tabindex: 0 }, h('code', {}, example(key, created.scopes, created.base_url)));
    const https = (created.base_url || location.origin).startsWith('https:');
    const done = h('button', { type: 'button', class: 'primary' }, 'Done');
    const card = h(
      'section',
      { class: 'card', 'aria-labelledby': titleId },
      h('h2', { id: titleId }, `Your new key “${created.name}”`),
      h(
        'p',
        { class: 'msg warn', role: 'status' },
        'Copy it now. Latchkey keeps only a hash of it and cannot show it again.',
      ),
      box,
      h('div', { class: 'actions' }, copyButton(() => key || ''), done),
      h('h3', {}, 'Use it'),
      h('p', {}, 'Point your SDK or agent at Latchkey instead of the provider:'),
      sample,
      https
        ? h(
            'p',
            { class: 'hint' },
            'If your browser warned about this site’s certificate, give the SDK Latchkey’s CA too (DATA_DIR/tls/ca.pem, or `latchkey tls export-ca`).',
          )
        : null,
    );
    done.addEventListener('click', () => {
      key = null;
      box.textContent = '';
      sample.textContent = '';
      card.remove();
      say('ok', `Key “${created.name}” is ready. It is listed below; its value is not.`);
      createButton.focus();
    });
    replace(newKeySlot, card);
    replace(flash);
    done.focus();
  }

  // ---------- Limits ----------
  async function editLimits(k) {
    replace(flash);
    const saved = await modal(`Limits for “${k.name}”`, (close) => {
      const limits = limitFields(k.limits || {});
      const form = h(
        'form',
        {},
        h('p', { class: 'hint' }, 'Effective on the key’s next request. Empty a field to remove that limit.'),
        limits.rpm,
        limits.tpd,
        h(
          'div',
          { class: 'actions' },
          h('button', { type: 'submit', class: 'primary' }, 'Save'),
          h('button', { type: 'button', class: 'secondary', onclick: () => close(false) }, 'Cancel'),
        ),
      );
      onSubmit(
        form,
        async () => {
          await api('PUT', `/api/keys/${encodeURIComponent(k.id)}/limits`, limits.read());
          close(true);
        },
        explain,
      );
      setTimeout(() => limits.rpm.control.focus(), 0);
      return form;
    });
    if (saved) {
      say('ok', `Saved the limits of “${k.name}”.`);
      await load();
    }
  }

  // ---------- Revoke ----------
  async function revoke(k) {
    replace(flash);
    const ok = await confirmDialog(
      `Revoke “${k.name}”?`,
      `Every program using “${k.name}” is refused from its next request on. This cannot be undone; create a new key if one is needed again.`,
      'Revoke',
    );
    if (!ok) return;
    try {
      await api('DELETE', `/api/keys/${encodeURIComponent(k.id)}`);
      say('ok', `Revoked “${k.name}”.`);
    } catch (err) {
      say('error', explain(err));
    }
    await load();
  }

  // ---------- List ----------
  function draw() {
    list.removeAttribute('aria-busy');
    const all = Boolean(allBox && allBox.control.checked);
    if (!keys.length) {
      replace(
        list,
        h(
          'div',
          { class: 'empty' },
          h('p', {}, all ? 'Nobody has a key yet.' : 'You have no keys yet.'),
          h(
            'p',
            {},
            'Create one for each program or agent, with only the scopes it needs, e.g. proxy:openai for a coding agent. Revoking one key then leaves the others working.',
          ),
        ),
      );
      return;
    }
    const cols = ['Name', all ? 'Owner' : null, 'Scopes', 'Created', 'Expires', 'Last used', 'Limits', 'Status', 'Actions'].filter(Boolean);
    const rows = keys.map((k) => {
      const nameId = nextId('key');
      const live = !k.revoked_at;
      const cells = {
        Name: h('strong', { id: nameId }, k.name),
        Owner: k.owner,
        Scopes: h('span', { class: 'row' }, k.scopes.map((s) => h('code', { class: 'badge' }, s))),
        Created: when(k.created_at, '—'),
        Expires: k.expires_at ? when(k.expires_at, '') : h('span', { class: 'muted' }, 'Never'),
        'Last used': when(k.last_used_at, 'Never'),
        Limits: limitsText(k.limits),
        Status: status(k),
        Actions: live
          ? h(
              'div',
              { class: 'row nowrap' },
              h('button', { type: 'button', class: 'secondary small', 'aria-describedby': nameId, onclick: () => editLimits(k) }, 'Limits'),
              h('button', { type: 'button', class: 'danger small', 'aria-describedby': nameId, onclick: () => revoke(k) }, 'Revoke'),
            )
          : h('span', { class: 'muted' }, '—'),
      };
      return h('tr', { class: live ? null : 'revoked' }, cols.map((c) => h('td', { 'data-label': c }, cells[c])));
    });
    replace(
      list,
      h(
        'div',
        { class: 'table-wrap' },
        h(
          'table',
          {},
          h('caption', {}, all ? `Everyone’s keys (${keys.length})` : `Your keys (${keys.length})`),
          h('thead', {}, h('tr', {}, cols.map((c) => h('th', { scope: 'col' }, c)))),
          h('tbody', {}, rows),
        ),
      ),
    );
  }

  async function load() {
    const all = Boolean(allBox && allBox.control.checked);
    try {
      keys = await api('GET', all ? '/api/keys?all=true' : '/api/keys');
      // Live keys first, newest first (the server's order) within each group.
      keys.sort((a, b) => Number(Boolean(a.revoked_at)) - Number(Boolean(b.revoked_at)));
      draw();
    } catch (err) {
      list.removeAttribute('aria-busy');
      replace(list, message('error', explain(err)));
    }
  }
  if (allBox) allBox.control.addEventListener('change', load);

  await load();
}
