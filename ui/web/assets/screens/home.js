// Home: is the vault sealed (and the way to unseal it), the certificate a
// browser must trust, connections that need the user, today's usage, and a
// first-run checklist until the basics are done. Each card loads on its
// own, so one failing request never blanks the screen.

import { api, withQuery } from '../lib/api.js';
import { h, replace, field, message, onSubmit, copyButton, fmtTime, fmtRelative, fmtNumber, confirmDialog, nextId } from '../lib/dom.js';
import { explain } from '../lib/errors.js';
import { attentionOf, providerLabel } from './connections-common.js';

export const title = 'Home';

/** Certificates closer than this to expiry are flagged. */
const CERT_WARN_DAYS = 30;

function card(heading, ...body) {
  const id = nextId('card');
  return h('section', { class: 'card', 'aria-labelledby': id }, h('h2', { id }, heading), ...body);
}

function loading() {
  return h('p', { class: 'muted' }, 'Loading…');
}

function when(t) {
  if (!t) return h('span', { class: 'muted' }, '—');
  return h('time', { datetime: String(t), title: fmtTime(t) }, fmtTime(t), ' (', fmtRelative(t), ')');
}

function daysUntil(t) {
  const ms = typeof t === 'number' ? t * 1000 : Date.parse(t);
  return Number.isNaN(ms) ? Infinity : (ms - Date.now()) / 86400000;
}

/** A definition list of [term, value] pairs (`.facts`). */
/** The update channel's state (GET /api/status `update`), as one fact row. */
function updateFact(u) {
  if (!u) return null;
  const last = u.last_install;
  let v;
  if (u.available) {
    v = h('span', {}, h('span', { class: 'badge warn' }, 'Update available'), ' ', `${u.latest} (running ${u.current}). Install it with `, h('code', {}, 'latchkey update'), ' on the server.');
  } else if (last && last.outcome !== 'installed') {
    v = h('span', {}, h('span', { class: 'badge danger' }, last.outcome === 'failed' ? 'Update failed' : 'Update rolled back'), ` ${last.to}: ${last.reason || ''}`);
  } else if (u.error) {
    v = h('span', {}, h('span', { class: 'badge warn' }, 'Check failed'), ` ${u.error}`);
  } else if (u.checked_at) {
    v = h('span', {}, h('span', { class: 'badge ok' }, 'Up to date'), ' checked ', when(u.checked_at));
  } else if (!u.feed_configured) {
    v = h('span', { class: 'muted' }, 'No update feed configured (update.feed)');
  } else {
    v = h('span', { class: 'muted' }, 'Not checked yet');
  }
  return ['Updates', v];
}

function facts(pairs) {
  return h(
    'dl',
    { class: 'facts stacked' },
    pairs.filter(Boolean).flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]),
  );
}

