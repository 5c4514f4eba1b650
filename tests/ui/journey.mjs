// The owner's journey through the web UI in a real browser, against the
// real binary (started by tests/it/ui.rs `ui_journey_screens_a11y_perf`):
// first-run setup with a TOTP code computed independently (QR decoded with
// zbarimg, codes from oathtool), sign out, sign in with TOTP, sign out, sign
// in with a recovery code, add the provider's secret to the vault, create an
// API key and use it through the proxy, see it in Usage and the Audit log,
// revoke a second browser's session from the Account screen. Then every
// screen is photographed (desktop/phone × light/dark) and checked with
// axe-core, and the first load of the login page and of home is measured.
//
// Environment (besides lib.mjs's): LK_SETUP_TOKEN (the banner's setup token),
// LK_PROVIDER_SECRET (the value to store as vault entry LK_VAULT_ENTRY for
// provider `openai`), LK_KEY_NAME, LK_MODEL (what the mock upstream answers).
// Prints `ui-step:` lines, `ui-perf:` lines and a last `ui-steps:` summary;
// exits 0 only when every step passed.

import { writeFileSync } from 'node:fs';
import {
  Authenticator,
  BASE,
  Checks,
  artifact,
  axe,
  decodeQr,
  env,
  launch,
  log,
  measure,
  nav,
  newContext,
  open,
  run,
  screen,
  shoot,
  step,
} from './lib.mjs';

const USERNAME = 'owner';
// Only a test instance's password; never printed.
const PASSWORD = 'Tangerine-Lighthouse-Quartz-417';

