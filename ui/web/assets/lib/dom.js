// Small DOM helpers. Everything is built with createElement/textContent:
// no innerHTML anywhere, so server data can never become markup, and the
// strict CSP (no inline scripts or styles) holds.

/**
 * h('button', { class: 'primary', onclick: fn }, 'Save')
 * Attributes: `class`, `for`, `on<event>` handlers, booleans (true → present,
 * false/null/undefined → absent), anything else via setAttribute.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2), v);
    } else if (k === 'value' && 'value' in el) {
      el.value = v;
    } else if (k === 'checked' || k === 'selected' || k === 'disabled') {
      el[k] = Boolean(v);
    } else {
      el.setAttribute(k === 'className' ? 'class' : k, v === true ? '' : String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces every child of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

let uid = 0;
/** A fresh element id, for label/input and aria-describedby pairs. */
export function nextId(prefix = 'f') {
  uid += 1;
  return `${prefix}-${uid}`;
}

/**
 * A labelled form control: { label, name, type, hint, ...inputAttrs }.
 * Returns the wrapper; the control is `wrapper.control`.
 */
export function field({ label, hint, type = 'text', options, ...attrs }) {
  const id = attrs.id || nextId(attrs.name || 'f');
  const hintId = hint ? `${id}-hint` : undefined;
  let control;
  if (type === 'select') {
    control = h(
      'select',
      { id, 'aria-describedby': hintId, ...attrs },
      (options || []).map((o) =>
        typeof o === 'string' ? h('option', { value: o }, o) : h('option', { value: o.value, selected: o.selected }, o.label),
      ),
    );
  } else if (type === 'textarea') {
    control = h('textarea', { id, 'aria-describedby': hintId, ...attrs });
  } else {
    control = h('input', { id, type, 'aria-describedby': hintId, ...attrs });
  }
  const wrapper = h(
    'div',
    { class: type === 'checkbox' ? 'field checkbox' : 'field' },
    type === 'checkbox' ? [control, h('label', { for: id }, label)] : [h('label', { for: id }, label), control],
    hint ? h('p', { class: 'hint', id: hintId }, hint) : null,
  );
  wrapper.control = control;
  return wrapper;
}

/** An inline message region; `kind` is 'error', 'ok' or 'info'. */
export function message(kind, text) {
  return h('p', { class: `msg ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text);
}

/**
 * Wires a <form>: on submit, disables its buttons, runs `action(form)`,
 * and shows a thrown error (via `explain`) in the form's message slot.
 */
export function onSubmit(form, action, explain) {
  const slot = h('div', { class: 'form-msg', 'aria-live': 'polite' });
  form.append(slot);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const buttons = [...form.querySelectorAll('button')];
    buttons.forEach((b) => (b.disabled = true));
    form.setAttribute('aria-busy', 'true');
    slot.replaceChildren();
    try {
      await action(form);
    } catch (err) {
      slot.replaceChildren(message('error', explain ? explain(err) : String(err.message || err)));
    } finally {
      buttons.forEach((b) => (b.disabled = false));
      form.removeAttribute('aria-busy');
    }
  });
  return slot;
}

/** A button that copies `text()` (or a string) to the clipboard. */
export function copyButton(text, label = 'Copy') {
  const btn = h('button', { type: 'button', class: 'secondary' }, label);
  btn.addEventListener('click', async () => {
    const value = typeof text === 'function' ? text() : text;
    try {
      await navigator.clipboard.writeText(value);
      btn.textContent = 'Copied';
    } catch {
      btn.textContent = 'Select and copy by hand';
    }
    setTimeout(() => (btn.textContent = label), 2000);
  });
  return btn;
}

/** Offers `text` as a file download (a Blob URL, revoked right after). */
export function downloadText(filename, text) {
  const url = URL.createObjectURL(new Blob([text], { type: 'text/plain' }));
  const a = h('a', { href: url, download: filename, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** Unix seconds (or an RFC 3339 string) → local date and time; '—' for none. */
export function fmtTime(t) {
  if (t === null || t === undefined || t === '') return '—';
  const d = typeof t === 'number' ? new Date(t * 1000) : new Date(t);
  if (Number.isNaN(d.getTime())) return String(t);
  return d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

/** Unix seconds (or RFC 3339) → "in 3 hours" / "5 minutes ago". */
export function fmtRelative(t) {
  if (t === null || t === undefined || t === '') return '—';
  const ms = typeof t === 'number' ? t * 1000 : Date.parse(t);
  if (Number.isNaN(ms)) return String(t);
  const diff = (ms - Date.now()) / 1000;
  const units = [
    ['year', 31536000],
    ['month', 2592000],
    ['day', 86400],
    ['hour', 3600],
    ['minute', 60],
    ['second', 1],
  ];
  const rtf = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });
  for (const [unit, secs] of units) {
    if (Math.abs(diff) >= secs || unit === 'second') return rtf.format(Math.round(diff / secs), unit);
  }
  return '';
}

/** 1234567 → "1,234,567". */
export function fmtNumber(n) {
  return typeof n === 'number' ? n.toLocaleString() : '—';
}

/**
 * A table with a caption: columns = [{ label, cell: row => node|string }].
 * Shows `empty` (a node or string) instead when there are no rows.
 */
export function table({ caption, columns, rows, empty }) {
  if (!rows.length) return typeof empty === 'string' ? h('p', { class: 'empty' }, empty) : empty;
  return h(
    'div',
    { class: 'table-wrap' },
    h(
      'table',
      {},
      caption ? h('caption', {}, caption) : null,
      h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col' }, c.label)))),
      h(
        'tbody',
        {},
        rows.map((r) => h('tr', {}, columns.map((c) => h('td', { 'data-label': c.label }, c.cell(r))))),
      ),
    ),
  );
}

/**
 * A modal dialog (native <dialog>: focus trapped, Escape closes).
 * Resolves with what `body(close)` passes to close(), or undefined.
 */
export function modal(title, body) {
  return new Promise((resolve) => {
    const titleId = nextId('dlg');
    const dlg = h('dialog', { 'aria-labelledby': titleId });
    const close = (value) => {
      dlg.close();
      dlg.remove();
      resolve(value);
    };
    dlg.addEventListener('cancel', (ev) => {
      ev.preventDefault();
      close(undefined);
    });
    dlg.append(h('h2', { id: titleId }, title), body(close));
    document.body.append(dlg);
    dlg.showModal();
  });
}

/** Asks a yes/no question; resolves true when confirmed. */
export function confirmDialog(title, text, confirmLabel = 'Confirm', danger = true) {
  return modal(title, (close) =>
    h(
      'div',
      {},
      h('p', {}, text),
      h(
        'div',
        { class: 'actions' },
        h('button', { type: 'button', class: danger ? 'danger' : 'primary', onclick: () => close(true) }, confirmLabel),
        h('button', { type: 'button', class: 'secondary', onclick: () => close(false) }, 'Cancel'),
      ),
    ),
  );
}
