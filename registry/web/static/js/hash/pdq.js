// PDQ (Meta's 256-bit perceptual hash) as the `pdqhash` Python package computes it
// (registry/hashing/signals.py pdq_of), step by step in the reference's single precision:
//
// 1. luma = 0.299 R + 0.587 G + 0.114 B, summed in double and stored as float32 (what pdqhash's
//    numpy wrapper does before calling the C++ code);
// 2. a tent filter: two rounds of a box filter along rows then columns (Jarosz), window
//    ceil(side / 128) per axis, running sums in float32 with the reference's four phases;
// 3. decimation to 64 x 64 at the centres of 64 equal strips;
// 4. quality: the sum of quantised gradients of the 64 x 64 image / 90, at most 100;
// 5. the 16 x 16 low-frequency DCT (rows 1..16 of the 64-point DCT-II matrix), float32;
// 6. bit i*16+j is set when coefficient (i, j) exceeds the median (Torben's algorithm).
//
// Every float32 operation of the reference is rounded here with Math.fround (or by storing into a
// Float32Array), so on the same pixels the hash is the reference's, bit for bit.
//
// Hex: the 256 bits in pdqhash.compute order (coefficient 255 first) as one big-endian number,
// i.e. Meta's convention: 16-bit words w[15] .. w[0], 4 hex digits each.

const f32 = Math.fround;
const MIN_DIM = 5;

const R_TABLE = new Float64Array(256);
const G_TABLE = new Float64Array(256);
const B_TABLE = new Float64Array(256);
for (let v = 0; v < 256; v++) {
  R_TABLE[v] = v * 0.299;
  G_TABLE[v] = v * 0.587;
  B_TABLE[v] = v * 0.114;
}

// Rows 1..16 of the 64-point DCT-II matrix, scaled by sqrt(2/64), as the reference builds it.
const DCT = new Float32Array(16 * 64);
{
  const scale = f32(Math.sqrt(2.0 / 64));
  const PI = 3.14159265358979323846;
  for (let i = 0; i < 16; i++) {
    for (let j = 0; j < 64; j++) {
      DCT[i * 64 + j] = scale * Math.cos((PI / 2.0 / 64) * (i + 1) * (2 * j + 1));
    }
  }
}

/** Float luma of an RGB buffer (3 bytes per pixel), as pdqhash computes it, written to `out`
 * (a buffer of the same size may be reused). */
export function pdqLuma(rgb, width, height, out = new Float32Array(width * height)) {
  const n = width * height;
  for (let i = 0, p = 0; i < n; i++, p += 3) {
    out[i] = R_TABLE[rgb[p]] + G_TABLE[rgb[p + 1]] + B_TABLE[rgb[p + 2]];
  }
  return out;
}

let scratchA = new Float32Array(0);
let scratchB = new Float32Array(0);
let columnSums = new Float32Array(0);

function scratch(n, w) {
  if (scratchA.length < n) {
    scratchA = new Float32Array(n);
    scratchB = new Float32Array(n);
  }
  if (columnSums.length < w) columnSums = new Float32Array(w);
}

function windowSize(oldSide, newSide) {
  return Math.floor((oldSide + 2 * newSide - 1) / (2 * newSide));
}

const BLOCK = 8; // rows filtered side by side: independent running sums keep the CPU busy
const blockSums = new Float32Array(BLOCK);
const blockStarts = new Int32Array(BLOCK);

// One box pass along each row of the view (x0, y0, w, h) of `src` (row length `stride`, read
// right to left when `mirror`), written to `out` (w x h); or, with `cols` (64 ascending
// column indices, repeated when w < 64), only those columns, to `out` (h x 64). Each row's
// running sum is the reference's, element for element.
function boxRows(src, stride, x0, y0, w, h, mirror, out, win, cols = null) {
  const half = Math.floor((win + 2) / 2);
  const p1 = half - 1;
  const p2 = win - half + 1;
  const p3 = w - win;
  const p4 = half - 1;
  const step = mirror ? -1 : 1;
  const sums = blockSums;
  const starts = blockStarts;
  const outW = cols ? 64 : w;
  for (let yb = 0; yb < h; yb += BLOCK) {
    const n = Math.min(BLOCK, h - yb);
    for (let k = 0; k < n; k++) {
      sums[k] = 0;
      starts[k] = (y0 + yb + k) * stride + (mirror ? x0 + w - 1 : x0);
    }
    const outStart = yb * outW;
    let ri = 0; // offsets (in steps) of the read window's right and left edges
    let li = 0;
    let oi = 0;
    let size = 0;
    let next = 0;
    let want = cols ? cols[0] : -1;
    for (let i = 0; i < p1; i++, ri += step) {
      for (let k = 0; k < n; k++) sums[k] = sums[k] + src[starts[k] + ri];
      size++;
    }
    for (let i = 0; i < p2 + p3 + p4; i++, oi++) {
      if (i < p2) {
        for (let k = 0; k < n; k++) sums[k] = sums[k] + src[starts[k] + ri];
        size++;
        ri += step;
      } else if (i < p2 + p3) {
        for (let k = 0; k < n; k++) sums[k] = f32(sums[k] + src[starts[k] + ri]) - src[starts[k] + li];
        ri += step;
        li += step;
      } else {
        for (let k = 0; k < n; k++) sums[k] = sums[k] - src[starts[k] + li];
        size--;
        li += step;
      }
      if (!cols) {
        for (let k = 0; k < n; k++) out[outStart + k * outW + oi] = sums[k] / size;
      } else {
        while (want === oi) {
          for (let k = 0; k < n; k++) out[outStart + k * 64 + next] = sums[k] / size;
          next++;
          want = next < 64 ? cols[next] : -1;
        }
      }
    }
  }
}

