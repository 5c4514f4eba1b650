// Connections: the OAuth accounts a user connects once (Latchkey keeps the
// tokens fresh and hands short-lived access tokens to their agents). One
// card per configured provider with its status; administrators also set
// each provider's client id and secret here, and see what to add to
// latchkey.toml for a provider that is not configured yet.

import { api } from '../lib/api.js';
import { h, replace, field, message, onSubmit, copyButton, fmtTime, fmtRelative, confirmDialog, nextId } from '../lib/dom.js';
import { explain } from '../lib/errors.js';
import { withReauth } from '../lib/reauth.js';
import { attentionOf, providerLabel, PRESETS, CALLBACK_ERRORS } from './connections-common.js';

export const title = 'Connections';

function when(t, none = 'Never') {
  if (!t) return h('span', { class: 'muted' }, none);
  return h('time', { datetime: new Date(t * 1000).toISOString(), title: fmtTime(t) }, fmtRelative(t));
}

function facts(pairs) {
  return h(
    'dl',
    { class: 'facts' },
    pairs.filter(Boolean).flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]),
  );
}

function scopeList(scopes) {
  if (!scopes || !scopes.length) return h('span', { class: 'muted' }, 'none');
  return h('span', { class: 'scopes' }, scopes.map((s) => h('code', {}, s)));
}

/** Why Connect cannot work yet, or null. */
function notReady(p) {
  if (p.client_id_source === 'missing') return 'client id';
  if (p.client_secret_present === false) return 'client secret';
  return null;
}

function errorText(err) {
  if (err && err.code === 'client_id_missing') return 'This provider has no client id yet. An administrator sets it below, under “Set up”.';
  if (err && err.code === 'client_secret_missing') return 'This provider’s client secret is missing. An administrator sets it below, under “Set up”.';
  return explain(err);
}

