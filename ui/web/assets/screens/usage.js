// Usage: what the agent proxy forwarded, per UTC day, key, provider and
// model. Two stacked bar charts (requests; input and output tokens) and the
// table they are drawn from, which is also their accessible equivalent.

import { api, withQuery } from '../lib/api.js';
import { h, replace, field, message, fmtNumber } from '../lib/dom.js';
import { explain } from '../lib/errors.js';
import { stackedBars } from './usage-chart.js';

export const title = 'Usage';

const GROUPS = [
  { value: 'key', label: 'Key' },
  { value: 'provider', label: 'Provider' },
  { value: 'model', label: 'Model' },
];
// Colours s1..s6; with more than six groups the biggest five keep a colour
// and the rest share a neutral "Other" (s2 and s6 are close in hue).
const MAX_SERIES = 6;
const DAY_MS = 86400000;

const utcDay = (ms) => new Date(ms).toISOString().slice(0, 10);
const validDay = (s) => /^\d{4}-\d{2}-\d{2}$/.test(s || '') && !Number.isNaN(Date.parse(`${s}T00:00:00Z`));

function daysBetween(from, to) {
  const out = [];
  for (let t = Date.parse(`${from}T00:00:00Z`); t <= Date.parse(`${to}T00:00:00Z`) && out.length < 400; t += DAY_MS) {
    out.push(utcDay(t));
  }
  return out;
}

function num(n) {
  return h('td', { class: 'num' }, fmtNumber(n));
}

