// The content box: the picture inside borders, caption bars or screenshot chrome, a port of
// registry/hashing/content.py content_box with the default TrimRules (see its docstring for
// the rules). The image is analysed after Pillow's reduce() to at most 1280 px per side; each
// row or column is compared with its per-channel median (numpy's, truncated to an integer).

import { reduceRGB, roundHalfEven } from './pillow.js';

const WORK_SIDE = 1280;

export const TRIM_RULES = Object.freeze({
  tol: 24,
  flat: 0.93,
  text: 0.4,
  textAlone: 0.75,
  minInk: 0.02,
  specks: 0.8,
  maxRun: 0.25,
  mid: 0.15,
  ink: 70,
  maxSide: 0.7,
  minKeep: 0.1,
  // Conservative: peel only the chrome whose colour is the edge's own (a frame, a caption bar),
  // stopping where another flat colour begins: that may be the picture's own sky.
  conservative: false,
});

/** content.FRAME_RULES: a video frame's letterbox and pillarbox bars, nothing more. */
export const FRAME_RULES = Object.freeze({ ...TRIM_RULES, conservative: true });

// The pixels of one line as [r, g, b, r, g, b, ...]: row `line` between columns from..to, or
// column `line` between rows from..to.
function lineOf(a, width, horizontal, line, from, to) {
  const n = to - from;
  const out = new Int16Array(n * 3);
  for (let i = 0; i < n; i++) {
    const p = horizontal ? (line * width + from + i) * 3 : ((from + i) * width + line) * 3;
    out[i * 3] = a[p];
    out[i * 3 + 1] = a[p + 1];
    out[i * 3 + 2] = a[p + 2];
  }
  return out;
}

// np.median(row, axis=0).astype(np.int16): per channel, the middle value (the truncated mean of
// the two middle values for an even count), found by counting.
function median(row) {
  const n = row.length / 3;
  const out = new Int16Array(3);
  const counts = new Int32Array(256);
  for (let c = 0; c < 3; c++) {
    counts.fill(0);
    for (let i = c; i < row.length; i += 3) counts[row[i]]++;
    const nth = (k) => { // k-th smallest, 0-based
      let seen = 0;
      for (let v = 0; v < 256; v++) {
        seen += counts[v];
        if (seen > k) return v;
      }
      return 255;
    };
    out[c] = n % 2 ? nth((n - 1) / 2) : Math.trunc((nth(n / 2 - 1) + nth(n / 2)) / 2);
  }
  return out;
}

function differences(row, colour) {
  const n = row.length / 3;
  const diff = new Int16Array(n);
  for (let i = 0; i < n; i++) {
    diff[i] = Math.max(Math.abs(row[i * 3] - colour[0]), Math.abs(row[i * 3 + 1] - colour[1]),
      Math.abs(row[i * 3 + 2] - colour[2]));
  }
  return diff;
}

function near(row, colour, tol) {
  const diff = differences(row, colour);
  let count = 0;
  for (let i = 0; i < diff.length; i++) if (diff[i] <= tol) count++;
  return count / diff.length;
}

function longestRun(diff, tol) {
  let best = 0;
  let run = 0;
  for (let i = 0; i < diff.length; i++) {
    run = diff[i] > tol ? run + 1 : 0;
    if (run > best) best = run;
  }
  return best;
}

function isText(row, bg, rules) {
  const diff = differences(row, bg);
  const n = diff.length;
  let nearCount = 0;
  let midCount = 0;
  let inkCount = 0;
  for (let i = 0; i < n; i++) {
    const d = diff[i];
    if (d <= rules.tol) nearCount++;
    else if (d < rules.ink) midCount++;
    if (d >= rules.ink) inkCount++;
  }
  const nearShare = nearCount / n;
  if (nearShare >= rules.specks) return true;
  if (inkCount / n < rules.minInk) return false;
  if (longestRun(diff, rules.tol) > rules.maxRun * n) return false;
  return nearShare >= rules.textAlone || (nearShare >= rules.text && midCount / n <= rules.mid);
}

// Walk lines start, start+step, ... while they are chrome; return the first that is picture.
// `lines` is the number of lines on this axis, [from, to) the span of each line looked at.
function peel(a, width, horizontal, lines, from, to, start, stop, step, rules) {
  const n = Math.abs(stop - start);
  const limit = Math.trunc(rules.maxSide * lines);
  let bg = null;
  let line = start;
  if (to - from === 0) return start;
  for (let i = 0, end = Math.min(n, limit); i < end; i++) {
    const row = lineOf(a, width, horizontal, line, from, to);
    const colour = median(row);
    if (near(row, colour, rules.tol) >= rules.flat) {
      if (rules.conservative && bg !== null && Math.max(Math.abs(colour[0] - bg[0]),
        Math.abs(colour[1] - bg[1]), Math.abs(colour[2] - bg[2])) > rules.tol) return line;
      if (bg === null || !rules.conservative) bg = colour;
    } else if (bg === null || !isText(row, bg, rules)) {
      return line;
    }
    line += step;
  }
  return line;
}

/** [left, top, right, bottom] (right and bottom exclusive) of the picture in an RGB image; the
 * whole image when nothing is peeled. */
export function contentBox(rgb, width, height, rules = TRIM_RULES) {
  const factor = Math.max(1, Math.ceil(Math.max(width, height) / WORK_SIDE));
  const small = reduceRGB(rgb, width, height, factor);
  const a = small.data;
  const w = small.width;
  const h = small.height;
  let top = 0;
  let bottom = h;
  let left = 0;
  let right = w;
  // A second pass starts its peel afresh at the new edge; the conservative box must not, or it
  // would peel the picture's own flat edge once the bar is gone.
  for (let pass = 0; pass < (rules.conservative ? 1 : 3); pass++) {
    const before = [top, bottom, left, right].join();
    top = peel(a, w, true, h, left, right, top, bottom, 1, rules);
    if (top >= bottom) break;
    bottom = peel(a, w, true, h, left, right, bottom - 1, top - 1, -1, rules) + 1;
    left = peel(a, w, false, w, top, bottom, left, right, 1, rules);
    if (left >= right) break;
    right = peel(a, w, false, w, top, bottom, right - 1, left - 1, -1, rules) + 1;
    if ([top, bottom, left, right].join() === before) break;
  }
  if (bottom - top < rules.minKeep * h || right - left < rules.minKeep * w) {
    return [0, 0, width, height];
  }
  const sx = width / w;
  const sy = height / h;
  return [roundHalfEven(left * sx), roundHalfEven(top * sy), roundHalfEven(right * sx),
    roundHalfEven(bottom * sy)];
}