// One box pass along each column of `src` (w x h) into `out`: the same running sums as the
// reference's column-by-column walk, kept for all columns at once so memory is read in order.
function boxCols(src, w, h, out, win) {
  const half = Math.floor((win + 2) / 2);
  const p1 = half - 1;
  const p2 = win - half + 1;
  const p3 = h - win;
  const p4 = half - 1;
  const sums = columnSums;
  sums.fill(0, 0, w);
  let ri = 0;
  let li = 0;
  let oi = 0;
  let size = 0;
  for (let i = 0; i < p1; i++, ri++) {
    for (let j = 0, r = ri * w; j < w; j++) sums[j] = sums[j] + src[r + j];
    size++;
  }
  for (let i = 0; i < p2; i++, ri++, oi++) {
    size++;
    for (let j = 0, r = ri * w, o = oi * w; j < w; j++) {
      const s = f32(sums[j] + src[r + j]);
      sums[j] = s;
      out[o + j] = s / size;
    }
  }
  for (let i = 0; i < p3; i++, ri++, li++, oi++) {
    for (let j = 0, r = ri * w, l = li * w, o = oi * w; j < w; j++) {
      const s = f32(f32(sums[j] + src[r + j]) - src[l + j]);
      sums[j] = s;
      out[o + j] = s / size;
    }
  }
  for (let i = 0; i < p4; i++, li++, oi++) {
    size--;
    for (let j = 0, l = li * w, o = oi * w; j < w; j++) {
      const s = f32(sums[j] - src[l + j]);
      sums[j] = s;
      out[o + j] = s / size;
    }
  }
}

// The second round's column pass over the h x 64 columns kept, writing only the 64 rows
// decimation reads (`rows`): the 64 x 64 block.
function boxColsAt(src, h, block, win, rows) {
  const half = Math.floor((win + 2) / 2);
  const p1 = half - 1;
  const p2 = win - half + 1;
  const p3 = h - win;
  const p4 = half - 1;
  const sums = new Float32Array(64);
  let ri = 0;
  let li = 0;
  let oi = 0;
  let next = 0;
  let size = 0;
  const emit = () => {
    while (next < 64 && rows[next] === oi) {
      for (let j = 0; j < 64; j++) block[next * 64 + j] = sums[j] / size;
      next++;
    }
  };
  for (let i = 0; i < p1; i++, ri++) {
    for (let j = 0; j < 64; j++) sums[j] = sums[j] + src[ri * 64 + j];
    size++;
  }
  for (let i = 0; i < p2; i++, ri++, oi++) {
    size++;
    for (let j = 0; j < 64; j++) sums[j] = sums[j] + src[ri * 64 + j];
    emit();
  }
  for (let i = 0; i < p3; i++, ri++, li++, oi++) {
    for (let j = 0; j < 64; j++) sums[j] = f32(sums[j] + src[ri * 64 + j]) - src[li * 64 + j];
    emit();
  }
  for (let i = 0; i < p4; i++, li++, oi++) {
    size--;
    for (let j = 0; j < 64; j++) sums[j] = sums[j] - src[li * 64 + j];
    emit();
  }
}

function quality(block) {
  let gradientSum = 0;
  for (let i = 0; i < 63; i++) {
    for (let j = 0; j < 64; j++) {
      const d = Math.trunc(f32(f32(f32(block[i * 64 + j] - block[(i + 1) * 64 + j]) * 100) / 255));
      gradientSum += Math.abs(d);
    }
  }
  for (let i = 0; i < 64; i++) {
    for (let j = 0; j < 63; j++) {
      const d = Math.trunc(f32(f32(f32(block[i * 64 + j] - block[i * 64 + j + 1]) * 100) / 255));
      gradientSum += Math.abs(d);
    }
  }
  return Math.min(100, Math.floor(gradientSum / 90));
}

