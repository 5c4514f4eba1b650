// Vault (admins): the household's secrets. Lists metadata only; a value is
// shown after a fresh re-authentication (audited as vault.reveal), in a box
// that empties itself after a minute, on "Hide" or when the screen changes.

import { api } from '../lib/api.js';
import { h, replace, field, message, onSubmit, copyButton, fmtTime, fmtRelative, confirmDialog, modal, nextId } from '../lib/dom.js';
import { explain } from '../lib/errors.js';
import { withReauth } from '../lib/reauth.js';

export const title = 'Vault';

const KINDS = [
  { value: 'api_key', label: 'api_key' },
  { value: 'oauth_token', label: 'oauth_token' },
  { value: 'generic', label: 'generic' },
];
const REVEAL_SECONDS = 60;

/** "env=prod\nteam = ml" → {env: "prod", team: "ml"}; throws on a bad line. */
function parseLabels(text) {
  const labels = {};
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (!line) return;
    const eq = line.indexOf('=');
    if (eq <= 0) throw new Error(`Labels, line ${i + 1}: write each label as key=value.`);
    labels[line.slice(0, eq).trim()] = line.slice(eq + 1).trim();
  });
  return labels;
}

function timeCell(t, never = 'Never') {
  if (!t) return h('span', { class: 'muted' }, never);
  return h('time', { datetime: String(t), title: fmtTime(t) }, fmtRelative(t));
}

