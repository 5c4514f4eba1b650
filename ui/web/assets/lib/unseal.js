// A sealed vault seen from a signed-out page. In passphrase mode nobody can
// sign in (or finish setup) while the vault is sealed — the TOTP secrets
// are sealed too — so the sign-in and setup pages offer the unseal form
// themselves; `POST /api/vault/unseal` takes the passphrase without a
// session (the passphrase is the credential, rate limited). Other master
// key sources are unsealed on the server (`latchkey unseal`).

import { api } from './api.js';
import { h, field, message, onSubmit } from './dom.js';
import { explain, retryText } from './errors.js';

/**
 * The signed-out view of the vault (`GET /api/setup`): `{ sealed,
 * passphrase }`; unknown (an error) counts as not sealed, so the page
 * still works and the server's own errors explain the rest.
 */
export async function vaultState() {
  try {
    const s = await api('GET', '/api/setup');
    return {
      sealed: Boolean(s && s.sealed),
      passphrase: Boolean(s && s.unseal_with_passphrase),
      // How this host opens the vault when it is not `latchkey unseal`
      // on the server (the desktop app: from the keychain, at launch).
      hint: (s && typeof s.unseal_hint === 'string' && s.unseal_hint) || null,
    };
  } catch {
    return { sealed: false, passphrase: false, hint: null };
  }
}

function why(err) {
  switch (err.code) {
    case 'wrong_master_key':
      return 'That passphrase does not open the vault.';
    case 'unauthenticated':
    case 'forbidden':
      return 'This Latchkey does not use a passphrase: unseal it on the server with `latchkey unseal`.';
    case 'vault_not_initialized':
      return 'The vault has no passphrase yet: run `latchkey vault init` on the server first.';
    case 'already_unsealed':
      return 'The vault is already unsealed: reload the page.';
    case 'unseal_in_progress':
      return 'Another unseal attempt is being checked right now. Try again in a moment.';
    case 'rate_limited':
      // Per address, or the global pause after repeated wrong passphrases.
      return `Too many unseal attempts. Try again ${retryText(err.retryAfter)}.`;
    default:
      return explain(err);
  }
}

/**
 * A card with the unseal form when the vault is sealed, else null.
 * `onUnsealed()` runs after a successful unseal (e.g. to re-render).
 */
export async function sealedCard(onUnsealed) {
  const state = await vaultState();
  if (!state.sealed) return null;
  if (!state.passphrase) {
    const how = state.hint
      ? [state.hint]
      : ['An administrator unseals it on the server with ', h('code', {}, 'latchkey unseal'), '; then reload this page.'];
    return h(
      'div',
      { class: 'card sealed' },
      h('h2', {}, 'The vault is sealed'),
      h('p', {}, 'Latchkey keeps every secret, sign-in codes included, locked until the vault is unsealed. ', ...how),
    );
  }
  const pass = field({
    label: 'Vault passphrase',
    name: 'vault-passphrase',
    type: 'password',
    autocomplete: 'off',
    required: true,
  });
  const form = h(
    'form',
    {},
    h('h2', {}, 'The vault is sealed'),
    h(
      'p',
      {},
      'Latchkey keeps every secret, sign-in codes included, locked until the vault is unsealed. ',
      'Enter the vault passphrase (or run ',
      h('code', {}, 'latchkey unseal'),
      ' on the server).',
    ),
    pass,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Unseal')),
  );
  const card = h('div', { class: 'card sealed' }, form);
  onSubmit(
    form,
    async () => {
      await api('POST', '/api/vault/unseal', { passphrase: pass.control.value });
      pass.control.value = '';
      card.replaceChildren(message('ok', 'The vault is unsealed.'));
      await onUnsealed();
    },
    why,
  );
  return card;
}
