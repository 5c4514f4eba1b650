// Shared by the Home and Connections screens: provider names as people
// know them, and whether a connection needs its owner.

const NAMES = {
  spotify: 'Spotify',
  google: 'Google',
  github: 'GitHub',
  microsoft: 'Microsoft',
  slack: 'Slack',
  notion: 'Notion',
};

/** The presets a `[connections.<name>]` section can start from. */
export const PRESETS = Object.keys(NAMES);

/** "github" → "GitHub"; other names as configured. */
export function providerLabel(name) {
  return NAMES[name] || name;
}

/** Reconnect reminders start this many days before a forced re-consent. */
export const REMIND_DAYS = 14;

/**
 * Whether connection `c` (from GET /api/connections) needs its owner:
 * `{level: 'danger'|'warn', badge, text}` or null.
 */
export function attentionOf(c) {
  if (c.status === 'needs_reconnect') {
    return {
      level: 'danger',
      badge: 'Needs reconnect',
      text: 'the provider no longer accepts its refresh token. Reconnect it so agents get tokens again.',
    };
  }
  if (c.reconnect_by) {
    const days = (c.reconnect_by * 1000 - Date.now()) / 86400000;
    if (days < 0) {
      return { level: 'danger', badge: 'Expired', text: 'the provider ended this grant. Reconnect it.' };
    }
    if (days < REMIND_DAYS) {
      const n = Math.max(1, Math.ceil(days));
      return {
        level: 'warn',
        badge: 'Reconnect soon',
        text: `the provider asks for a new consent in ${n} day${n === 1 ? '' : 's'}. Reconnect before then to avoid a gap.`,
      };
    }
  }
  return null;
}

/** Words for the error codes a failed connect flow comes back with. */
export const CALLBACK_ERRORS = {
  oauth_denied: 'The provider did not authorize the connection (access was denied or cancelled there).',
  invalid_state: 'That sign-in at the provider is unknown, expired (after 10 minutes) or was already used. Start again with Connect.',
  state_mismatch: 'This browser did not start that connection. Start it again from this browser (cookies must be allowed).',
  session_ended: 'You signed out (or your session ended) while at the provider. Sign in and start again.',
  issuer_mismatch: 'The answer came from another server than the provider\u2019s, so it was refused.',
  exchange_failed: 'The provider refused to finish the connection. Check the client id, the client secret and the registered redirect URI, then try again.',
  invalid_request: 'The provider\u2019s answer was incomplete. Start again with Connect.',
  provider_unreachable: 'Latchkey could not reach the provider. Check this server\u2019s network access and try again.',
  provider_error: 'The provider sent an answer Latchkey cannot use. The server log has details.',
  unknown_provider: 'That provider is not configured.',
  rate_limited: 'Too many attempts from this address. Wait a minute and try again.',
  vault_sealed: 'The vault is sealed. Unseal it on the Home screen first.',
  internal: 'Something went wrong inside Latchkey. Its log has the details.',
};