export async function render(main, ctx) {
  const flash = h('div', { 'aria-live': 'polite' });
  const vaultBody = h('div', {}, loading());
  const certBody = h('div', {}, loading());
  const attentionBody = h('div', {}, loading());
  const usageBody = h('div', {}, loading());
  const checklist = h('div');
  const attentionCard = card('Connections', attentionBody);
  const usageCard = card('Usage today', usageBody);

  replace(
    main,
    h('h1', {}, 'Home'),
    flash,
    checklist,
    h(
      'div',
      { class: 'grid home-grid' },
      card('Vault', vaultBody),
      attentionCard,
      usageCard,
      card(ctx.isAdmin ? 'Certificate and version' : 'Certificate', certBody),
    ),
  );

  // Back from a provider: say so once, then drop the query so a reload
  // does not repeat it.
  const connected = ctx.params.get('connected');
  if (connected) {
    replace(flash, message('ok', `Connected ${providerLabel(connected)}. Your agents can now get its tokens from Latchkey.`));
    history.replaceState(null, '', '/');
  }

  let status = null; // GET /api/status (admins)
  let connections = null; // own connections, or null if not allowed
  let keys = null;
  let vaultEntries = null;

  const loadStatus = async () => {
    if (!ctx.isAdmin) return null;
    try {
      status = await api('GET', '/api/status');
    } catch (err) {
      status = { error: err };
    }
    return status;
  };

  // ---------- Vault ----------
  async function drawVault() {
    replace(vaultBody, loading());
    if (!ctx.isAdmin) {
      // GET /api/setup is public and says whether the vault is sealed
      // (a 200 either way, unlike /ready's 503).
      let sealed = null;
      try {
        const data = await api('GET', '/api/setup');
        sealed = typeof data.sealed === 'boolean' ? data.sealed : null;
      } catch {
        sealed = null;
      }
      replace(
        vaultBody,
        sealed === null
          ? h('p', { class: 'muted' }, 'The vault state could not be read.')
          : sealed
            ? [
                h('p', {}, h('span', { class: 'badge danger' }, 'Sealed')),
                h('p', {}, 'Agents cannot use provider keys or connections until an administrator unseals the vault.'),
              ]
            : [h('p', {}, h('span', { class: 'badge ok' }, 'Unsealed')), h('p', { class: 'muted' }, 'Secrets are available to the proxy and the broker.')],
      );
      return;
    }
    await loadStatus();
    if (!status || status.error) {
      replace(vaultBody, message('error', explain(status && status.error)));
      return;
    }
    const mode = status.master_key_source;
    const parts = [
      h(
        'p',
        { class: 'row' },
        status.sealed ? h('span', { class: 'badge danger' }, 'Sealed') : h('span', { class: 'badge ok' }, 'Unsealed'),
        h('span', { class: 'muted' }, `Master key: ${mode}`),
      ),
    ];
    const slot = h('div', { 'aria-live': 'polite' });
    if (status.sealed && !status.initialized && mode === 'passphrase') {
      parts.push(
        h('p', {}, 'This vault has no passphrase yet. Set one on the server with ', h('code', {}, 'latchkey vault init'), '.'),
      );
    } else if (status.sealed && mode === 'passphrase') {
      parts.push(h('p', {}, 'Enter the vault passphrase to unseal it. Nothing that needs a secret works until then.'));
      const pass = field({ label: 'Passphrase', name: 'passphrase', type: 'password', autocomplete: 'off', required: true });
      const form = h('form', { class: 'stack' }, pass, h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Unseal')));
      onSubmit(
        form,
        async () => {
          try {
            await api('POST', '/api/vault/unseal', { passphrase: pass.control.value });
          } finally {
            pass.control.value = '';
          }
          replace(flash, message('ok', 'The vault is unsealed.'));
          await drawVault();
        },
        (err) => (err.code === 'wrong_master_key' ? 'That passphrase is not right.' : explain(err)),
      );
      parts.push(form);
    } else if (status.sealed) {
      parts.push(h('p', {}, `Latchkey reads its ${mode} master key again to unseal.`));
      const btn = h('button', { type: 'button', class: 'primary' }, 'Unseal');
      btn.addEventListener('click', async () => {
        btn.disabled = true;
        slot.replaceChildren();
        try {
          await api('POST', '/api/vault/unseal');
          replace(flash, message('ok', 'The vault is unsealed.'));
          await drawVault();
        } catch (err) {
          slot.replaceChildren(message('error', explain(err)));
        } finally {
          btn.disabled = false;
        }
      });
      parts.push(h('div', { class: 'actions' }, btn));
    } else {
      parts.push(h('p', { class: 'muted' }, 'Secrets are available to the proxy and the broker. Sealing drops every key from memory at once, for example if you think this machine is compromised.'));
      const btn = h('button', { type: 'button', class: 'secondary' }, 'Seal now');
      btn.addEventListener('click', async () => {
        const ok = await confirmDialog(
          'Seal the vault?',
          mode === 'passphrase'
            ? 'Agents stop getting provider keys and connection tokens until someone enters the passphrase again.'
            : 'Agents stop getting provider keys and connection tokens until an administrator unseals the vault again.',
          'Seal now',
        );
        if (!ok) return;
        slot.replaceChildren();
        try {
          await api('POST', '/api/vault/seal');
          replace(flash, message('warn', 'The vault is sealed.'));
          await drawVault();
        } catch (err) {
          slot.replaceChildren(message('error', explain(err)));
        }
      });
      parts.push(h('div', { class: 'actions' }, btn));
    }
    parts.push(slot);
    replace(vaultBody, parts);
  }

  // ---------- Certificate ----------
  async function drawCert() {
    if (!ctx.isAdmin) {
      replace(
        certBody,
        h('p', {}, 'Your browser trusts this page through the Latchkey certificate authority your administrator installed.'),
        h('p', { class: 'muted' }, 'The certificate fingerprint and the version are shown to administrators.'),
      );
      return;
    }
    if (!status) await loadStatus();
    if (!status || status.error) {
      replace(certBody, message('error', explain(status && status.error)));
      return;
    }
    const tls = status.tls;
    if (!tls) {
      replace(certBody, facts([['Version', status.version], updateFact(status.update)]), h('p', { class: 'muted' }, 'No certificate information (TLS is handled outside Latchkey).'));
      return;
    }
    const server = tls.server || {};
    const days = daysUntil(server.not_after);
    const fp = tls.ca_fingerprint_sha256 || '';
    replace(
      certBody,
      facts([
        ['Version', status.version],
        updateFact(status.update),
        fp && ['CA fingerprint (SHA-256)', h('code', { class: 'fingerprint' }, fp)],
        tls.ca_not_after && ['CA expires', when(tls.ca_not_after)],
        server.not_after && [
          'Server certificate expires',
          h('span', {}, when(server.not_after), ' ', days < 0 ? h('span', { class: 'badge danger' }, 'Expired') : days < CERT_WARN_DAYS ? h('span', { class: 'badge warn' }, 'Soon') : null),
        ],
        server.names && server.names.length && ['Names', server.names.join(', ')],
        server.source && ['Certificate source', server.source],
      ]),
      fp ? h('div', { class: 'actions' }, copyButton(fp, 'Copy fingerprint')) : null,
      h('p', { class: 'hint' }, 'Compare the fingerprint with the one your device shows for the Latchkey CA before trusting it. The CA file is ', h('code', {}, tls.ca_certificate || 'DATA_DIR/tls/ca.pem'), ' on the server.'),
    );
  }

  // ---------- Connections needing attention ----------
  async function drawAttention() {
    try {
      connections = (await api('GET', '/api/connections')).connections || [];
    } catch (err) {
      if (err.status === 403) {
        attentionCard.hidden = true;
        connections = null;
        return;
      }
      replace(attentionBody, message('error', explain(err)));
      return;
    }
    const needing = connections.map((c) => [c, attentionOf(c)]).filter(([, a]) => a);
    if (!connections.length) {
      replace(attentionBody, h('p', { class: 'muted' }, 'No accounts connected yet.'), h('p', {}, h('a', { href: '/connections' }, 'Connect an account')));
    } else if (!needing.length) {
      replace(
        attentionBody,
        h('p', {}, h('span', { class: 'badge ok' }, 'All good'), ' ', `${connections.length} connected account${connections.length === 1 ? '' : 's'}, none needs you.`),
        h('p', {}, h('a', { href: '/connections' }, 'See connections')),
      );
    } else {
      replace(
        attentionBody,
        h(
          'ul',
          { class: 'attention' },
          needing.map(([c, a]) => h('li', {}, h('span', { class: `badge ${a.level}` }, a.badge), ' ', h('strong', {}, providerLabel(c.provider)), ': ', a.text)),
        ),
        h('p', {}, h('a', { href: '/connections' }, 'Go to Connections to reconnect')),
      );
    }
  }

  // ---------- Usage today ----------
  async function drawUsage() {
    const today = new Date().toISOString().slice(0, 10); // usage days are UTC
    let rows;
    try {
      rows = (await api('GET', withQuery('/api/usage', { from: today, to: today }))).usage || [];
    } catch (err) {
      if (err.status === 403) {
        usageCard.hidden = true;
        return;
      }
      replace(usageBody, message('error', explain(err)));
      return;
    }
    const sum = (k) => rows.reduce((n, r) => n + (r[k] || 0), 0);
    const requests = sum('requests');
    const tokens = sum('input_tokens') + sum('output_tokens');
    const errors = sum('errors');
    replace(
      usageBody,
      h(
        'div',
        { class: 'stats' },
        h('div', {}, h('div', { class: 'stat' }, fmtNumber(requests)), h('div', { class: 'muted' }, 'requests')),
        h('div', {}, h('div', { class: 'stat' }, fmtNumber(tokens)), h('div', { class: 'muted' }, 'tokens')),
        h('div', {}, h('div', { class: 'stat' }, fmtNumber(errors)), h('div', { class: 'muted' }, 'upstream errors')),
      ),
      h('p', { class: 'hint' }, `Through the agent proxy since midnight UTC (${today}).`, ctx.isAdmin ? ' All keys.' : ' Your keys.'),
      h('p', {}, h('a', { href: '/usage' }, 'See usage by day')),
    );
  }

  // ---------- First-run checklist ----------
  async function drawChecklist() {
    const tasks = [];
    try {
      keys = await api('GET', '/api/keys');
    } catch {
      keys = null;
    }
    if (ctx.isAdmin) {
      try {
        vaultEntries = await api('GET', '/api/vault');
      } catch {
        vaultEntries = null;
      }
      if (vaultEntries) {
        tasks.push({
          // OAuth client secrets set on the Connections screen do not count.
          done: vaultEntries.some((e) => !(e.labels && e.labels.purpose === 'oauth-client-secret')),
          text: 'Add a provider key (for example your OpenAI key) to the vault',
          href: '/vault',
          link: 'Open the vault',
        });
      }
    }
    if (keys) {
      tasks.push({
        done: keys.some((k) => !k.revoked_at),
        text: 'Create an API key for an agent',
        href: '/keys',
        link: 'Create a key',
      });
    }
    if (connections) {
      tasks.push({
        done: connections.length > 0,
        text: 'Connect an account (Google, GitHub, Spotify …) your agents may use',
        href: '/connections',
        link: 'Connect an account',
      });
    }
    if (!tasks.length || tasks.every((t) => t.done)) {
      replace(checklist);
      return;
    }
    const done = tasks.filter((t) => t.done).length;
    replace(
      checklist,
      h(
        'section',
        { class: 'card checklist', 'aria-labelledby': 'getting-started' },
        h('h2', { id: 'getting-started' }, 'Getting started'),
        h('p', { class: 'muted' }, `${done} of ${tasks.length} done.`),
        h(
          'ol',
          {},
          tasks.map((t) =>
            h(
              'li',
              { class: t.done ? 'done' : null },
              h('span', { class: `badge ${t.done ? 'ok' : ''}` }, t.done ? 'Done' : 'To do'),
              ' ',
              t.text,
              t.done ? null : [' — ', h('a', { href: t.href }, t.link)],
            ),
          ),
        ),
      ),
    );
  }

  await Promise.all([drawVault().then(drawCert), drawUsage(), drawAttention().then(drawChecklist)]);
}
