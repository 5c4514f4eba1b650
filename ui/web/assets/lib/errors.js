// Turns an ApiError into a sentence a person can act on. The server's own
// message is precise (it names the field or the rule) and never contains a
// secret, so it is the default; codes that need an action or a time get
// their own wording.

function inWords(seconds) {
  if (!Number.isFinite(seconds)) return 'a little while';
  if (seconds < 60) return `${seconds} second${seconds === 1 ? '' : 's'}`;
  const minutes = Math.ceil(seconds / 60);
  if (minutes < 90) return `${minutes} minute${minutes === 1 ? '' : 's'}`;
  const hours = Math.round(minutes / 60);
  return `${hours} hour${hours === 1 ? '' : 's'}`;
}

/** When to retry, as "at 14:05 (in 3 minutes)". */
export function retryText(seconds) {
  if (!Number.isFinite(seconds)) return 'later';
  const at = new Date(Date.now() + seconds * 1000).toLocaleTimeString(undefined, {
    hour: '2-digit',
    minute: '2-digit',
  });
  return `at ${at} (in ${inWords(seconds)})`;
}

const WORDS = {
  network: () => 'Latchkey did not answer. Check that it is still running, then try again.',
  invalid_credentials: () => 'Wrong username or password.',
  invalid_ticket: () => 'That sign-in took too long. Start again with your password.',
  invalid_code: (e) => e.message || 'That code is not right.',
  code_replayed: () => 'That code was already used. Wait for the next one in your authenticator app.',
  rate_limited: (e) => `Too many attempts from this address. Try again ${retryText(e.retryAfter)}.`,
  account_locked: (e) => `This account is locked after too many failed attempts. Try again ${retryText(e.retryAfter)}.`,
  reauth_required: () => 'Confirm it is you first.',
  csrf: () => 'The request came from another site and was refused. Reload this page.',
  forbidden: () => 'Your role does not allow this.',
  vault_sealed: () => 'The vault is sealed. Unseal it on the Home screen first.',
  invalid_setup_token: () => 'This setup link is wrong, used or expired. Restart `latchkey serve` for a new one.',
  invalid_invite: () => 'This invite link is wrong, used or expired. Ask for a new one.',
  payload_too_large: () => 'That is too large for Latchkey to accept.',
  internal: () => 'Something went wrong inside Latchkey. Its log has the details.',
  key_rate_limited: (e) => `This key is over its request limit. Try again ${retryText(e.retryAfter)}.`,
  token_budget_exhausted: (e) => `This key has used its tokens for today. Try again ${retryText(e.retryAfter)}.`,
};

/** A user-facing sentence for any error thrown by api(). */
export function explain(err) {
  if (!err) return 'Something went wrong.';
  const words = err.code && WORDS[err.code];
  if (words) return words(err);
  return err.message || 'Something went wrong.';
}