function dct16(block) {
  const t = new Float32Array(16 * 64);
  for (let i = 0; i < 16; i++) {
    for (let j = 0; j < 64; j++) {
      let sum = 0;
      for (let k = 0; k < 64; k++) sum = f32(sum + f32(DCT[i * 64 + k] * block[k * 64 + j]));
      t[i * 64 + j] = sum;
    }
  }
  const b = new Float32Array(256);
  for (let i = 0; i < 16; i++) {
    for (let j = 0; j < 16; j++) {
      let sum = 0;
      for (let k = 0; k < 64; k++) sum = f32(sum + f32(t[i * 64 + k] * DCT[j * 64 + k]));
      b[i * 16 + j] = sum;
    }
  }
  return b;
}

// Torben's median (the lower middle value for an even count), as the reference computes it.
function torben(m) {
  const n = m.length;
  let min = m[0];
  let max = m[0];
  for (let i = 1; i < n; i++) {
    if (m[i] < min) min = m[i];
    if (m[i] > max) max = m[i];
  }
  const halfway = Math.floor((n + 1) / 2);
  let less;
  let greater;
  let equal;
  let guess;
  let maxLess;
  let minGreater;
  for (;;) {
    guess = f32((min + max) / 2);
    less = 0;
    greater = 0;
    equal = 0;
    maxLess = min;
    minGreater = max;
    for (let i = 0; i < n; i++) {
      if (m[i] < guess) {
        less++;
        if (m[i] > maxLess) maxLess = m[i];
      } else if (m[i] > guess) {
        greater++;
        if (m[i] < minGreater) minGreater = m[i];
      } else {
        equal++;
      }
    }
    if (less <= halfway && greater <= halfway) break;
    if (less > greater) max = maxLess;
    else min = minGreater;
  }
  if (less >= halfway) return maxLess;
  if (less + equal >= halfway) return guess;
  return minGreater;
}

function bitsToHex(coefficients, median) {
  const words = new Uint16Array(16);
  for (let k = 0; k < 256; k++) {
    if (coefficients[k] > median) words[k >> 4] |= 1 << (k & 15);
  }
  let hex = '';
  for (let w = 15; w >= 0; w--) hex += words[w].toString(16).padStart(4, '0');
  return hex;
}

/**
 * PDQ hash and quality of the view (x0, y0, w, h) of a float luma image with rows of `stride`
 * values, mirrored left-right when `mirror`. Returns {hex, quality}.
 */
export function pdqOfLuma(luma, stride, x0, y0, w, h, mirror = false) {
  if (w < MIN_DIM || h < MIN_DIM) return { hex: '0'.repeat(64), quality: 0 };
  const block = new Float32Array(64 * 64);
  if (w === 64 && h === 64) {
    for (let i = 0; i < 64; i++) {
      for (let j = 0; j < 64; j++) {
        block[i * 64 + j] = luma[(y0 + i) * stride + (mirror ? x0 + 63 - j : x0 + j)];
      }
    }
  } else {
    scratch(Math.max(w, 64) * h, w); // the second round keeps h x 64 values
    const a = scratchA;
    const b = scratchB;
    const winRows = windowSize(w, 64);
    const winCols = windowSize(h, 64);
    const rows = new Int32Array(64);
    const cols = new Int32Array(64);
    for (let i = 0; i < 64; i++) {
      rows[i] = Math.trunc(((i + 0.5) * h) / 64);
      cols[i] = Math.trunc(((i + 0.5) * w) / 64);
    }
    boxRows(luma, stride, x0, y0, w, h, mirror, b, winRows);
    boxCols(b, w, h, a, winCols);
    // Decimation reads 64 x 64 values: the second round computes only what leads to them.
    boxRows(a, w, 0, 0, w, h, false, b, winRows, cols);
    boxColsAt(b, h, block, winCols, rows);
  }
  const q = quality(block);
  const coefficients = dct16(block);
  return { hex: bitsToHex(coefficients, torben(coefficients)), quality: q };
}

/** PDQ hash and quality of an RGB image (3 bytes per pixel). */
export function pdqOfRGB(rgb, width, height) {
  return pdqOfLuma(pdqLuma(rgb, width, height), width, 0, 0, width, height);
}

/** Release the scratch buffers (they grow to the largest image hashed). */
export function releaseScratch() {
  scratchA = new Float32Array(0);
  scratchB = new Float32Array(0);
  columnSums = new Float32Array(0);
}