run(async () => {
  const setupToken = env('LK_SETUP_TOKEN');
  const providerSecret = env('LK_PROVIDER_SECRET');
  const vaultEntry = env('LK_VAULT_ENTRY');
  const keyName = env('LK_KEY_NAME');
  const model = env('LK_MODEL');
  const checks = new Checks();
  const browser = await launch();
  const a11y = [];
  const layout = [];
  try {
    const ctxA = await newContext(browser, checks);
    const page = await ctxA.newPage();
    let totp;
    let codes;

    // ------------------------------------------------------------ setup
    await step('setup-account', checks, async () => {
      const res = await page.goto(`${BASE()}/setup#token=${setupToken}`, { waitUntil: 'domcontentloaded' });
      if (res.status() !== 200) throw new Error(`/setup answered ${res.status()}`);
      await screen(page, 'Set up Latchkey');
      const hash = await page.evaluate(() => location.hash);
      if (hash.includes(setupToken)) throw new Error('the setup token stays in the URL fragment');
      await shoot(page, 'setup-1-account', layout);
      a11y.push(...(await axe(page, 'setup-1-account')));
      await page.getByLabel('Username', { exact: true }).fill(USERNAME);
      await page.getByLabel('Password', { exact: true }).fill(PASSWORD);
      await page.getByLabel('Repeat password', { exact: true }).fill(PASSWORD);
      await page.getByRole('button', { name: 'Continue', exact: true }).click();
    });

    await step('setup-authenticator', checks, async () => {
      const qr = page.locator('.qr svg');
      await qr.waitFor({ state: 'visible' });
      if (!(await qr.getAttribute('aria-label'))) throw new Error('the QR code <svg> has no aria-label');
      const png = artifact('setup-qr.png');
      await page.locator('.qr').screenshot({ path: png });
      const uri = decodeQr(png);
      if (!uri.startsWith('otpauth://totp/')) throw new Error(`the QR code holds ${JSON.stringify(uri.slice(0, 20))}…`);
      const secret = new URL(uri).searchParams.get('secret');
      if (!secret) throw new Error('no secret in the QR code');
      // The key for manual entry is on the page too (grouping aside).
      const text = (await page.locator('main').innerText()).replace(/[\s-]/g, '');
      if (!text.includes(secret)) throw new Error('the key for manual entry is not shown');
      totp = new Authenticator(secret);
      await shoot(page, 'setup-2-authenticator', layout);
      a11y.push(...(await axe(page, 'setup-2-authenticator')));
      await page.getByLabel('Code from your authenticator app', { exact: true }).fill(await totp.code());
      await page.getByRole('button', { name: 'Confirm', exact: true }).click();
    });

    await step('setup-recovery-codes', checks, async () => {
      const items = page.locator('ul.codes > li');
      await items.first().waitFor({ state: 'visible' });
      codes = (await items.allInnerTexts()).map((c) => c.trim()).filter(Boolean);
      if (codes.length !== 10) throw new Error(`${codes.length} recovery codes shown, expected 10`);
      await page.getByRole('button', { name: 'Copy codes', exact: true }).waitFor();
      await page.getByRole('button', { name: 'Download codes', exact: true }).waitFor();
      const done = page.getByRole('button', { name: 'Continue to Latchkey', exact: true });
      if (await done.isEnabled()) throw new Error('"Continue to Latchkey" is enabled before the codes are marked saved');
      await shoot(page, 'setup-3-recovery-codes', layout);
      a11y.push(...(await axe(page, 'setup-3-recovery-codes')));
      await page.getByLabel('I have saved my recovery codes', { exact: true }).check();
      await done.click();
      await screen(page, 'Home');
    });

    const signOut = async (p) => {
      await p.getByRole('button', { name: 'Sign out', exact: true }).click();
      await screen(p, 'Sign in');
      const status = await p.evaluate(async () => (await fetch('/api/auth/me')).status);
      if (status !== 401) throw new Error(`after signing out /api/auth/me answers ${status}`);
    };
    const password = async (p) => {
      await p.getByLabel('Username', { exact: true }).fill(USERNAME);
      await p.getByLabel('Password', { exact: true }).fill(PASSWORD);
      await p.getByRole('button', { name: 'Sign in', exact: true }).click();
    };
    const signInTotp = async (p, shots) => {
      await password(p);
      const code = p.getByLabel('Code from your authenticator app', { exact: true });
      await code.waitFor({ state: 'visible' });
      if (shots) {
        await shoot(p, 'login-2-code', layout);
        a11y.push(...(await axe(p, 'login-2-code')));
      }
      await code.fill(await totp.code());
      await p.getByRole('button', { name: 'Verify', exact: true }).click();
      await screen(p, 'Home');
    };

    await step('sign-out', checks, () => signOut(page));

    await step('sign-in-totp', checks, async () => {
      await shoot(page, 'login-1-password', layout);
      a11y.push(...(await axe(page, 'login-1-password')));
      await signInTotp(page, true);
    });

    await step('sign-out-again', checks, () => signOut(page));

    await step('sign-in-recovery-code', checks, async () => {
      await password(page);
      await page.getByRole('button', { name: 'Use a recovery code instead', exact: true }).click();
      const rc = page.getByLabel('Recovery code', { exact: true });
      await rc.waitFor({ state: 'visible' });
      await shoot(page, 'login-3-recovery', layout);
      a11y.push(...(await axe(page, 'login-3-recovery')));
      await rc.fill(codes[0]);
      await page.getByRole('button', { name: 'Verify', exact: true }).click();
      await screen(page, 'Home');
    });

    // ------------------------------------------------------------ data
    await step('vault-add-entry', checks, async () => {
      await nav(page, 'Vault');
      await page.getByRole('button', { name: 'Add entry', exact: true }).click();
      await page.getByLabel('Name', { exact: true }).fill(vaultEntry);
      await page.getByLabel('Kind', { exact: true }).selectOption('api_key');
      await page.getByLabel('Provider', { exact: true }).fill('openai');
      await page.getByLabel('Secret value', { exact: true }).fill(providerSecret);
      await page.getByRole('button', { name: 'Save', exact: true }).click();
      await page.locator('main').getByText(vaultEntry, { exact: true }).first().waitFor();
      await page.getByRole('button', { name: 'Reveal' }).first().waitFor();
      if ((await page.locator('body').innerText()).includes(providerSecret)) {
        throw new Error('the secret value is still on the page after saving');
      }
    });

    let apiKey;
    await step('key-create', checks, async () => {
      await nav(page, 'API keys');
      await page.getByRole('button', { name: 'Create key', exact: true }).click();
      await page.getByLabel('Name', { exact: true }).fill(keyName);
      await page.getByLabel('proxy:openai', { exact: true }).check();
      await page.getByLabel('Expires', { exact: true }).selectOption({ label: '30 days' });
      await page.getByRole('button', { name: 'Create', exact: true }).click();
      const once = page.locator('.secret-once[aria-label="New API key"]');
      await once.waitFor({ state: 'visible' });
      const m = (await once.innerText()).match(/lk_[A-Za-z0-9_-]+/);
      if (!m) throw new Error('no lk_… key in the "New API key" box');
      apiKey = m[0];
      await page.locator('main').getByRole('button', { name: 'Copy', exact: true }).waitFor();
      await shoot(page, 'keys-new-key', layout);
      await page.getByRole('button', { name: 'Done', exact: true }).click();
      await once.waitFor({ state: 'detached' });
      if ((await page.locator('body').innerText()).includes(apiKey)) throw new Error('the key is still shown after "Done"');
      await page.locator('main').getByText(keyName, { exact: true }).first().waitFor();
    });

    await step('proxy-through-mock', checks, async () => {
      // Node's own fetch (trusting the server's CA via NODE_EXTRA_CA_CERTS),
      // as an agent would call it.
      const res = await fetch(`${BASE()}/proxy/openai/v1/chat/completions`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${apiKey}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }] }),
        signal: AbortSignal.timeout(15_000),
      });
      const body = await res.text();
      if (res.status !== 200) throw new Error(`proxy answered ${res.status}: ${body.slice(0, 200)}`);
      if (JSON.parse(body).choices?.[0]?.message?.content !== 'Hello!') throw new Error(`unexpected proxy answer ${body.slice(0, 200)}`);
    });

    await step('usage-shows-request', checks, async () => {
      await nav(page, 'Usage');
      const table = page.getByRole('table', { name: 'Usage by day' });
      await table.waitFor();
      const row = table.getByRole('row').filter({ hasText: keyName }).filter({ hasText: model });
      await row.first().waitFor();
    });

    await step('audit-shows-events', checks, async () => {
      await nav(page, 'Audit log');
      const table = page.getByRole('table', { name: 'Audit events' });
      await table.waitFor();
      await table.getByRole('row').filter({ hasText: 'key.create' }).first().waitFor();
      await table.getByRole('row').filter({ hasText: 'recovery_code.use' }).first().waitFor();
      // The vault entry added in the browser is recorded (by name, never its value).
      await table.getByRole('row').filter({ hasText: 'vault.put' }).first().waitFor();
      // The filter narrows the list to one action.
      await page.getByLabel('Action', { exact: true }).fill('key.create');
      await page.getByRole('button', { name: 'Filter', exact: true }).click();
      await page.waitForFunction(() => {
        const t = [...document.querySelectorAll('table')].find((x) => x.caption && x.caption.textContent.includes('Audit events'));
        if (!t) return false;
        const rows = [...t.tBodies].flatMap((b) => [...b.rows]);
        return rows.length > 0 && rows.every((r) => r.textContent.includes('key.create'));
      });
    });

    // ------------------------------------------------------------ sessions
    await step('revoke-other-session', checks, async () => {
      const ctxB = await newContext(browser, checks);
      const pageB = await ctxB.newPage();
      await open(pageB, '/login', 'Sign in');
      await signInTotp(pageB, false);
      await nav(page, 'Account');
      // One recovery code was spent signing in above; the screen says so.
      await page.getByText('Recovery codes left: 9 of 10.').waitFor();
      const sessions = page.getByRole('table', { name: 'Sessions' });
      await sessions.waitFor();
      await sessions.getByText('This session').first().waitFor();
      const revoke = sessions.getByRole('button', { name: 'Revoke', exact: true });
      const n = await revoke.count();
      if (n !== 1) throw new Error(`${n} "Revoke" buttons in Sessions, expected 1 (the second browser)`);
      await revoke.click();
      const dialog = page.getByRole('dialog');
      // A confirmation dialog, if the screen asks (it opens on the click).
      const asked = await dialog
        .waitFor({ state: 'visible', timeout: 3_000 })
        .then(() => true)
        .catch(() => false);
      if (asked) {
        await dialog.getByRole('button', { name: 'Revoke', exact: true }).click();
      }
      await sessions.getByRole('button', { name: 'Revoke', exact: true }).waitFor({ state: 'detached' });
      const status = await pageB.evaluate(async () => (await fetch('/api/auth/me')).status);
      if (status !== 401) throw new Error(`the revoked browser still gets ${status} from /api/auth/me`);
      await pageB.goto(`${BASE()}/vault`, { waitUntil: 'domcontentloaded' });
      await screen(pageB, 'Sign in');
      if (!new URL(pageB.url()).pathname.startsWith('/login')) throw new Error(`revoked browser is at ${pageB.url()}`);
      // The first browser is still signed in.
      const mine = await page.evaluate(async () => (await fetch('/api/auth/me')).status);
      if (mine !== 200) throw new Error(`the revoking browser got ${mine} from /api/auth/me`);
      await ctxB.close();
    });

    // ------------------------------------------------------------ screens
    let inviteToken;
    await step('populate-users', checks, async () => {
      // Through the page's own session, as the Users screen would.
      const made = await page.evaluate(async () => {
        const post = async (path, body) => {
          const r = await fetch(path, {
            method: 'POST',
            headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
            body: JSON.stringify(body),
          });
          return { status: r.status, body: await r.json() };
        };
        const a = await post('/api/users/invites', { role: 'user' });
        const b = await post('/api/users/invites', { role: 'guest' });
        return { a, b };
      });
      if (made.a.status !== 201 || made.b.status !== 201) throw new Error(`invites: ${made.a.status} ${made.b.status}`);
      const acc = await fetch(`${BASE()}/api/invites/accept`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ token: made.a.body.token, username: 'casey', password: PASSWORD }),
      });
      if (acc.status !== 201) throw new Error(`accept invite: ${acc.status}`);
      inviteToken = made.b.body.token;
    });

    const SCREENS = ['Home', 'Vault', 'Connections', 'API keys', 'Usage', 'Audit log', 'Users', 'Account'];
    for (const name of SCREENS) {
      await step(`screen-${slug(name)}`, checks, async () => {
        await nav(page, name);
        await page.waitForLoadState('networkidle').catch(() => {});
        await shoot(page, slug(name), layout);
        a11y.push(...(await axe(page, slug(name))));
      });
    }

    await step('screen-join', checks, async () => {
      const ctxC = await newContext(browser, checks);
      const pageC = await ctxC.newPage();
      await pageC.goto(`${BASE()}/invite#${inviteToken}`, { waitUntil: 'domcontentloaded' });
      await screen(pageC, 'Join Latchkey');
      const hash = await pageC.evaluate(() => location.hash);
      if (hash.includes(inviteToken)) throw new Error('the invite token stays in the URL fragment');
      await shoot(pageC, 'join', layout);
      a11y.push(...(await axe(pageC, 'join')));
      // Accepting the invite signs the new guest in.
      await pageC.getByLabel('Username', { exact: true }).fill('gus');
      await pageC.getByLabel('Password', { exact: true }).fill(PASSWORD);
      await pageC.getByLabel('Repeat password', { exact: true }).fill(PASSWORD);
      await pageC.getByRole('button', { name: 'Join', exact: true }).click();
      await screen(pageC, 'Home');
      await ctxC.close();
    });

    // A household member (role user, no TOTP yet) sees only their own
    // screens; the admin screens are neither linked nor shown.
    // The keyboard alone: sign in (Tab between fields, Enter submits) and
    // move to a screen through the navigation, no pointer at all.
    await step('keyboard-only-sign-in', checks, async () => {
      const ctxK = await newContext(browser, checks);
      const pageK = await ctxK.newPage();
      await open(pageK, '/login', 'Sign in');
      const focused = () => pageK.evaluate(() => {
        const el = document.activeElement;
        const label = el && el.id ? document.querySelector(`label[for="${el.id}"]`) : null;
        return label ? label.textContent.trim() : el ? el.tagName : '';
      });
      if ((await focused()) !== 'Username') {
        // Not focused on arrival: reach it with Tab from the top.
        for (let i = 0; i < 6 && (await focused()) !== 'Username'; i += 1) await pageK.keyboard.press('Tab');
      }
      if ((await focused()) !== 'Username') throw new Error('Tab never reaches the Username field');
      await pageK.keyboard.type(USERNAME);
      await pageK.keyboard.press('Tab');
      if ((await focused()) !== 'Password') throw new Error(`Tab from Username lands on ${await focused()}`);
      await pageK.keyboard.type(PASSWORD);
      await pageK.keyboard.press('Enter');
      const code = pageK.getByLabel('Code from your authenticator app', { exact: true });
      await code.waitFor({ state: 'visible' });
      if ((await focused()) !== 'Code from your authenticator app') {
        throw new Error(`after the password, focus is on ${await focused()}, not the code field`);
      }
      await pageK.keyboard.type(await totp.code());
      await pageK.keyboard.press('Enter');
      await screen(pageK, 'Home');
      // Tab to the "Usage" link and follow it with Enter.
      let onLink = false;
      for (let i = 0; i < 20 && !onLink; i += 1) {
        await pageK.keyboard.press('Tab');
        onLink = await pageK.evaluate(() => document.activeElement && document.activeElement.textContent.trim() === 'Usage');
      }
      if (!onLink) throw new Error('Tab never reaches the Usage link');
      await pageK.keyboard.press('Enter');
      await screen(pageK, 'Usage');
      await ctxK.close();
    });

    await step('screens-as-a-user', checks, async () => {
      const ctxU = await newContext(browser, checks);
      const pageU = await ctxU.newPage();
      await open(pageU, '/login', 'Sign in');
      await pageU.getByLabel('Username', { exact: true }).fill('casey');
      await pageU.getByLabel('Password', { exact: true }).fill(PASSWORD);
      await pageU.getByRole('button', { name: 'Sign in', exact: true }).click();
      await screen(pageU, 'Home');
      const mainNav = pageU.getByRole('navigation', { name: 'Main' });
      for (const hidden of ['Vault', 'Audit log', 'Users']) {
        if ((await mainNav.getByRole('link', { name: hidden, exact: true }).count()) !== 0) {
          throw new Error(`a user's navigation links to ${hidden}`);
        }
      }
      for (const name of ['Home', 'Connections', 'API keys', 'Usage', 'Account']) {
        await nav(pageU, name);
        await pageU.waitForLoadState('networkidle').catch(() => {});
        await shoot(pageU, `user-${slug(name)}`, layout);
        a11y.push(...(await axe(pageU, `user-${slug(name)}`)));
      }
      await pageU.goto(`${BASE()}/vault`, { waitUntil: 'domcontentloaded' });
      await screen(pageU, 'Not allowed');
      await ctxU.close();
    });

    await step('accessibility-and-layout', checks, async () => {
      for (const l of layout) log(`ui-layout: ${l}`);
      for (const v of a11y) log(`ui-a11y: SERIOUS ${v}`);
      if (a11y.length || layout.length) {
        throw new Error(`${a11y.length} serious/critical axe violations, ${layout.length} layout problems (see above)`);
      }
    });

    // ------------------------------------------------------------ perf
    await step('page-weight-and-speed', checks, async () => {
      const cookies = (await ctxA.cookies()).filter((c) => c.name === '__Host-latchkey_session');
      if (cookies.length !== 1) throw new Error('no session cookie to measure home with');
      const login = await measure(browser, checks, '/login', 'Sign in');
      const home = await measure(browser, checks, '/', 'Home', { storageState: { cookies, origins: [] } });
      const perf = { login, home, chromium: browser.version(), at: new Date().toISOString() };
      writeFileSync(artifact('perf.json'), JSON.stringify(perf, null, 2));
      for (const [name, m] of [
        ['login', login],
        ['home', home],
      ]) {
        log(
          `ui-perf: page=${name} bytes=${m.bytes} requests=${m.requests} rt_transfer=${m.rt_transfer} rt_requests=${m.rt_count} dcl_ms=${m.dcl.toFixed(1)} load_ms=${m.load.toFixed(1)} interactive_ms=${m.ready.toFixed(1)}`,
        );
      }
    });
  } finally {
    await browser.close();
  }
});

function slug(name) {
  return name.toLowerCase().replace(/[^a-z0-9]+/g, '-');
}