export async function render(main, ctx) {
  const sealedBanner = h(
    'div',
    { class: 'msg warn', role: 'status', hidden: true },
    h('strong', {}, 'The vault is sealed. '),
    'Names and details are listed, but no value can be added, replaced or revealed until it is unsealed. ',
    h('a', { href: '/' }, 'Unseal it on the Home screen'),
    '.',
  );
  const flash = h('div', { 'aria-live': 'polite' });
  const addButton = h('button', { type: 'button', class: 'primary' }, 'Add entry');
  const formSlot = h('div');
  const revealSlot = h('div');
  const list = h('div', { 'aria-busy': 'true' }, h('p', { class: 'muted' }, 'Loading…'));
  let entries = [];
  let stopReveal = () => {};
  let emptyAdd = null; // the empty state's own "add" button

  const showSealed = () => {
    sealedBanner.hidden = false;
  };
  // A 423 anywhere means sealed: say so where it is seen, with the way out.
  const explainHere = (err) => {
    if (err && err.code === 'vault_sealed') showSealed();
    return explain(err);
  };
  const say = (kind, text) => replace(flash, message(kind, text));

  replace(
    main,
    h('div', { class: 'spread screen-head' }, h('h1', {}, 'Vault'), addButton),
    h(
      'p',
      { class: 'muted' },
      'Secrets Latchkey keeps encrypted for this household: provider API keys the proxy adds to requests, OAuth client secrets, anything an agent needs. Values never leave the server unless an administrator reveals one.',
    ),
    sealedBanner,
    flash,
    formSlot,
    revealSlot,
    list,
  );

  // ---------- Add ----------
  function openAddForm() {
    const name = field({
      label: 'Name',
      name: 'name',
      required: true,
      maxlength: 128,
      autocomplete: 'off',
      spellcheck: 'false',
      hint: 'Letters, digits, ".", "_" and "-", e.g. openai-main. This is what a provider\'s `secret` setting names.',
    });
    const kind = field({ label: 'Kind', name: 'kind', type: 'select', options: KINDS });
    const provider = field({
      label: 'Provider',
      name: 'provider',
      autocomplete: 'off',
      spellcheck: 'false',
      hint: 'Optional, e.g. openai or anthropic.',
    });
    const secret = field({
      label: 'Secret value',
      name: 'secret',
      type: 'textarea',
      required: true,
      rows: 3,
      autocomplete: 'off',
      spellcheck: 'false',
      autocapitalize: 'off',
      hint: 'Stored encrypted. Latchkey never shows it again unless an administrator reveals it.',
    });
    const labels = field({
      label: 'Labels (optional)',
      name: 'labels',
      type: 'textarea',
      rows: 2,
      spellcheck: 'false',
      placeholder: 'env=prod',
      hint: 'One key=value per line.',
    });
    const cancel = h('button', { type: 'button', class: 'secondary' }, 'Cancel');
    const form = h(
      'form',
      { class: 'card', 'aria-labelledby': 'vault-add-title' },
      h('h2', { id: 'vault-add-title' }, 'Add an entry'),
      h('div', { class: 'inline-fields' }, name, kind, provider),
      secret,
      labels,
      h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Save'), cancel),
    );
    const close = () => {
      secret.control.value = '';
      formSlot.replaceChildren();
      addButton.hidden = false;
      if (emptyAdd) emptyAdd.hidden = false;
      addButton.focus();
    };
    cancel.addEventListener('click', close);
    onSubmit(
      form,
      async () => {
        const body = {
          name: name.control.value.trim(),
          kind: kind.control.value,
          secret: secret.control.value,
          labels: parseLabels(labels.control.value),
        };
        const p = provider.control.value.trim();
        if (p) body.provider = p;
        if (entries.some((e) => e.name === body.name)) {
          throw new Error(`An entry named “${body.name}” exists already. Use its Replace button to give it a new value.`);
        }
        // Storing a value changes what agents are given: like revealing
        // one, it needs a fresh confirmation.
        const saved = await withReauth(
          ctx.me,
          () => api('POST', '/api/vault', body),
          'Storing a secret needs a fresh confirmation.',
        );
        if (!saved) return;
        secret.control.value = '';
        formSlot.replaceChildren();
        addButton.hidden = false;
        say('ok', `Saved “${saved.name}”.`);
        await load();
      },
      explainHere,
    );
    addButton.hidden = true;
    if (emptyAdd) emptyAdd.hidden = true;
    replace(flash);
    replace(formSlot, form);
    name.control.focus();
  }
  addButton.addEventListener('click', openAddForm);

  // ---------- Replace ----------
  async function replaceValue(entry) {
    replace(flash);
    const done = await modal(`Replace the value of “${entry.name}”`, (close) => {
      const secret = field({
        label: 'New secret value',
        name: 'secret',
        type: 'textarea',
        required: true,
        rows: 3,
        autocomplete: 'off',
        spellcheck: 'false',
        autocapitalize: 'off',
        hint: 'Kind, provider and labels stay as they are. The old value is gone once you save.',
      });
      const form = h(
        'form',
        {},
        secret,
        h(
          'div',
          { class: 'actions' },
          h('button', { type: 'submit', class: 'primary' }, 'Replace'),
          h('button', { type: 'button', class: 'secondary', onclick: () => close(false) }, 'Cancel'),
        ),
      );
      onSubmit(
        form,
        async () => {
          const body = {
            name: entry.name,
            kind: entry.kind,
            secret: secret.control.value,
            labels: entry.labels || {},
            replace: true,
          };
          if (entry.provider) body.provider = entry.provider;
          const saved = await withReauth(
            ctx.me,
            () => api('POST', '/api/vault', body),
            'Replacing a secret needs a fresh confirmation.',
          );
          if (!saved) return;
          secret.control.value = '';
          close(true);
        },
        explainHere,
      );
      setTimeout(() => secret.control.focus(), 0);
      return form;
    });
    if (done) {
      say('ok', `Replaced the value of “${entry.name}”.`);
      await load();
    }
  }

  // ---------- Delete ----------
  async function remove(entry) {
    replace(flash);
    const ok = await confirmDialog(
      `Delete “${entry.name}”?`,
      `The value of “${entry.name}” is destroyed. Anything that uses it (a provider's secret, an agent, a connection's client secret) stops working. This cannot be undone.`,
      'Delete',
    );
    if (!ok) return;
    try {
      await api('DELETE', `/api/vault/${encodeURIComponent(entry.name)}`);
      say('ok', `Deleted “${entry.name}”.`);
    } catch (err) {
      say('error', explainHere(err));
    }
    await load();
  }

  // ---------- Reveal ----------
  async function reveal(entry) {
    replace(flash);
    let result;
    try {
      result = await withReauth(
        ctx.me,
        () => api('POST', `/api/vault/${encodeURIComponent(entry.name)}/reveal`),
        `Revealing “${entry.name}” needs a fresh confirmation. It is recorded in the audit log.`,
      );
    } catch (err) {
      say('error', explainHere(err));
      return;
    }
    if (!result) return; // cancelled
    showValue(entry.name, result.value);
    load(); // last used changed
  }

  function showValue(name, initial) {
    stopReveal();
    let value = initial;
    let left = REVEAL_SECONDS;
    const titleId = nextId('reveal');
    const box = h('div', { class: 'secret-once', 'aria-label': `Value of ${name}` }, value);
    const countdown = h('p', { class: 'hint' });
    const hide = h('button', { type: 'button', class: 'secondary' }, 'Hide');
    const card = h(
      'section',
      { class: 'card', 'aria-labelledby': titleId },
      h('h2', { id: titleId }, `Value of “${name}”`),
      box,
      countdown,
      h('div', { class: 'actions' }, copyButton(() => value || ''), hide),
    );
    const tick = () => {
      countdown.textContent = `Hidden again in ${left} s. This reveal is recorded in the audit log.`;
    };
    const timer = setInterval(() => {
      left -= 1;
      // Gone from the page (another screen): drop the value now.
      if (left <= 0 || !card.isConnected) stop();
      else tick();
    }, 1000);
    function stop() {
      clearInterval(timer);
      value = null;
      box.textContent = '';
      card.remove();
      window.removeEventListener('popstate', stop);
      window.removeEventListener('pagehide', stop);
      stopReveal = () => {};
    }
    stopReveal = stop;
    hide.addEventListener('click', () => {
      stop();
      say('info', `The value of “${name}” is hidden.`);
    });
    window.addEventListener('popstate', stop);
    window.addEventListener('pagehide', stop);
    tick();
    replace(revealSlot, card);
    hide.focus();
  }

  // ---------- List ----------
  function rowActions(entry, nameId) {
    const btn = (label, cls, fn) =>
      h('button', { type: 'button', class: `${cls} small`, 'aria-describedby': nameId, onclick: () => fn(entry) }, label);
    return h(
      'div',
      { class: 'row nowrap' },
      btn('Reveal', 'secondary', reveal),
      btn('Replace', 'secondary', replaceValue),
      btn('Delete', 'danger', remove),
    );
  }

  function draw() {
    list.removeAttribute('aria-busy');
    emptyAdd = null;
    if (!entries.length) {
      const add = h('button', { type: 'button', class: 'primary', hidden: formSlot.childElementCount > 0 }, 'Add the first entry');
      add.addEventListener('click', openAddForm);
      emptyAdd = add;
      replace(
        list,
        h(
          'div',
          { class: 'empty' },
          h('p', {}, 'The vault is empty.'),
          h(
            'p',
            {},
            'Store a provider\'s API key here (for example an OpenAI key named openai-main) and name it as that provider\'s `secret` in the configuration: agents then call Latchkey with their own lk_ keys, and the real key never leaves this machine.',
          ),
          add,
        ),
      );
      return;
    }
    const rows = entries.map((e) => {
      const nameId = nextId('entry');
      const labels = Object.entries(e.labels || {});
      return h(
        'tr',
        {},
        h('td', { 'data-label': 'Name' }, h('strong', { id: nameId, class: 'mono' }, e.name)),
        h('td', { 'data-label': 'Kind' }, e.kind),
        h('td', { 'data-label': 'Provider' }, e.provider || h('span', { class: 'muted' }, '—')),
        h(
          'td',
          { 'data-label': 'Labels' },
          labels.length
            ? h('span', { class: 'row' }, labels.map(([k, v]) => h('span', { class: 'badge' }, `${k}=${v}`)))
            : h('span', { class: 'muted' }, '—'),
        ),
        h('td', { 'data-label': 'Updated' }, timeCell(e.updated_at)),
        h('td', { 'data-label': 'Last used' }, timeCell(e.last_used_at)),
        h('td', { 'data-label': 'Actions' }, rowActions(e, nameId)),
      );
    });
    replace(
      list,
      h(
        'div',
        { class: 'table-wrap' },
        h(
          'table',
          {},
          h('caption', {}, `Vault entries (${entries.length})`),
          h(
            'thead',
            {},
            h('tr', {}, ['Name', 'Kind', 'Provider', 'Labels', 'Updated', 'Last used', 'Actions'].map((c) => h('th', { scope: 'col' }, c))),
          ),
          h('tbody', {}, rows),
        ),
      ),
    );
  }

  async function load() {
    try {
      entries = await api('GET', '/api/vault');
      draw();
    } catch (err) {
      list.removeAttribute('aria-busy');
      replace(list, message('error', explainHere(err)));
    }
  }

  // Sealed or not: metadata is readable either way, so ask up front.
  const status = api('GET', '/api/status').then(
    (s) => s && s.sealed && showSealed(),
    () => {},
  );
  await Promise.all([load(), status]);
}
