// The Realtime sessions screen in a real browser (started by tests/it/ui.rs
// `ui_realtime_sessions_are_listed_and_ended`): a session the test holds
// open through the proxy is listed (who, provider, since when), with no
// CSP violation or serious accessibility problem; the administrator ends
// it with "End" and a confirmation, and the list empties. The test checks
// that the client got close 4002.
//
// Environment (besides lib.mjs's): LK_SESSION (the signed-in owner's
// session cookie value), LK_PROVIDER (the provider of the held session).

import { BASE, Checks, axe, env, launch, log, newContext, open, run, shoot, step } from './lib.mjs';

run(async () => {
  const session = env('LK_SESSION');
  const provider = env('LK_PROVIDER');
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

    await step('realtime-listed', checks, async () => {
      await open(page, '/realtime', 'Realtime sessions');
      const row = page.locator('main tbody tr').filter({ hasText: provider });
      await row.first().waitFor();
      const text = await row.first().innerText();
      if (!text.includes('owner')) throw new Error(`the row does not name the user: ${text}`);
      await shoot(page, 'realtime', layout);
      a11y.push(...(await axe(page, 'realtime')));
    });

    await step('realtime-ended', checks, async () => {
      const row = page.locator('main tbody tr').filter({ hasText: provider }).first();
      await row.getByRole('button', { name: 'End', exact: true }).click();
      await page.getByRole('dialog').getByRole('button', { name: 'End session', exact: true }).click();
      await page.getByText('No realtime session is open.', { exact: true }).waitFor();
      for (const l of layout) log(`ui-layout: ${l}`);
      for (const v of a11y) log(`ui-a11y: SERIOUS ${v}`);
      if (a11y.length || layout.length) throw new Error(`${a11y.length} serious axe violations, ${layout.length} layout problems`);
    });
  } finally {
    await browser.close();
  }
});
