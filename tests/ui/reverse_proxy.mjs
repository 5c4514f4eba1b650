// Latchkey behind a real Caddy in a real browser (started by
// tests/it/reverse_proxy.rs): Caddy terminates TLS with its internal CA and
// relays plain HTTP to Latchkey (`server.tls = false`). Chromium trusts
// Caddy's root because the test put it into the NSS database of this
// process's $HOME (~/.pki/nssdb), the store Chromium on Linux reads — no
// certificate error is ignored, and a browser with an empty $HOME must
// refuse the site. The owner signs in with password + TOTP; the session
// cookie as the browser holds it is `__Host-`, Secure, HttpOnly and
// SameSite=Strict; a same-origin POST works; a form on another origin of
// the same site (a second Caddy site, so the cookie IS attached) posting to
// Latchkey is refused with 403 `csrf`.
//
// Environment (besides lib.mjs's LK_URL — Caddy's https origin — and
// LK_ARTIFACTS): LK_TOTP_SECRET (base32), LK_TOTP_LAST_STEP (the last TOTP
// step the test already used), LK_OTHER_ORIGIN (the other Caddy site, which
// serves csrf.html), LK_UNTRUSTED_HOME (an empty folder), LK_KEY_NAME.
// Prints `ui-step:` lines, `ui-cookie:`/`ui-csrf:` facts and a last
// `ui-steps:` summary; exits 0 only when every step passed.

import { chromium } from 'playwright-core';
import { Authenticator, BASE, Checks, env, log, newContext, open, run, screen, step } from './lib.mjs';

const USERNAME = 'owner';
// Only a test instance's password; never printed.
const PASSWORD = 'Tangerine-Lighthouse-Quartz-417';
const COOKIE = '__Host-latchkey_session';

/** The system Chromium, headless, with the environment's trust store. */
function launch(home) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    timeout: 30_000,
    env: { ...process.env, HOME: home },
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