export async function render(main, ctx) {
  const p = ctx.params;
  const today = utcDay(Date.now());
  const f = {
    from: validDay(p.get('from')) ? p.get('from') : utcDay(Date.now() - 30 * DAY_MS),
    to: validDay(p.get('to')) ? p.get('to') : today,
    key: p.get('key') || '',
    provider: p.get('provider') || '',
    model: p.get('model') || '',
    group: GROUPS.some((g) => g.value === p.get('group')) ? p.get('group') : 'provider',
  };

  // Key ids → names (admins: everyone's keys, with their owners).
  let keys = [];
  try {
    keys = await api('GET', ctx.isAdmin ? '/api/keys?all=true' : '/api/keys');
  } catch {
    keys = []; // names are a nicety: ids still work
  }
  const byId = new Map(keys.map((k) => [k.id, k]));
  const keyName = (id) => {
    const k = byId.get(id);
    if (!k) return `key ${String(id).slice(0, 8)}…`;
    return ctx.isAdmin && k.owner && k.owner !== ctx.me.username ? `${k.name} (${k.owner})` : k.name;
  };

  const from = field({ label: 'From', name: 'from', type: 'date', value: f.from, max: today, required: true });
  const to = field({ label: 'To', name: 'to', type: 'date', value: f.to, max: today, required: true });
  const key = field({
    label: 'Key',
    name: 'key',
    type: 'select',
    options: [
      { value: '', label: 'All keys' },
      ...keys.map((k) => ({ value: k.id, label: `${keyName(k.id)}${k.revoked_at ? ' — revoked' : ''}`, selected: k.id === f.key })),
    ],
  });
  const providerList = h('datalist', { id: 'usage-providers' });
  const modelList = h('datalist', { id: 'usage-models' });
  const provider = field({ label: 'Provider', name: 'provider', value: f.provider, list: 'usage-providers', autocomplete: 'off', spellcheck: 'false', placeholder: 'Any' });
  const model = field({ label: 'Model', name: 'model', value: f.model, list: 'usage-models', autocomplete: 'off', spellcheck: 'false', placeholder: 'Any' });
  const group = field({
    label: 'Group by',
    name: 'group',
    type: 'select',
    options: GROUPS.map((g) => ({ ...g, selected: g.value === f.group })),
  });
  const form = h(
    'form',
    { class: 'card', 'aria-label': 'Usage filters' },
    h('div', { class: 'inline-fields filters' }, from, to, key, provider, model, group),
    providerList,
    modelList,
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Show')),
  );
  const out = h('div', { 'aria-live': 'polite' });
  replace(
    main,
    h('h1', {}, 'Usage'),
    h('p', { class: 'muted' }, 'Requests your keys sent through the agent proxy, and the tokens providers reported for them. Days are UTC days.'),
    form,
    out,
  );

  let stopCharts = [];
  function show(data) {
    stopCharts.forEach((s) => s());
    stopCharts = [];
    const rows = data.usage || [];
    // Suggestions for the text filters, from what this range holds.
    replace(providerList, [...new Set(rows.map((r) => r.provider))].sort().map((v) => h('option', { value: v })));
    replace(modelList, [...new Set(rows.map((r) => r.model))].sort().map((v) => h('option', { value: v })));

    const range = `${data.from} to ${data.to}`;
    if (!rows.length) {
      // Where agents reach this server (on the desktop: the loopback
      // listener, plain HTTP), not the page's own address.
      const base = (ctx.me.base_url || location.origin).replace(/\/+$/, '');
      replace(
        out,
        h(
          'div',
          { class: 'empty' },
          h('p', {}, h('strong', {}, `No proxied requests from ${range}.`)),
          h(
            'p',
            {},
            'Give a program an API key with a proxy scope (see ',
            h('a', { href: '/keys' }, 'API keys'),
            '), then point its SDK at Latchkey instead of the provider:',
          ),
          h('pre', { class: 'example', tabindex: 0 }, h('code', {}, `export OPENAI_BASE_URL=${base}/proxy/openai/v1\nexport OPENAI_API_KEY=lk_…`)),
          h('p', {}, 'Any configured provider works the same way: ', base, '/proxy/<provider>/…. Requests show up here within seconds.'),
        ),
      );
      return;
    }

    const totals = rows.reduce(
      (a, r) => ({
        requests: a.requests + r.requests,
        input: a.input + r.input_tokens,
        output: a.output + r.output_tokens,
        errors: a.errors + (r.errors || 0),
        audioIn: a.audioIn + (r.audio_input_tokens || 0),
        audioOut: a.audioOut + (r.audio_output_tokens || 0),
        seconds: a.seconds + (r.session_seconds || 0),
      }),
      { requests: 0, input: 0, output: 0, errors: 0, audioIn: 0, audioOut: 0, seconds: 0 },
    );

    // Series: the biggest groups by requests; the rest folded into "Other".
    const groupOf = (r) => (f.group === 'key' ? r.key_id : f.group === 'provider' ? r.provider : r.model);
    const groupLabel = (g) => (f.group === 'key' ? keyName(g) : g);
    const weight = new Map();
    for (const r of rows) weight.set(groupOf(r), (weight.get(groupOf(r)) || 0) + r.requests + 1e-9 * (r.input_tokens + r.output_tokens));
    const ranked = [...weight.keys()].sort((a, b) => weight.get(b) - weight.get(a));
    const named = ranked.length > MAX_SERIES ? ranked.slice(0, MAX_SERIES - 1) : ranked;
    const series = named.map((g, i) => ({ id: g, label: groupLabel(g), cls: `s${i + 1}` }));
    const other = ranked.length > MAX_SERIES ? { id: null, label: `Other (${ranked.length - named.length})`, cls: 'so' } : null;
    if (other) series.push(other);
    const seriesOf = (r) => series.find((s) => s.id === groupOf(r)) || other;

    const days = daysBetween(data.from, data.to);
    const index = new Map(days.map((d, i) => [d, i]));
    // cell[day][series] = {requests, input, output}
    const cells = days.map(() => series.map(() => ({ requests: 0, input: 0, output: 0 })));
    for (const r of rows) {
      const i = index.get(r.day);
      if (i === undefined) continue;
      const c = cells[i][series.indexOf(seriesOf(r))];
      c.requests += r.requests;
      c.input += r.input_tokens;
      c.output += r.output_tokens;
    }
    const by = GROUPS.find((g) => g.value === f.group).label.toLowerCase();

    const legend = (extra) =>
      h(
        'ul',
        { class: 'legend' },
        series.map((s) => h('li', {}, h('span', { class: `swatch ${s.cls}`, 'aria-hidden': 'true' }), s.label)),
        extra || null,
      );
    const reqHolder = h('div', { class: 'chart-box' });
    const tokHolder = h('div', { class: 'chart-box' });
    const charts = h(
      'div',
      { class: 'grid charts' },
      h(
        'section',
        { class: 'card', 'aria-labelledby': 'usage-req-title' },
        h('h2', { id: 'usage-req-title' }, 'Requests per day'),
        reqHolder,
        legend(),
      ),
      h(
        'section',
        { class: 'card', 'aria-labelledby': 'usage-tok-title' },
        h('h2', { id: 'usage-tok-title' }, 'Tokens per day'),
        tokHolder,
        legend([
          h('li', {}, h('span', { class: 'swatch key-in', 'aria-hidden': 'true' }), 'Input tokens (lower, solid)'),
          h('li', {}, h('span', { class: 'swatch key-out', 'aria-hidden': 'true' }), 'Output tokens (upper, faded)'),
        ]),
      ),
    );

    // The table: newest day first, totals at the foot.
    const sorted = [...rows].sort(
      (a, b) => b.day.localeCompare(a.day) || keyName(a.key_id).localeCompare(keyName(b.key_id)) || a.provider.localeCompare(b.provider) || a.model.localeCompare(b.model),
    );
    // Realtime sessions add audio tokens (part of input/output) and their
    // length in seconds.
    const cols = ['Day', 'Key', 'Provider', 'Model', 'Requests', 'Input tokens', 'Output tokens', 'Errors', 'Audio in', 'Audio out', 'Session seconds'];
    const numeric = new Set(cols.slice(4));
    // Eleven columns overflow a narrow window: the scrolling wrapper is a
    // labelled region that takes focus, so the keyboard can scroll it too.
    const tableEl = h(
      'div',
      { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': 'Usage by day (scrolls sideways)' },
      h(
        'table',
        { class: 'usage-table' },
        h('caption', {}, 'Usage by day'),
        h('thead', {}, h('tr', {}, cols.map((c) => h('th', { scope: 'col', class: numeric.has(c) ? 'num' : null }, c)))),
        h(
          'tbody',
          {},
          sorted.map((r) =>
            h(
              'tr',
              {},
              h('td', { 'data-label': 'Day' }, h('time', { datetime: r.day }, r.day)),
              h('td', { 'data-label': 'Key' }, keyName(r.key_id)),
              h('td', { 'data-label': 'Provider' }, r.provider),
              h('td', { 'data-label': 'Model', class: 'mono' }, r.model),
              [r.requests, r.input_tokens, r.output_tokens, r.errors || 0, r.audio_input_tokens || 0, r.audio_output_tokens || 0, r.session_seconds || 0].map((n, i) => {
                const td = num(n);
                td.setAttribute('data-label', cols[4 + i]);
                return td;
              }),
            ),
          ),
        ),
        h(
          'tfoot',
          {},
          h(
            'tr',
            {},
            h('th', { scope: 'row', colspan: 4, 'data-label': 'Total' }, `Total, ${range}`),
            [totals.requests, totals.input, totals.output, totals.errors, totals.audioIn, totals.audioOut, totals.seconds].map((n, i) => {
              const td = num(n);
              td.setAttribute('data-label', cols[4 + i]);
              return td;
            }),
          ),
        ),
      ),
    );

    const stat = (label, value, note) =>
      h('div', { class: 'card' }, h('p', { class: 'muted' }, label), h('p', { class: 'stat' }, fmtNumber(value)), note ? h('p', { class: 'hint' }, note) : null);
    replace(
      out,
      h(
        'div',
        { class: 'grid usage-stats' },
        stat('Requests', totals.requests, range),
        stat('Input tokens', totals.input),
        stat('Output tokens', totals.output),
        stat('Upstream errors', totals.errors, totals.requests ? `${((100 * totals.errors) / totals.requests).toFixed(1)}% of requests` : null),
      ),
      charts,
      h('p', { class: 'hint' }, 'The table below has the same numbers as the charts.'),
      tableEl,
    );

    const requestsTitle = `Requests per day by ${by}, ${range}`;
    stopCharts.push(
      stackedBars(reqHolder, {
        title: requestsTitle,
        desc: `${fmtNumber(totals.requests)} requests in all`,
        days,
        series,
        segments: (i) =>
          series.map((s, j) => ({
            series: s,
            value: cells[i][j].requests,
            title: `${days[i]} · ${s.label}: ${fmtNumber(cells[i][j].requests)} requests`,
          })),
      }),
      stackedBars(tokHolder, {
        title: `Tokens per day by ${by}, input below output, ${range}`,
        desc: `${fmtNumber(totals.input)} input and ${fmtNumber(totals.output)} output tokens in all`,
        days,
        series,
        segments: (i) => [
          ...series.map((s, j) => ({
            series: s,
            value: cells[i][j].input,
            part: 'in',
            title: `${days[i]} · ${s.label}: ${fmtNumber(cells[i][j].input)} input tokens`,
          })),
          ...series.map((s, j) => ({
            series: s,
            value: cells[i][j].output,
            part: 'out',
            title: `${days[i]} · ${s.label}: ${fmtNumber(cells[i][j].output)} output tokens`,
          })),
        ],
      }),
    );
  }

  async function load() {
    out.setAttribute('aria-busy', 'true');
    try {
      const data = await api(
        'GET',
        withQuery('/api/usage', { from: f.from, to: f.to, key: f.key, provider: f.provider, model: f.model }),
      );
      show(data);
    } catch (err) {
      replace(out, message('error', explain(err)));
    } finally {
      out.removeAttribute('aria-busy');
    }
  }

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (from.control.value && to.control.value && from.control.value > to.control.value) {
      replace(out, message('error', '“From” is after “To”: pick a start day before the end day.'));
      from.control.focus();
      return;
    }
    Object.assign(f, {
      from: from.control.value || f.from,
      to: to.control.value || f.to,
      key: key.control.value,
      provider: provider.control.value.trim(),
      model: model.control.value.trim(),
      group: group.control.value,
    });
    // Filters (never secrets) go into the address, so a view can be reloaded or shared.
    history.replaceState(null, '', withQuery('/usage', f));
    const button = form.querySelector('button[type="submit"]');
    button.disabled = true;
    await load();
    button.disabled = false;
  });
  // Changing the grouping needs no new data, but one path keeps it simple.
  group.control.addEventListener('change', () => form.requestSubmit());

  await load();
}