export async function render(main, ctx) {
  const flash = h('div', { 'aria-live': 'polite' });
  const list = h('div', { 'aria-busy': 'true' }, h('p', { class: 'muted' }, 'Loading…'));
  const say = (kind, text) => replace(flash, message(kind, text));

  replace(
    main,
    h('h1', {}, 'Connections'),
    h(
      'p',
      { class: 'muted' },
      'Connect an account once. Latchkey keeps its tokens encrypted, renews them before they expire and hands short-lived access tokens to your agents, so no agent ever signs in or holds a refresh token.',
    ),
    flash,
    list,
  );

  // Back from a failed flow (the callback redirects browsers here).
  const error = ctx.params.get('error');
  if (error) {
    const who = ctx.params.get('provider');
    say('error', `${who ? `${providerLabel(who)}: ` : ''}the connection was not made. ${CALLBACK_ERRORS[error] || `(${error})`}`);
    history.replaceState(null, '', '/connections');
  }
  // Back from a flow finished in the system browser (the desktop app
  // brings its window here).
  const connected = ctx.params.get('connected');
  if (connected && !error) {
    say('ok', `${providerLabel(connected)} is connected.`);
    history.replaceState(null, '', '/connections');
  }

  async function load() {
    let providers;
    let connections;
    // The origin redirect URIs start with, as the server sees it (on the
    // desktop: the port-less loopback origin the system browser returns to).
    let redirectBase = location.origin;
    try {
      [providers, connections] = await Promise.all([
        api('GET', '/api/connections/providers').then((r) => {
          redirectBase = r.redirect_base || location.origin;
          return r.providers || [];
        }),
        api('GET', '/api/connections').then((r) => r.connections || []),
      ]);
    } catch (err) {
      list.removeAttribute('aria-busy');
      if (err.status === 403) {
        replace(list, h('p', { class: 'empty' }, 'Your role cannot connect accounts. Ask an administrator if you need one.'));
      } else {
        replace(list, message('error', explain(err)));
      }
      return;
    }
    const byName = new Map(connections.map((c) => [c.provider, c]));
    list.removeAttribute('aria-busy');
    replace(
      list,
      providers.length
        ? h('div', { class: 'conn-list' }, providers.map((p) => providerCard(p, byName.get(p.name))))
        : h(
            'div',
            { class: 'empty' },
            h('p', {}, 'No providers are configured yet.'),
            ctx.isAdmin ? h('p', {}, 'Add one below, under “Add a provider”.') : h('p', {}, 'An administrator adds providers such as Google, GitHub or Spotify.'),
          ),
      agentsHelp(),
      ctx.isAdmin ? addProvider(providers, redirectBase) : null,
    );
  }

  // ---------- One provider ----------
  function providerCard(p, c) {
    const headId = nextId('prov');
    const slot = h('div', { 'aria-live': 'polite' });
    const attention = c ? attentionOf(c) : null;
    const missing = notReady(p);
    let badge;
    if (!c) badge = h('span', { class: 'badge' }, 'Not connected');
    else if (c.status === 'needs_reconnect') badge = h('span', { class: 'badge danger' }, 'Needs reconnect');
    else badge = h('span', { class: 'badge ok' }, 'Connected');

    const connectBtn = h('button', { type: 'button', class: !c || c.status === 'needs_reconnect' ? 'primary' : 'secondary', disabled: Boolean(missing) }, c ? 'Reconnect' : 'Connect');
    connectBtn.addEventListener('click', async () => {
      connectBtn.disabled = true;
      slot.replaceChildren(message('info', `Taking you to ${providerLabel(p.name)}…`));
      try {
        // POST (same origin) answers with the provider's URL and sets the
        // SameSite=Lax cookie that binds the flow to this browser.
        const r = await api('POST', `/api/connections/${encodeURIComponent(p.name)}/start`);
        location.assign(r.authorize_url);
      } catch (err) {
        slot.replaceChildren(message('error', errorText(err)));
        connectBtn.disabled = false;
      }
    });

    const actions = [connectBtn];
    if (c) {
      const disc = h('button', { type: 'button', class: 'danger' }, 'Disconnect');
      disc.addEventListener('click', async () => {
        const ok = await confirmDialog(
          `Disconnect ${providerLabel(p.name)}?`,
          'Latchkey asks the provider to revoke the tokens (where it supports that) and deletes them here. Agents using this connection stop getting tokens.',
          'Disconnect',
        );
        if (!ok) return;
        try {
          const r = await api('DELETE', `/api/connections/${encodeURIComponent(p.name)}`);
          const outcome = {
            revoked: ['ok', 'revoked at the provider and deleted here.'],
            unsupported: ['info', 'deleted here. The provider offers no way to revoke tokens; remove Latchkey’s access in your account settings there if you want it gone on their side too.'],
            failed: ['warn', 'deleted here, but the provider did not confirm the revocation. Remove Latchkey’s access in your account settings there.'],
          }[r && r.revocation] || ['ok', 'disconnected.'];
          say(outcome[0], `${providerLabel(p.name)} disconnected: ${outcome[1]}`);
          await load();
        } catch (err) {
          slot.replaceChildren(message('error', explain(err)));
        }
      });
      actions.push(disc);
    }

    const body = [
      h('div', { class: 'spread' }, h('h2', { id: headId }, providerLabel(p.name)), badge),
      providerLabel(p.name) !== p.name || (p.preset && p.preset !== p.name)
        ? h('p', { class: 'muted' }, 'Name ', h('code', {}, p.name), p.preset && p.preset !== p.name ? ` · ${providerLabel(p.preset)} preset` : '')
        : null,
      attention ? message(attention.level === 'danger' ? 'error' : 'warn', `${attention.badge}: ${attention.text}`) : null,
      missing && !ctx.isAdmin ? message('info', `Not ready to connect: an administrator still has to set the ${missing}.`) : null,
      missing && ctx.isAdmin ? message('warn', `Set the ${missing} under “Set up” before anyone can connect.`) : null,
      c
        ? facts([
            ['Scopes', scopeList(c.scopes)],
            ['Access token expires', when(c.expires_at, 'does not expire')],
            ['Last refreshed', when(c.last_refresh_at)],
            ['Last used by an agent', when(c.last_used_at)],
            ['Connected', when(c.connected_at)],
            c.reconnect_by ? ['Reconnect by', h('span', {}, fmtTime(c.reconnect_by), ' (', fmtRelative(c.reconnect_by), ')')] : null,
          ])
        : facts([['Scopes asked for', scopeList(p.scopes)]]),
      h('div', { class: 'actions' }, actions),
      slot,
      ctx.isAdmin ? setupPanel(p) : null,
    ];
    return h('section', { class: 'card', 'aria-labelledby': headId }, body);
  }

  // ---------- Admin: client id and secret ----------
  function setupPanel(p) {
    const missing = notReady(p);
    const details = h('details', { class: 'setup', open: Boolean(missing) });
    const idField = field({
      label: 'Client ID',
      name: 'client_id',
      value: p.client_id || '',
      autocomplete: 'off',
      spellcheck: 'false',
      hint: p.client_id_source === 'config' ? 'From latchkey.toml; a value saved here overrides it.' : p.client_id_source === 'ui' ? 'Set on this screen (overrides latchkey.toml).' : 'Not set yet.',
    });
    const secretField = field({
      label: 'Client secret',
      name: 'client_secret',
      type: 'password',
      autocomplete: 'new-password',
      hint:
        p.client_secret_present === true
          ? `Stored in the vault entry “${p.client_secret_entry}”. Leave empty to keep it; a new value replaces it.`
          : p.client_secret_present === false
            ? `Missing: it goes into the vault entry “${p.client_secret_entry}”.`
            : 'None: a public client (PKCE only). A secret entered here makes it a confidential client.',
    });
    const form = h(
      'form',
      { class: 'stack', autocomplete: 'off' },
      h('div', { class: 'inline-fields client-fields' }, idField, secretField),
      h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Save')),
    );
    const slot = onSubmit(
      form,
      async () => {
        const body = {};
        const id = idField.control.value.trim();
        if (id && id !== (p.client_id || '')) body.client_id = id;
        if (secretField.control.value) body.client_secret = secretField.control.value;
        if (!Object.keys(body).length) {
          slot.replaceChildren(message('info', 'Nothing changed.'));
          return;
        }
        const r = await withReauth(
          ctx.me,
          () => api('PUT', `/api/connections/${encodeURIComponent(p.name)}/client`, body),
          'Changing an OAuth client needs a fresh confirmation.',
        );
        if (!r) return; // re-auth cancelled
        secretField.control.value = '';
        const what = [body.client_id ? 'client id' : null, body.client_secret ? 'client secret' : null].filter(Boolean).join(' and ');
        say('ok', `${providerLabel(p.name)}: ${what} saved.`);
        await load();
      },
      explain,
    );

    details.append(
      h('summary', {}, 'Set up (administrators)'),
      h('p', {}, 'Register an OAuth app with the provider using exactly this redirect URI:'),
      h('div', { class: 'row redirect' }, h('code', { class: 'secret-free' }, p.redirect_uri || p.redirect_path), copyButton(p.redirect_uri || p.redirect_path, 'Copy redirect URI')),
      facts([
        ['Client ID', p.client_id ? h('span', {}, h('code', {}, p.client_id), ' ', h('span', { class: 'badge' }, p.client_id_source === 'ui' ? 'set here' : 'latchkey.toml')) : h('span', { class: 'badge warn' }, 'Missing')],
        [
          'Client secret',
          p.client_secret_present === true
            ? h('span', { class: 'badge ok' }, 'Stored in the vault')
            : p.client_secret_present === false
              ? h('span', { class: 'badge warn' }, 'Missing')
              : h('span', { class: 'badge' }, 'Public client'),
        ],
        p.issuer ? ['Issuer', h('code', {}, p.issuer)] : null,
      ]),
      h('p', { class: 'hint' }, 'Changing the client makes existing connections ask for a reconnect the next time their token is renewed (refresh tokens belong to the client that got them).'),
      form,
    );
    return details;
  }

  // ---------- How agents get tokens ----------
  function agentsHelp() {
    // Where agents reach this server (on the desktop: the loopback
    // listener, not the window's own address).
    const base = (ctx.me.base_url || location.origin).replace(/\/+$/, '');
    const url = `${base}/api/connections/<provider>/token`;
    return h(
      'section',
      { class: 'card', 'aria-labelledby': 'agents-help' },
      h('h2', { id: 'agents-help' }, 'How agents get tokens'),
      h('p', {}, 'Give the agent an ', h('a', { href: '/keys' }, 'API key'), ' with the scope ', h('code', {}, 'connections:<provider>'), ' (the provider’s name as on its card above, or ', h('code', {}, 'connections:*'), ' for all). It asks Latchkey for a fresh access token whenever it needs one:'),
      h('pre', { class: 'snippet' }, h('code', {}, `curl -H "Authorization: Bearer lk_…" \\\n  ${url}`)),
      h('p', {}, 'The answer is ', h('code', {}, '{"access_token", "token_type", "expires_at", "scopes"}'), '. Latchkey renews the token before it expires and never hands out the refresh token. Every issuance is in the audit log.'),
    );
  }

  // ---------- Admin: providers not configured yet ----------
  function addProvider(providers, redirectBase) {
    const configured = new Set(providers.flatMap((p) => [p.name, p.preset]).filter(Boolean));
    const open = PRESETS.filter((n) => !configured.has(n));
    const snippet = h('code');
    const redirect = h('code');
    const copySlot = h('span');
    const options = [...open.map((n) => ({ value: n, label: providerLabel(n) })), { value: '__oidc', label: 'Another OpenID Connect provider' }];
    const pick = field({ label: 'Provider', name: 'preset', type: 'select', options });
    const draw = () => {
      const v = pick.control.value;
      const name = v === '__oidc' ? 'myidp' : v;
      const text =
        v === '__oidc'
          ? `[connections.myidp]\nissuer = "https://idp.example.com"   # its /.well-known/openid-configuration\nscopes = ["openid", "offline_access"]\n`
          : `[connections.${v}]\n`;
      snippet.textContent = text;
      redirect.textContent = `${redirectBase.replace(/\/+$/, '')}/api/connections/${name}/callback`;
      replace(copySlot, copyButton(text, 'Copy TOML'));
    };
    pick.control.addEventListener('change', draw);
    draw();
    return h(
      'section',
      { class: 'card', 'aria-labelledby': 'add-provider' },
      h('h2', { id: 'add-provider' }, 'Add a provider'),
      h('p', {}, 'A provider is switched on in ', h('code', {}, 'DATA_DIR/latchkey.toml'), ' (then restart Latchkey). Once it is listed above, set its client id and secret here.'),
      pick,
      h('pre', { class: 'snippet' }, snippet),
      h('div', { class: 'actions' }, copySlot),
      h('p', { class: 'hint' }, 'Redirect URI to register with the provider: ', redirect, '. If browsers reach Latchkey under another address, set ', h('code', {}, 'server.public_url'), ' and use that.'),
    );
  }

  await load();
}