run(async () => {
  const other = env('LK_OTHER_ORIGIN');
  const keyName = env('LK_KEY_NAME');
  const totp = new Authenticator(env('LK_TOTP_SECRET'));
  totp.last = Number(env('LK_TOTP_LAST_STEP'));
  const checks = new Checks();

  await step('untrusted-without-caddy-root', checks, async () => {
    // The same browser without the NSS database: Caddy's certificate must
    // be refused, so the signed-in steps below prove the root is trusted,
    // not that errors are ignored.
    const bare = await launch(env('LK_UNTRUSTED_HOME'));
    try {
      const page = await (await bare.newContext()).newPage();
      let error = null;
      await page.goto(`${BASE()}/login`, { timeout: 15_000 }).catch((e) => {
        error = String(e && e.message);
      });
      if (!error || !error.includes('ERR_CERT_AUTHORITY_INVALID')) {
        throw new Error(`a browser without Caddy's root opened the site (${error})`);
      }
      log(`ui-trust: without the root: ERR_CERT_AUTHORITY_INVALID`);
    } finally {
      await bare.close();
    }
  });

  const browser = await launch(env('HOME'));
  try {
    const ctx = await newContext(browser, checks);
    const page = await ctx.newPage();

    await step('sign-in-password-totp', checks, async () => {
      const res = await open(page, '/login', 'Sign in');
      if (res.status() !== 200) throw new Error(`/login answered ${res.status()}`);
      const secure = await page.evaluate(() => window.isSecureContext && location.protocol);
      if (secure !== 'https:') throw new Error(`the login page is not a secure https context (${secure})`);
      await page.getByLabel('Username', { exact: true }).fill(USERNAME);
      await page.getByLabel('Password', { exact: true }).fill(PASSWORD);
      await page.getByRole('button', { name: 'Sign in', exact: true }).click();
      const code = page.getByLabel('Code from your authenticator app', { exact: true });
      await code.waitFor({ state: 'visible' });
      await code.fill(await totp.code());
      const mfa = page.waitForResponse((r) => new URL(r.url()).pathname === '/api/auth/mfa');
      await page.getByRole('button', { name: 'Verify', exact: true }).click();
      const r = await mfa;
      if (r.status() !== 200) throw new Error(`/api/auth/mfa answered ${r.status()}`);
      // The Set-Cookie header as it reached the browser through Caddy.
      const set = (await r.headerValue('set-cookie')) || '';
      const session = set.split('\n').find((c) => c.startsWith(`${COOKIE}=`)) || '';
      const attrs = session.split(';').slice(1).map((a) => a.trim().toLowerCase());
      for (const want of ['secure', 'httponly', 'samesite=strict', 'path=/']) {
        if (!attrs.includes(want)) throw new Error(`Set-Cookie lacks ${want}: ${JSON.stringify(attrs)}`);
      }
      if (attrs.some((a) => a.startsWith('domain='))) throw new Error('the session cookie names a Domain');
      log(`ui-set-cookie: ${attrs.filter((a) => !a.startsWith('max-age')).join('; ')}`);
      await screen(page, 'Home');
      log(`ui-totp-last-step: ${totp.last}`);
    });

    await step('session-cookie-flags', checks, async () => {
      const cookies = (await ctx.cookies(BASE())).filter((c) => c.name === COOKIE);
      if (cookies.length !== 1) throw new Error(`${cookies.length} session cookies in the browser`);
      const c = cookies[0];
      const facts = {
        secure: c.secure,
        httpOnly: c.httpOnly,
        sameSite: c.sameSite,
        path: c.path,
        // A host-only cookie: the exact host, no leading dot.
        domain: c.domain,
      };
      const want = { secure: true, httpOnly: true, sameSite: 'Strict', path: '/', domain: 'localhost' };
      if (JSON.stringify(facts) !== JSON.stringify(want)) {
        throw new Error(`session cookie is ${JSON.stringify(facts)}, want ${JSON.stringify(want)}`);
      }
      // HttpOnly as the page itself sees it.
      const visible = await page.evaluate(() => document.cookie);
      if (visible.includes(COOKIE)) throw new Error('page scripts can read the session cookie');
      log(`ui-cookie: name=${c.name} secure=${c.secure} httpOnly=${c.httpOnly} sameSite=${c.sameSite} path=${c.path} domain=${c.domain}`);
    });

    await step('same-origin-post', checks, async () => {
      // The page's own fetch: same origin, so Latchkey must accept it
      // (its idea of its own origin is Caddy's https one).
      const status = await page.evaluate(async (name) => {
        const r = await fetch('/api/keys', {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ name, scopes: ['proxy:openai'] }),
        });
        return r.status;
      }, keyName);
      if (status !== 201) throw new Error(`same-origin POST /api/keys answered ${status}`);
    });

    await step('cross-origin-post-refused', checks, async () => {
      // Another origin of the same site (https://localhost:<other port>):
      // SameSite=Strict does not keep the cookie away, so Latchkey's
      // origin check is what must refuse the form post.
      const evil = await ctx.newPage();
      const res = await evil.goto(`${other}/csrf.html`, { waitUntil: 'domcontentloaded' });
      if (res.status() !== 200) throw new Error(`${other}/csrf.html answered ${res.status()}`);
      const posted = evil.waitForResponse(
        (r) => r.url() === `${BASE()}/api/keys` && r.request().method() === 'POST',
      );
      await evil.getByRole('button', { name: 'Send', exact: true }).click();
      const r = await posted;
      const sent = await r.request().allHeaders();
      if (!(sent.cookie || '').includes(`${COOKIE}=`)) {
        throw new Error(`the cross-origin POST carried no session cookie: ${JSON.stringify(Object.keys(sent))}`);
      }
      if (sent.origin !== other) throw new Error(`the POST's Origin is ${sent.origin}, want ${other}`);
      const body = await r.text();
      let error = null;
      try {
        error = JSON.parse(body).error;
      } catch {
        throw new Error(`the refusal is not JSON: ${body.slice(0, 200)}`);
      }
      if (r.status() !== 403 || error !== 'csrf') {
        throw new Error(`the cross-origin POST answered ${r.status()} ${body.slice(0, 200)}`);
      }
      log(`ui-csrf: status=${r.status()} error=${error} sec-fetch-site=${sent['sec-fetch-site']} content-type=${r.headers()['content-type']}`);
      await evil.close();
    });
  } finally {
    await browser.close();
  }
});
