// A stacked bar chart in SVG, built with DOM calls (no markup strings), for
// the Usage screen. Colours come from CSS classes s1..s6; the chart is drawn
// at its container's pixel width so its text stays readable on a phone, and
// redrawn when that width changes.

const NS = 'http://www.w3.org/2000/svg';

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  }
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

const compact = new Intl.NumberFormat(undefined, { notation: 'compact', maximumFractionDigits: 1 });

/** 0..max → about four round steps; whole numbers only (requests and
 * tokens are counts, so a "0.3 requests" line would be noise). */
function ticks(max) {
  if (max <= 0) return [0, 1];
  const raw = max / 4;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = Math.max(1, [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw);
  const out = [];
  for (let v = 0; v <= max + step * 0.001; v += step) out.push(v);
  if (out[out.length - 1] < max) out.push(out[out.length - 1] + step);
  return out.map((v) => Math.round(v * 1000) / 1000);
}

function dayLabel(day) {
  const d = new Date(`${day}T00:00:00Z`);
  return d.toLocaleDateString(undefined, { month: 'short', day: 'numeric', timeZone: 'UTC' });
}

/**
 * days: ['YYYY-MM-DD', …]; series: [{ label, cls: 's1' }];
 * segments(dayIndex) → [{ series, value, part?: 'in'|'out', title }] bottom-up.
 */
function draw(width, { title, desc, days, series, segments }) {
  const height = 220;
  const pad = { top: 12, right: 8, bottom: 26, left: 44 };
  const plotW = Math.max(40, width - pad.left - pad.right);
  const plotH = height - pad.top - pad.bottom;
  const totals = days.map((_, i) => segments(i).reduce((a, s) => a + s.value, 0));
  const scale = ticks(Math.max(...totals, 0));
  const top = scale[scale.length - 1] || 1;
  const y = (v) => pad.top + plotH - (v / top) * plotH;
  const slot = plotW / Math.max(days.length, 1);
  const barW = Math.max(1, Math.min(28, slot * 0.72));

  const titleId = `chart-${Math.random().toString(36).slice(2)}`;
  const root = svg('svg', {
    class: 'chart',
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    role: 'img',
    'aria-labelledby': titleId,
  });
  root.append(svg('title', { id: titleId }, `${title}. ${desc}`));

  const grid = svg('g', { 'aria-hidden': 'true' });
  for (const v of scale) {
    grid.append(svg('line', { class: 'axis gridline', x1: pad.left, x2: pad.left + plotW, y1: y(v), y2: y(v) }));
    grid.append(svg('text', { x: pad.left - 6, y: y(v) + 4, 'text-anchor': 'end' }, compact.format(v)));
  }
  // Day labels: as many as fit without touching (about 48 px each).
  const every = Math.max(1, Math.ceil(days.length / Math.max(1, Math.floor(plotW / 48))));
  days.forEach((day, i) => {
    if (i % every !== 0) return;
    const x = pad.left + slot * i + slot / 2;
    grid.append(svg('text', { x, y: height - 8, 'text-anchor': 'middle' }, dayLabel(day)));
  });
  root.append(grid);

  const bars = svg('g');
  days.forEach((day, i) => {
    let acc = 0;
    const x = pad.left + slot * i + (slot - barW) / 2;
    for (const seg of segments(i)) {
      if (seg.value <= 0) continue;
      const y0 = y(acc);
      acc += seg.value;
      const y1 = y(acc);
      const rect = svg('rect', {
        class: `${seg.series.cls}${seg.part === 'out' ? ' out' : ''}`,
        x: x.toFixed(2),
        y: y1.toFixed(2),
        width: barW.toFixed(2),
        height: Math.max(0.5, y0 - y1).toFixed(2),
      });
      rect.append(svg('title', {}, seg.title));
      bars.append(rect);
    }
  });
  root.append(bars);
  root.append(svg('line', { class: 'axis', x1: pad.left, x2: pad.left + plotW, y1: y(0), y2: y(0), 'aria-hidden': 'true' }));
  return root;
}

/**
 * Draws into `holder` (a block element) and keeps the drawing as wide as
 * the holder. Returns a function that stops following resizes.
 */
export function stackedBars(holder, spec) {
  let last = 0;
  const paint = () => {
    const width = Math.floor(holder.clientWidth);
    if (!width || width === last) return;
    last = width;
    holder.replaceChildren(draw(width, spec));
  };
  paint();
  if (!last) holder.replaceChildren(draw(640, spec)); // not laid out yet
  const ro = new ResizeObserver(() => paint());
  ro.observe(holder);
  return () => ro.disconnect();
}
