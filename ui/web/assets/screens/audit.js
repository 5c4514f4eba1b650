// Audit log (admins): who did what, newest first, filtered and paged with
// the server's `next_before` cursor. Times are shown in local time.

import { api, withQuery } from '../lib/api.js';
import { h, replace, field, message, fmtTime } from '../lib/dom.js';
import { explain } from '../lib/errors.js';

export const title = 'Audit log';

const PAGE = 50;
const OUTCOMES = [
  { value: '', label: 'Any' },
  { value: 'success', label: 'Success' },
  { value: 'failure', label: 'Failure' },
];

export async function render(main, ctx) {
  const p = ctx.params;
  const f = {
    actor: p.get('actor') || '',
    action: p.get('action') || '',
    outcome: ['success', 'failure'].includes(p.get('outcome')) ? p.get('outcome') : '',
  };
  // Cursors of the pages before this one: [undefined (newest), seq, seq, …].
  let cursors = [undefined];

  const actor = field({
    label: 'Actor',
    name: 'actor',
    value: f.actor,
    autocomplete: 'off',
    spellcheck: 'false',
    hint: 'A username, key:<id> or host.',
  });
  const action = field({
    label: 'Action',
    name: 'action',
    value: f.action,
    autocomplete: 'off',
    spellcheck: 'false',
    hint: 'e.g. login (also matches login.mfa), vault.reveal, key.create.',
  });
  const outcome = field({
    label: 'Outcome',
    name: 'outcome',
    type: 'select',
    options: OUTCOMES.map((o) => ({ ...o, selected: o.value === f.outcome })),
  });
  const form = h(
    'form',
    { class: 'card', 'aria-label': 'Audit filters' },
    h('div', { class: 'inline-fields filters' }, actor, action, outcome),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Filter')),
  );
  const out = h('div', { 'aria-live': 'polite' });
  const newest = h('button', { type: 'button', class: 'secondary' }, 'Newest');
  const older = h('button', { type: 'button', class: 'secondary' }, 'Older');
  const where = h('span', { class: 'muted' });
  const pager = h('nav', { class: 'row pager', 'aria-label': 'Audit pages' }, newest, older, where);

  replace(
    main,
    h('h1', {}, 'Audit log'),
    h(
      'p',
      { class: 'muted' },
      'Every sign-in (and failed attempt), lockout, MFA change, key and user change, invite, connection, vault change and vault reveal. Entries never contain secrets.',
    ),
    form,
    out,
    pager,
  );

  // key:<id> actors read better with the key's name (best effort).
  let keyNames = new Map();
  try {
    const keys = await api('GET', '/api/keys?all=true');
    keyNames = new Map(keys.map((k) => [k.id, `${k.name} (${k.owner})`]));
  } catch {
    // ids alone are still correct
  }
  // Key ids as targets of key.* events, too.
  const targetCell = (e) => {
    if (!e.target) return h('span', { class: 'muted' }, '—');
    const name = e.action.startsWith('key.') && keyNames.get(e.target);
    return name ? h('span', {}, h('span', { class: 'mono' }, e.target), h('br'), h('span', { class: 'hint' }, name)) : h('span', { class: 'mono' }, e.target);
  };
  const actorCell = (a) => {
    const m = /^key:(.+)$/.exec(a || '');
    const name = m && keyNames.get(m[1]);
    return name ? h('span', {}, h('span', { class: 'mono' }, a), h('br'), h('span', { class: 'hint' }, name)) : h('span', { class: 'mono' }, a);
  };

  function draw(events) {
    if (!events.length) {
      const filtered = f.actor || f.action || f.outcome;
      replace(
        out,
        h(
          'p',
          { class: 'empty' },
          cursors.length > 1 ? 'No older events.' : filtered ? 'No events match these filters.' : 'Nothing has been recorded yet.',
        ),
      );
      return;
    }
    const cols = ['At', 'Actor', 'Action', 'Target', 'Outcome', 'Address', 'Detail'];
    replace(
      out,
      h(
        'div',
        { class: 'table-wrap' },
        h(
          'table',
          { class: 'audit-table' },
          h('caption', {}, 'Audit events'),
          h('thead', {}, h('tr', {}, cols.map((c) => h('th', { scope: 'col' }, c)))),
          h(
            'tbody',
            {},
            events.map((e) =>
              h(
                'tr',
                {},
                h('td', { 'data-label': 'At' }, h('time', { datetime: new Date(e.at * 1000).toISOString() }, fmtTime(e.at))),
                h('td', { 'data-label': 'Actor' }, actorCell(e.actor)),
                h('td', { 'data-label': 'Action' }, h('code', {}, e.action)),
                h('td', { 'data-label': 'Target' }, targetCell(e)),
                h(
                  'td',
                  { 'data-label': 'Outcome' },
                  h('span', { class: `badge ${e.outcome === 'success' ? 'ok' : 'danger'}` }, e.outcome === 'success' ? 'Success' : 'Failure'),
                ),
                h('td', { 'data-label': 'Address' }, e.ip ? h('span', { class: 'mono' }, e.ip) : h('span', { class: 'muted' }, '—')),
                h('td', { 'data-label': 'Detail' }, e.detail || h('span', { class: 'muted' }, '—')),
              ),
            ),
          ),
        ),
      ),
    );
  }

  let next = null;
  async function load() {
    out.setAttribute('aria-busy', 'true');
    const before = cursors[cursors.length - 1];
    try {
      const page = await api('GET', withQuery('/api/audit', { ...f, before, limit: PAGE }));
      next = page.next_before;
      draw(page.events);
    } catch (err) {
      next = null;
      replace(out, message('error', explain(err)));
    } finally {
      out.removeAttribute('aria-busy');
    }
    older.hidden = next === null || next === undefined;
    newest.hidden = cursors.length <= 1;
    where.textContent = cursors.length > 1 ? `Page ${cursors.length}` : '';
    pager.hidden = older.hidden && newest.hidden;
  }

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    f.actor = actor.control.value.trim();
    f.action = action.control.value.trim();
    f.outcome = outcome.control.value;
    cursors = [undefined];
    history.replaceState(null, '', withQuery('/audit', f));
    await load();
  });
  older.addEventListener('click', async () => {
    if (next === null || next === undefined) return;
    cursors.push(next);
    await load();
    (older.hidden ? newest : older).focus();
  });
  newest.addEventListener('click', async () => {
    cursors = [undefined];
    await load();
    (older.hidden ? actor.control : older).focus();
  });

  await load();
}
