// ANSI SGR colour codes -> DOM spans. Text only ever enters the page as text nodes, so a log
// line cannot inject markup; other escape sequences (cursor moves, titles) are dropped.

const ESCAPES = /\x1b\[([0-9;:?<=>]*)[ -\/]*([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]/g;

const PLAIN = Object.freeze({
  fg: null,
  bg: null,
  bold: false,
  dim: false,
  italic: false,
  underline: false,
  inverse: false,
});

// The 256-colour palette: 16 named colours, a 6x6x6 cube, then 24 greys.
function color256(n) {
  if (n < 16) return { cls: n };
  if (n >= 232) {
    const v = 8 + (n - 232) * 10;
    return { rgb: `rgb(${v},${v},${v})` };
  }
  const c = n - 16;
  const level = (x) => (x === 0 ? 0 : 55 + x * 40);
  return { rgb: `rgb(${level(Math.floor(c / 36))},${level(Math.floor(c / 6) % 6)},${level(c % 6)})` };
}

// Reads an extended colour (38;5;n or 38;2;r;g;b) starting at codes[i]; returns [colour, next i].
function extended(codes, i) {
  if (codes[i] === 5 && codes.length > i + 1) return [color256(codes[i + 1] & 255), i + 2];
  if (codes[i] === 2 && codes.length > i + 3) {
    const [r, g, b] = codes.slice(i + 1, i + 4).map((v) => v & 255);
    return [{ rgb: `rgb(${r},${g},${b})` }, i + 4];
  }
  return [null, codes.length];
}

function applySgr(style, params) {
  const codes = params === "" ? [0] : params.split(/[;:]/).map((p) => Number(p) || 0);
  const s = { ...style };
  for (let i = 0; i < codes.length;) {
    const code = codes[i++];
    if (code === 0) Object.assign(s, PLAIN);
    else if (code === 1) s.bold = true;
    else if (code === 2) s.dim = true;
    else if (code === 3) s.italic = true;
    else if (code === 4) s.underline = true;
    else if (code === 7) s.inverse = true;
    else if (code === 22) s.bold = s.dim = false;
    else if (code === 23) s.italic = false;
    else if (code === 24) s.underline = false;
    else if (code === 27) s.inverse = false;
    else if (code >= 30 && code <= 37) s.fg = { cls: code - 30 };
    else if (code >= 90 && code <= 97) s.fg = { cls: code - 90 + 8 };
    else if (code >= 40 && code <= 47) s.bg = { cls: code - 40 };
    else if (code >= 100 && code <= 107) s.bg = { cls: code - 100 + 8 };
    else if (code === 39) s.fg = null;
    else if (code === 49) s.bg = null;
    else if (code === 38 || code === 48) {
      const [colour, next] = extended(codes, i);
      if (code === 38) s.fg = colour;
      else s.bg = colour;
      i = next;
    }
  }
  // Back to plain means plain text nodes again, not empty spans.
  return Object.keys(PLAIN).every((key) => s[key] === PLAIN[key]) ? PLAIN : s;
}

// Splits a line into [{text, style}] segments. Each line starts plain: rows are rendered out of
// order, so no colour carries over from the line before.
function parse(line) {
  const segments = [];
  let style = PLAIN;
  let last = 0;
  for (const match of line.matchAll(ESCAPES)) {
    if (match.index > last) segments.push({ text: line.slice(last, match.index), style });
    if (match[2] === "m") style = applySgr(style, match[1]);
    last = match.index + match[0].length;
  }
  if (last < line.length) segments.push({ text: line.slice(last), style });
  return segments;
}

function colourOn(span, colour, kind) {
  if (!colour) return;
  if (colour.rgb) span.style[kind === "fg" ? "color" : "backgroundColor"] = colour.rgb;
  else span.classList.add(`ansi-${kind}-${colour.cls}`);
}

function spanFor({ text, style }) {
  if (style === PLAIN) return document.createTextNode(text);
  const span = document.createElement("span");
  span.textContent = text;
  let { fg, bg } = style;
  // Inverse video without explicit colours swaps the pane's own: ansi-fg-bg / ansi-bg-fg.
  if (style.inverse) [fg, bg] = [bg ?? { cls: "bg" }, fg ?? { cls: "fg" }];
  colourOn(span, fg, "fg");
  colourOn(span, bg, "bg");
  for (const flag of ["bold", "dim", "italic", "underline"])
    if (style[flag]) span.classList.add(`ansi-${flag}`);
  return span;
}

// A DocumentFragment for one line of terminal output.
export function render(line) {
  const fragment = document.createDocumentFragment();
  for (const segment of parse(line)) fragment.append(spanFor(segment));
  return fragment;
}
