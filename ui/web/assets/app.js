// The UI's shell: finds out who is signed in, draws the layout and the
// navigation, and routes between screens with the History API. Each screen
// is a module in screens/ exporting `title` and `render(main, ctx)`; it is
// loaded when first visited, so the first page load stays small.

import { api, setUnauthenticatedHandler } from './lib/api.js';
import { h, replace } from './lib/dom.js';
import { explain } from './lib/errors.js';

// path → [module, who may see it]. 'public' screens work signed out.
const ROUTES = {
  '/': ['home', 'any'],
  '/vault': ['vault', 'admin'],
  '/connections': ['connections', 'any'],
  '/keys': ['keys', 'any'],
  '/usage': ['usage', 'any'],
  '/realtime': ['realtime', 'any'],
  '/audit': ['audit', 'admin'],
  '/users': ['users', 'admin'],
  '/account': ['account', 'any'],
  '/login': ['login', 'public'],
  '/setup': ['setup', 'public'],
  '/invite': ['invite', 'public'],
};

const NAV = [
  ['/', 'Home'],
  ['/vault', 'Vault'],
  ['/connections', 'Connections'],
  ['/keys', 'API keys'],
  ['/usage', 'Usage'],
  ['/realtime', 'Realtime'],
  ['/audit', 'Audit log'],
  ['/users', 'Users'],
  ['/account', 'Account'],
];

const app = document.getElementById('app');
const state = { me: null, setupNeeded: false };

function allowed(who) {
  if (who === 'public' || who === 'any') return true;
  return state.me && (state.me.role === 'admin' || state.me.via === 'host');
}

/** Goes to `path` (same origin) without reloading the page. */
export function navigate(path, { replace: replaceEntry = false } = {}) {
  if (replaceEntry) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  route();
}

async function loadMe() {
  try {
    state.me = await api('GET', '/api/auth/me', undefined, { quiet401: true });
  } catch (err) {
    if (err.status !== 401) throw err;
    state.me = null;
  }
  return state.me;
}

function header() {
  const current = location.pathname;
  const links = NAV.filter(([path]) => allowed(ROUTES[path][1])).map(([path, label]) =>
    h('li', {}, h('a', { href: path, 'aria-current': path === current ? 'page' : null }, label)),
  );
  const signOut = h('button', { type: 'button', class: 'link' }, 'Sign out');
  signOut.addEventListener('click', async () => {
    try {
      await api('POST', '/api/auth/logout');
    } catch {
      // Signed out either way: the cookie is cleared or already invalid.
    }
    state.me = null;
    navigate('/login');
  });
  return h(
    'header',
    { class: 'top' },
    h('a', { class: 'brand', href: '/' }, h('img', { src: '/assets/icon.svg', alt: '', width: 28, height: 28 }), 'Latchkey'),
    h(
      'nav',
      { 'aria-label': 'Main' },
      h('ul', {}, links),
    ),
    h('div', { class: 'who' }, h('span', {}, state.me.username, ' · ', state.me.role), signOut),
  );
}

async function route() {
  const path = location.pathname.replace(/\/+$/, '') || '/';
  let entry = ROUTES[path];
  const main = h('main', { id: 'main', tabindex: '-1' });

  if (!entry) {
    document.title = 'Not found · Latchkey';
    replace(app, state.me ? header() : null, main);
    replace(main, h('h1', {}, 'Page not found'), h('p', {}, h('a', { href: '/' }, 'Go to the home screen')));
    app.removeAttribute('aria-busy');
    return;
  }
  // First run: only the setup wizard makes sense until an owner exists.
  if (state.setupNeeded && path !== '/setup') {
    navigate('/setup', { replace: true });
    return;
  }
  if (entry[1] !== 'public' && !state.me) {
    const next = path === '/' ? '' : `?next=${encodeURIComponent(path)}`;
    navigate(`/login${next}`, { replace: true });
    return;
  }
  if (!allowed(entry[1])) {
    entry = null;
  }

  const shell = entry && entry[1] === 'public' ? [main] : [header(), main];
  replace(app, ...shell);
  app.setAttribute('aria-busy', 'true');
  if (!entry) {
    document.title = 'Not allowed · Latchkey';
    replace(main, h('h1', {}, 'Not allowed'), h('p', {}, 'Only administrators can open this screen.'));
    app.removeAttribute('aria-busy');
    return;
  }
  try {
    const screen = await import(`./screens/${entry[0]}.js`);
    document.title = `${screen.title} · Latchkey`;
    await screen.render(main, context());
  } catch (err) {
    replace(main, h('h1', {}, 'Something went wrong'), h('p', { role: 'alert', class: 'msg error' }, explain(err)));
  } finally {
    app.removeAttribute('aria-busy');
  }
  // Move focus to the new content for keyboard and screen-reader users,
  // unless the screen already focused a field of its own.
  if (!main.contains(document.activeElement)) main.focus({ preventScroll: true });
}

function context() {
  return {
    me: state.me,
    isAdmin: Boolean(state.me && (state.me.role === 'admin' || state.me.via === 'host')),
    params: new URLSearchParams(location.search),
    navigate,
    // After sign-in or setup: learn the new identity, then go on.
    async signedIn(next = '/') {
      state.setupNeeded = false;
      await loadMe();
      navigate(next.startsWith('/') && !next.startsWith('//') ? next : '/', { replace: true });
    },
    reloadMe: loadMe,
  };
}

// Same-origin links navigate in place; everything else behaves normally.
document.addEventListener('click', (ev) => {
  const a = ev.target instanceof Element ? ev.target.closest('a[href]') : null;
  if (!a || a.target || a.hasAttribute('download') || ev.defaultPrevented) return;
  if (ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || url.pathname.startsWith('/api/')) return;
  ev.preventDefault();
  navigate(url.pathname + url.search + url.hash);
});
window.addEventListener('popstate', route);

setUnauthenticatedHandler(() => {
  if (state.me) {
    state.me = null;
    navigate('/login', { replace: true });
  }
});

async function boot() {
  try {
    const setup = await api('GET', '/api/setup');
    state.setupNeeded = Boolean(setup && setup.needed);
    if (!state.setupNeeded) await loadMe();
  } catch (err) {
    replace(app, h('main', { id: 'main' }, h('h1', {}, 'Latchkey'), h('p', { role: 'alert', class: 'msg error' }, explain(err))));
    app.removeAttribute('aria-busy');
    return;
  }
  await route();
}

boot();
