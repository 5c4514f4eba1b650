// A passphrase-mode vault in a real browser (started by tests/it/ui.rs
// `ui_passphrase_vault_is_unsealed_from_the_pages`): the server starts
// sealed, and nobody can finish setup or sign in while it is (the TOTP
// secrets are sealed too), so the setup and sign-in pages must offer the
// unseal form themselves. Setup: a wrong passphrase is refused, the right
// one unseals, setup completes. Home: "Seal now", then unseal with the
// passphrase. Sign out, seal again (through the API, as a script on the
// host would), and the sign-in page unseals before the owner signs in.
//
// Environment (besides lib.mjs's): LK_SETUP_TOKEN, LK_PASSPHRASE,
// LK_ADMIN_TOKEN (the host's admin token, to seal while signed out).

import {
  Authenticator,
  BASE,
  Checks,
  artifact,
  axe,
  decodeQr,
  env,
  launch,
  newContext,
  open,
  run,
  screen,
  shoot,
  step,
} from './lib.mjs';

const USERNAME = 'owner';
// Only a test instance's password; never printed.
const PASSWORD = 'Juniper-Harbour-Compass-902';

run(async () => {
  const setupToken = env('LK_SETUP_TOKEN');
  const passphrase = env('LK_PASSPHRASE');
  const adminToken = env('LK_ADMIN_TOKEN');
  const checks = new Checks();
  const browser = await launch();
  const layout = [];
  const a11y = [];
  const ready = async () => (await fetch(`${BASE()}/ready`)).status;
  try {
    const ctx = await newContext(browser, checks);
    const page = await ctx.newPage();
    let totp;

    await step('setup-offers-unseal', checks, async () => {
      if ((await ready()) !== 503) throw new Error('the server should start sealed');
      await page.goto(`${BASE()}/setup#token=${setupToken}`, { waitUntil: 'domcontentloaded' });
      await screen(page, 'Set up Latchkey');
      await page.getByRole('heading', { name: 'The vault is sealed' }).waitFor();
      if ((await page.getByLabel('Username', { exact: true }).count()) !== 0) {
        throw new Error('the account form is shown while the vault is sealed');
      }
      await shoot(page, 'setup-sealed', layout);
      a11y.push(...(await axe(page, 'setup-sealed')));
      await page.getByLabel('Vault passphrase', { exact: true }).fill(`${passphrase}-wrong`);
      await page.getByRole('button', { name: 'Unseal', exact: true }).click();
      await page.getByText('That passphrase does not open the vault.', { exact: true }).waitFor();
      if ((await ready()) !== 503) throw new Error('a wrong passphrase unsealed the vault');
      await page.getByLabel('Vault passphrase', { exact: true }).fill(passphrase);
      await page.getByRole('button', { name: 'Unseal', exact: true }).click();
      await page.getByText('The vault is unsealed.', { exact: true }).waitFor();
      if ((await ready()) !== 200) throw new Error('the right passphrase did not unseal the vault');
    });

    await step('setup-completes', checks, async () => {
      await page.getByLabel('Username', { exact: true }).fill(USERNAME);
      await page.getByLabel('Password', { exact: true }).fill(PASSWORD);
      await page.getByLabel('Repeat password', { exact: true }).fill(PASSWORD);
      await page.getByRole('button', { name: 'Continue', exact: true }).click();
      await page.locator('.qr svg').waitFor({ state: 'visible' });
      const png = artifact('unseal-qr.png');
      await page.locator('.qr').screenshot({ path: png });
      const secret = new URL(decodeQr(png)).searchParams.get('secret');
      if (!secret) throw new Error('no secret in the QR code');
      totp = new Authenticator(secret);
      await page.getByLabel('Code from your authenticator app', { exact: true }).fill(await totp.code());
      await page.getByRole('button', { name: 'Confirm', exact: true }).click();
      await page.locator('ul.codes > li').first().waitFor({ state: 'visible' });
      await page.getByLabel('I have saved my recovery codes', { exact: true }).check();
      await page.getByRole('button', { name: 'Continue to Latchkey', exact: true }).click();
      await screen(page, 'Home');
    });

    await step('home-seals-and-unseals', checks, async () => {
      await page.getByRole('button', { name: 'Seal now', exact: true }).click();
      await page.getByRole('dialog').getByRole('button', { name: 'Seal now', exact: true }).click();
      const field = page.getByLabel('Passphrase', { exact: true });
      await field.waitFor({ state: 'visible' });
      if ((await ready()) !== 503) throw new Error('"Seal now" did not seal the vault');
      await shoot(page, 'home-sealed', layout);
      a11y.push(...(await axe(page, 'home-sealed')));
      await field.fill(passphrase);
      await page.locator('main').getByRole('button', { name: 'Unseal', exact: true }).click();
      await page.getByText('The vault is unsealed.', { exact: true }).waitFor();
      if ((await ready()) !== 200) throw new Error('Home did not unseal the vault');
    });

    await step('sign-in-offers-unseal', checks, async () => {
      await page.getByRole('button', { name: 'Sign out', exact: true }).click();
      await screen(page, 'Sign in');
      // Sealed again from the host while nobody is signed in.
      const r = await fetch(`${BASE()}/api/vault/seal`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${adminToken}` },
      });
      if (r.status !== 200) throw new Error(`sealing through the API: ${r.status}`);
      await open(page, '/login', 'Sign in');
      await page.getByRole('heading', { name: 'The vault is sealed' }).waitFor();
      await shoot(page, 'login-sealed', layout);
      a11y.push(...(await axe(page, 'login-sealed')));
      await page.getByLabel('Vault passphrase', { exact: true }).fill(passphrase);
      await page.getByRole('button', { name: 'Unseal', exact: true }).click();
      await page.getByText('The vault is unsealed.', { exact: true }).waitFor();
      await page.getByLabel('Username', { exact: true }).fill(USERNAME);
      await page.getByLabel('Password', { exact: true }).fill(PASSWORD);
      await page.getByRole('button', { name: 'Sign in', exact: true }).click();
      const code = page.getByLabel('Code from your authenticator app', { exact: true });
      await code.waitFor({ state: 'visible' });
      await code.fill(await totp.code());
      await page.getByRole('button', { name: 'Verify', exact: true }).click();
      await screen(page, 'Home');
    });

    await step('accessibility-and-layout', checks, async () => {
      if (a11y.length || layout.length) {
        throw new Error(`${a11y.length} serious/critical axe violations, ${layout.length} layout problems: ${[...a11y, ...layout].join('; ')}`);
      }
    });
    await ctx.close();
  } finally {
    await browser.close();
  }
});
