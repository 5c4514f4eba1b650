// Connecting an OAuth provider in a real browser (started by tests/it/ui.rs
// `ui_connect_provider_in_browser`): on the Connections screen the user
// clicks "Connect" for the provider, signs in and consents on the
// provider's own pages (oidc-provider's development interactions, served
// over plain HTTP on 127.0.0.1 — another site than https://localhost), and
// is sent back to Latchkey's callback by a cross-site redirect. Chromium
// then sends the SameSite=Lax binding cookie but not the SameSite=Strict
// session cookie: the connection must still complete and show "connected".
//
// Environment (besides lib.mjs's): LK_SESSION (the signed-in owner's session
// cookie value, from the test's own setup), LK_PROVIDER, LK_IDP (issuer URL).

import { BASE, Checks, axe, env, launch, log, newContext, open, run, screen, shoot, step } from './lib.mjs';

run(async () => {
  const session = env('LK_SESSION');
  const provider = env('LK_PROVIDER');
  const idp = env('LK_IDP');
  const checks = new Checks();
  const browser = await launch();
  try {
    const ctx = await newContext(browser, checks);
    await ctx.addCookies([
      {
        name: '__Host-latchkey_session',
        value: session,
        url: `${BASE()}/`,
        secure: true,
        httpOnly: true,
        sameSite: 'Strict',
      },
    ]);
    const page = await ctx.newPage();
    const layout = [];
    const a11y = [];

    await step('connections-screen', checks, async () => {
      await open(page, '/connections', 'Connections');
      await page.locator('main').getByText(provider).first().waitFor();
      await shoot(page, 'connections-before', layout);
    });

    let viaScreen = true;
    await step('connect-click', checks, async () => {
      // The "Connect" control (button or link) in the provider's part of
      // the screen.
      const controls = page
        .locator('main')
        .getByRole('button', { name: 'Connect', exact: true })
        .or(page.locator('main').getByRole('link', { name: 'Connect', exact: true }));
      const n = await controls.count();
      let target = null;
      for (let i = 0; i < n; i += 1) {
        const c = controls.nth(i);
        const scope = await c.evaluate((el) => {
          const box = el.closest('tr, li, article, section, .card, fieldset');
          return box ? box.textContent : '';
        });
        if (scope.includes(provider)) target = c;
      }
      if (!target && n === 1) target = controls.first();
      if (!target) {
        // Screen not ready: drive the flow through the API's start (a
        // same-origin POST, as the screen does) in the browser, and say so.
        viaScreen = false;
        log(`ui-step:   no "Connect" control for ${provider} on the Connections screen; using POST /api/connections/${provider}/start`);
        const authorize = await page.evaluate(async (p) => {
          const r = await fetch(`/api/connections/${encodeURIComponent(p)}/start`, { method: 'POST' });
          return (await r.json()).authorize_url;
        }, provider);
        await page.goto(authorize);
      } else {
        await target.click();
      }
      await page.waitForURL((u) => u.href.startsWith(`${idp}/`), { timeout: 15_000 });
    });

    await step('provider-login-and-consent', checks, async () => {
      // oidc-provider's login page, then its consent page.
      await page.locator('input[name="login"]').fill('ui-user');
      await page.locator('input[name="password"]').fill('any-password');
      await page.locator('button[type="submit"]').first().click();
      await page.waitForLoadState('domcontentloaded');
      if (page.url().startsWith(`${idp}/`)) {
        await page.locator('button[type="submit"]').first().click();
      }
      await page.waitForURL((u) => u.href.startsWith(BASE()), { timeout: 15_000 });
    });

    await step('back-on-latchkey-connected', checks, async () => {
      const url = new URL(page.url());
      if (url.pathname.startsWith('/api/')) {
        throw new Error(`the callback ended on ${url.pathname}: ${(await page.locator('body').innerText()).slice(0, 300)}`);
      }
      // The home page says "Connected …" once and then drops the query
      // (history.replaceState), so by the time this looks the address may
      // already be plain `/`: then the message is the proof.
      const landed = url.searchParams.get('connected') === provider || url.pathname.startsWith('/connections');
      if (!landed) {
        if (url.pathname !== '/') {
          throw new Error(`landed on ${url.pathname}${url.search}, expected /?connected=${provider}`);
        }
        await page.getByText(/^Connected /).first().waitFor({ timeout: 10_000 });
      }
      await page.waitForFunction(() => {
        const app = document.getElementById('app');
        return app && !app.hasAttribute('aria-busy') && app.querySelector('h1');
      });
      // The session cookie was not needed for the callback, and is still
      // there for the next screen.
      if (!url.pathname.startsWith('/connections')) {
        await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Connections', exact: true }).click();
        await screen(page, 'Connections');
      }
      const part = page.locator('main :is(tr, li, article, section, .card)').filter({ hasText: provider }).last();
      await part.getByText(/connected/i).first().waitFor();
      const text = await part.innerText();
      if (!/\bconnected\b/i.test(text) || /needs reconnect/i.test(text)) {
        throw new Error(`the ${provider} entry says: ${text.slice(0, 200)}`);
      }
      await shoot(page, 'connections-connected', layout);
      a11y.push(...(await axe(page, 'connections-connected')));
      for (const l of layout) log(`ui-layout: ${l}`);
      for (const v of a11y) log(`ui-a11y: SERIOUS ${v}`);
      if (a11y.length || layout.length) throw new Error(`${a11y.length} serious axe violations, ${layout.length} layout problems`);
      if (!viaScreen) throw new Error('the Connections screen has no "Connect" control for the provider');
    });
  } finally {
    await browser.close();
  }
});
