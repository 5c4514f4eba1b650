// Realtime sessions: the WebSocket sessions open through the proxy right
// now (who, which provider, since when). Administrators see everyone's and
// may end one (the client gets close 4002); others see their own.

import { api } from '../lib/api.js';
import { h, replace, message, fmtTime, fmtRelative, table, confirmDialog } from '../lib/dom.js';
import { explain } from '../lib/errors.js';

export const title = 'Realtime sessions';

export async function render(main, ctx) {
  const out = h('div', { 'aria-live': 'polite' });
  const refresh = h('button', { type: 'button', class: 'secondary' }, 'Refresh');
  replace(
    main,
    h('h1', {}, 'Realtime sessions'),
    h(
      'p',
      { class: 'muted' },
      'Voice and realtime agents talking to a provider over a WebSocket through the proxy. A session ends when its key is revoked, its owner disabled or the vault sealed.',
    ),
    h('div', { class: 'actions' }, refresh),
    out,
  );

  async function end(s) {
    const ok = await confirmDialog(
      'End this session?',
      `The ${s.provider} session of ${s.user} is closed at once (code 4002).`,
      'End session',
    );
    if (!ok) return;
    try {
      await api('DELETE', `/api/realtime/sessions/${encodeURIComponent(s.id)}`);
      replace(out, message('ok', `Ended ${s.id}.`));
    } catch (err) {
      replace(out, message('error', explain(err)));
      return;
    }
    await load();
  }

  async function load() {
    let sessions;
    try {
      sessions = (await api('GET', '/api/realtime/sessions')).sessions;
    } catch (err) {
      replace(out, message('error', explain(err)));
      return;
    }
    const columns = [
      { label: 'Session', cell: (s) => s.id },
      { label: 'User', cell: (s) => s.user },
      { label: 'Key', cell: (s) => s.key_id },
      { label: 'Provider', cell: (s) => s.provider },
      {
        label: 'Since',
        cell: (s) => h('time', { datetime: new Date(s.started_at * 1000).toISOString(), title: fmtTime(s.started_at) }, fmtRelative(s.started_at)),
      },
    ];
    if (ctx.isAdmin) {
      columns.push({
        label: 'Actions',
        cell: (s) => h('button', { type: 'button', class: 'danger small', onclick: () => end(s) }, 'End'),
      });
    }
    replace(
      out,
      table({
        caption: `${sessions.length} open`,
        columns,
        rows: sessions,
        empty: 'No realtime session is open.',
      }),
    );
  }

  refresh.addEventListener('click', load);
  await load();
}
