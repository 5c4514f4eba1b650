// Shared helpers of Latchkey's browser tests: Debian's headless Chromium
// driven by playwright-core (no browser download), named steps that save a
// screenshot when they fail, the checks every page gets (web storage, CSP
// header, console errors), TOTP codes from `oathtool`, QR decoding with
// `zbarimg`, screenshots in four variants, axe-core, and page-load figures.
//
// The scripts are started by tests/it/ui.rs with these environment variables:
//   LK_URL        https://localhost:PORT of the running `latchkey serve`
//   LK_SPKI       base64 SHA-256 of the server certificate's SubjectPublicKeyInfo:
//                 the one certificate Chromium accepts besides its trust store
//   LK_ARTIFACTS  folder for screenshots, a11y and perf JSON (target/ui-artifacts/…)
//   NODE_EXTRA_CA_CERTS  the server's CA, for Node's own fetch()
// and script-specific ones (see each script's header).

import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);

export function env(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (the Rust test in tests/it/ui.rs sets it)`);
  return v;
}

export const BASE = () => env('LK_URL');
export const ARTIFACTS = () => env('LK_ARTIFACTS');

export function artifact(...parts) {
  const p = join(ARTIFACTS(), ...parts);
  mkdirSync(join(p, '..'), { recursive: true });
  return p;
}

export function log(...args) {
  console.log(...args);
}

// ---------------------------------------------------------------- browser

/** The system Chromium, headless, trusting exactly the server's key. */
export async function launch() {
  const spki = env('LK_SPKI');
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    timeout: 30_000,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      // Honoured because Playwright runs Chromium with a fresh
      // --user-data-dir: the certificate whose public key hashes to this
      // value is accepted, every other certificate error still fails.
      `--ignore-certificate-errors-spki-list=${spki}`,
    ],
  });
}

export const DESKTOP = { width: 1280, height: 800 };
export const PHONE = { width: 390, height: 844 };

/** A fresh context (own cookies and cache) with the page checks attached. */
export async function newContext(browser, checks, opts = {}) {
  const ctx = await browser.newContext({ viewport: DESKTOP, colorScheme: 'light', ...opts });
  ctx.setDefaultTimeout(15_000);
  ctx.on('page', (p) => checks.watch(p));
  return ctx;
}

// ---------------------------------------------------------------- checks

/**
 * What must hold on every page at every moment: no console errors (CSP
 * violations are reported there), no uncaught exceptions, no failed asset,
 * a CSP header on every document, nothing in localStorage/sessionStorage.
 */
export class Checks {
  constructor() {
    this.problems = [];
    this.pages = new Set();
    this.documents = 0;
  }

  watch(page) {
    this.pages.add(page);
    page.on('close', () => this.pages.delete(page));
    page.on('console', (msg) => {
      if (msg.type() !== 'error') return;
      // Only Latchkey's pages (not an OAuth provider's) are judged here.
      if (!page.url().startsWith(BASE())) return;
      const text = msg.text();
      // fetch() answers with an API error status (401 signed out, 403
      // reauth_required, 409 …) are handled by the UI; Chromium still logs
      // them. Assets are checked separately below.
      if (/^Failed to load resource: the server responded with a status of 4\d\d/.test(text)) return;
      this.problems.push(`console error on ${page.url()}: ${text}`);
    });
    page.on('pageerror', (err) => this.problems.push(`uncaught exception on ${page.url()}: ${err.message}`));
    page.on('response', (res) => {
      const url = new URL(res.url());
      if (url.origin !== new URL(BASE()).origin) return;
      if (res.request().resourceType() === 'document') {
        this.documents += 1;
        const csp = res.headers()['content-security-policy'] || '';
        if (res.status() < 300 && !/default-src 'self'/.test(csp)) {
          this.problems.push(`no CSP header on ${res.url()} (${res.status()}): ${JSON.stringify(csp)}`);
        }
      }
      if (url.pathname.startsWith('/assets/') && res.status() >= 400) {
        this.problems.push(`asset ${url.pathname} answered ${res.status()}`);
      }
    });
  }

  /** Web storage is empty on every open page of our origin. */
  async storage(where) {
    for (const page of this.pages) {
      if (!page.url().startsWith(BASE())) continue;
      const n = await page
        .evaluate(() => ({ local: Object.keys(localStorage), session: Object.keys(sessionStorage) }))
        .catch(() => null);
      if (n && (n.local.length || n.session.length)) {
        this.problems.push(`web storage used (${where}): localStorage ${JSON.stringify(n.local)}, sessionStorage ${JSON.stringify(n.session)}`);
      }
    }
  }

  assertClean(where) {
    if (this.problems.length) {
      const all = this.problems.splice(0);
      throw new Error(`page checks failed (${where}):\n  ${all.join('\n  ')}`);
    }
  }
}

// ---------------------------------------------------------------- steps

const results = [];

/**
 * Runs one named step: logs it, and on failure saves a screenshot of every
 * open page to failures/<step>[-n].png before rethrowing.
 */
export async function step(name, checks, fn) {
  const t0 = performance.now();
  log(`ui-step: ${name} …`);
  try {
    const out = await fn();
    await checks.storage(name);
    checks.assertClean(name);
    const ms = Math.round(performance.now() - t0);
    results.push({ name, ok: true, ms });
    log(`ui-step: ${name} ok (${ms} ms)`);
    return out;
  } catch (err) {
    results.push({ name, ok: false, error: String(err && err.message) });
    let i = 0;
    for (const page of checks.pages) {
      const file = artifact('failures', `${name}${i ? `-${i}` : ''}.png`);
      await page.screenshot({ path: file, fullPage: true }).catch(() => {});
      log(`ui-step: ${name} FAILED — screenshot ${file} (${page.url()})`);
      i += 1;
    }
    throw err;
  }
}

/** Runs `main`, then reports every step; exits 1 on any failure. */
export async function run(main) {
  // The Rust test kills this process at its own limit; stop (and close the
  // browser, through the `finally` of each script) well before that.
  const deadline = Number(process.env.LK_DEADLINE_MS || 0);
  if (deadline > 0) {
    setTimeout(() => {
      console.error(`ui-test: deadline of ${deadline} ms passed`);
      process.exit(1);
    }, deadline).unref();
  }
  let code = 0;
  try {
    await main();
  } catch (err) {
    console.error(`ui-test failed: ${err && err.stack ? err.stack : err}`);
    code = 1;
  }
  const failed = results.filter((r) => !r.ok).length;
  log(`ui-steps: ${results.length - failed} passed, ${failed} failed`);
  process.exit(code);
}

// ---------------------------------------------------------------- screens

/** Waits until the screen named `h1` is rendered and the app is idle. */
export async function screen(page, h1) {
  await page.getByRole('heading', { level: 1, name: h1, exact: true }).waitFor({ state: 'visible' });
  await page.waitForFunction(() => {
    const app = document.getElementById('app');
    return app && !app.hasAttribute('aria-busy');
  });
}

/** `goto(path)` then wait for the screen; returns the document response. */
export async function open(page, path, h1) {
  const res = await page.goto(new URL(path, BASE()).href, { waitUntil: 'domcontentloaded' });
  await screen(page, h1);
  return res;
}

/** Clicks a nav link and waits for its screen. */
export async function nav(page, name) {
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name, exact: true }).click();
  await screen(page, name);
}

// ---------------------------------------------------------------- TOTP

function unixNow() {
  return Math.floor(Date.now() / 1000);
}

/** `oathtool --totp -b --now @T SECRET`: an implementation nobody here wrote. */
export function totpAt(secret, unix) {
  const code = execFileSync('oathtool', ['--totp', '-b', '--now', `@${unix}`, secret], {
    encoding: 'utf8',
    timeout: 10_000,
  }).trim();
  if (!/^\d{6}$/.test(code)) throw new Error(`oathtool printed ${JSON.stringify(code)}`);
  return code;
}

/**
 * The user's authenticator app. The server accepts each 30 s step once,
 * within ±1 step of its clock: hand out the earliest step not used yet in
 * that window, and wait (< 31 s) for the next step when it is used up
 * (otherwise the server answers `code_replayed`).
 */
export class Authenticator {
  constructor(secret) {
    this.secret = secret;
    this.last = null;
  }

  async code() {
    for (;;) {
      const now = unixNow();
      const current = Math.floor(now / 30);
      const earliest = current - 1 + (now % 30 >= 28 ? 1 : 0);
      const s = this.last === null ? earliest : Math.max(this.last + 1, earliest);
      if (s <= current + 1) {
        this.last = s;
        return totpAt(this.secret, s * 30);
      }
      const wait = (30 - (now % 30)) * 1000 + 200;
      log(`ui-step:   (waiting ${Math.round(wait / 1000)} s for a fresh TOTP step)`);
      await new Promise((r) => setTimeout(r, wait));
    }
  }
}

/** Decodes a QR code image with `zbarimg` (zbar-tools); returns its text. */
export function decodeQr(pngPath) {
  return execFileSync('zbarimg', ['--raw', '-q', pngPath], {
    encoding: 'utf8',
    timeout: 10_000,
    // zbarimg's image library complains on stderr about a missing D-Bus.
    stdio: ['ignore', 'pipe', 'ignore'],
  }).trim();
}

// ---------------------------------------------------------------- screenshots

/**
 * Screenshots of the current screen at desktop and phone width, light and
 * dark, as <name>-<desktop|phone>-<light|dark>.png (full page). At phone
 * width the page must not scroll sideways.
 */
export async function shoot(page, name, problems) {
  const before = page.viewportSize();
  for (const [size, viewport] of [
    ['desktop', DESKTOP],
    ['phone', PHONE],
  ]) {
    await page.setViewportSize(viewport);
    for (const scheme of ['light', 'dark']) {
      await page.emulateMedia({ colorScheme: scheme });
      await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
      await page.screenshot({ path: artifact('screens', `${name}-${size}-${scheme}.png`), fullPage: true });
    }
    if (size === 'phone') {
      const o = await page.evaluate(() => {
        const se = document.scrollingElement;
        const wide = [];
        if (se.scrollWidth > window.innerWidth) {
          for (const el of document.querySelectorAll('body *')) {
            const r = el.getBoundingClientRect();
            if (r.right > window.innerWidth + 1 && el.getClientRects().length) {
              wide.push(`${el.tagName.toLowerCase()}${el.className ? `.${String(el.className).split(' ').join('.')}` : ''} (right ${Math.round(r.right)})`);
            }
          }
        }
        return { scrollWidth: se.scrollWidth, innerWidth: window.innerWidth, wide: wide.slice(0, 8) };
      });
      if (o.scrollWidth > o.innerWidth) {
        problems.push(`${name}: horizontal overflow at phone width (${o.scrollWidth} > ${o.innerWidth}): ${o.wide.join(', ')}`);
      }
    }
  }
  await page.setViewportSize(before);
  await page.emulateMedia({ colorScheme: 'light' });
}

// ---------------------------------------------------------------- axe

const AXE_SOURCE = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

/**
 * axe-core on the current screen, light and dark (contrast differs). Its
 * source is evaluated through the DevTools protocol (page.evaluate), which
 * the page's CSP does not govern, so the CSP stays strict for the app
 * itself. Returns the serious/critical violations; saves the JSON.
 */
export async function axe(page, name) {
  const out = {};
  const bad = [];
  for (const scheme of ['light', 'dark']) {
    await page.emulateMedia({ colorScheme: scheme });
    await page.evaluate(AXE_SOURCE);
    const r = await page.evaluate(async () => {
      // eslint-disable-next-line no-undef
      const res = await axe.run(document, { resultTypes: ['violations'] });
      return {
        passes: res.passes.length,
        violations: res.violations.map((v) => ({
          id: v.id,
          impact: v.impact,
          help: v.help,
          nodes: v.nodes.map((n) => ({ target: n.target, summary: n.failureSummary })),
        })),
      };
    });
    // A run that checked nothing would pass everything.
    if (!(r.passes > 10)) throw new Error(`axe-core passed only ${r.passes} rules on ${name}: did it run?`);
    out[scheme] = { rules_passed: r.passes, violations: r.violations };
    for (const v of r.violations) {
      const line = `${name} (${scheme}): ${v.impact} ${v.id}: ${v.help} — ${v.nodes.map((n) => n.target.join(' ')).slice(0, 5).join(', ')}`;
      if (v.impact === 'serious' || v.impact === 'critical') bad.push(line);
      else log(`ui-a11y: ${line}`);
    }
  }
  await page.emulateMedia({ colorScheme: 'light' });
  writeFileSync(artifact('a11y', `${name}.json`), JSON.stringify(out, null, 2));
  return bad;
}

// ---------------------------------------------------------------- perf

/** Set before any page script runs: notes when the first screen is ready. */
function readyProbe() {
  window.__lkReady = null;
  const check = () => {
    const app = document.getElementById('app');
    if (window.__lkReady === null && app && !app.hasAttribute('aria-busy') && app.querySelector('h1')) {
      window.__lkReady = performance.now();
    }
  };
  new MutationObserver(check).observe(document, {
    subtree: true,
    childList: true,
    attributes: true,
    attributeFilter: ['aria-busy'],
  });
}

/**
 * First load of `path` in a fresh context (cold cache): bytes transferred
 * (CDP Network.loadingFinished encodedDataLength), requests, and times from
 * navigation start: DOMContentLoaded, load, and interactive (the screen's
 * h1 rendered and #app no longer aria-busy).
 */
export async function measure(browser, checks, path, h1, contextOpts = {}) {
  const ctx = await newContext(browser, checks, contextOpts);
  await ctx.addInitScript(readyProbe);
  const page = await ctx.newPage();
  const cdp = await ctx.newCDPSession(page);
  await cdp.send('Network.enable');
  await cdp.send('Network.setCacheDisabled', { cacheDisabled: false });
  let bytes = 0;
  let requests = 0;
  cdp.on('Network.requestWillBeSent', () => {
    requests += 1;
  });
  cdp.on('Network.loadingFinished', (e) => {
    bytes += e.encodedDataLength;
  });
  await open(page, path, h1);
  await page.waitForLoadState('load');
  await page.waitForFunction(() => window.__lkReady !== null);
  // Let late requests finish before counting.
  await page.waitForLoadState('networkidle').catch(() => {});
  const t = await page.evaluate(() => {
    const n = performance.getEntriesByType('navigation')[0];
    const resources = performance.getEntriesByType('resource');
    return {
      dcl: n.domContentLoadedEventEnd,
      load: n.loadEventEnd,
      ready: window.__lkReady,
      rt_transfer: n.transferSize + resources.reduce((s, r) => s + (r.transferSize || 0), 0),
      rt_count: 1 + resources.length,
    };
  });
  await ctx.close();
  return { path, bytes, requests, ...t };
}
