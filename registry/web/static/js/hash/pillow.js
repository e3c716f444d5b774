// Ports of the Pillow operations the Python pipeline uses, with Pillow's own arithmetic, so the
// browser computes the same pixels the server does (registry/hashing, Pillow's libImaging):
//
// - greyLuminance: Image.convert('L') from RGB, fixed point (R*19595 + G*38470 + B*7471 + 0x8000) >> 16;
// - resizeGrey: Image.resize(size, LANCZOS) of an 8-bit greyscale image: two separable passes
//   (horizontal, then vertical), coefficients normalised, rounded to 22 fractional bits, every
//   pass clipped back to 8 bits;
// - reduceRGB: Image.reduce(factor): box average with Pillow's multiply-and-shift rounding,
//   the partial last column/row averaged over the pixels they have;
// - rotateRGB: Image.rotate(degrees, BICUBIC, expand=False, fillcolor=black): the affine matrix
//   Pillow builds (rounded to 15 decimals), cubic convolution with a = -1, truncated to 8 bits.
//
// Images are plain objects {data: Uint8Array, width, height}; RGB data has 3 bytes per pixel.

const PRECISION_BITS = 22; // 32 - 8 - 2, as Pillow's Resample.c
const LANCZOS_SUPPORT = 3;

/** Pillow's ITU-R 601-2 luma transform of an RGB buffer, one byte per pixel. */
export function greyLuminance(rgb, width, height) {
  const n = width * height;
  const out = new Uint8Array(n);
  for (let i = 0, p = 0; i < n; i++, p += 3) {
    out[i] = (rgb[p] * 19595 + rgb[p + 1] * 38470 + rgb[p + 2] * 7471 + 0x8000) >>> 16;
  }
  return out;
}

function sinc(x) {
  if (x === 0) return 1;
  const t = x * Math.PI;
  return Math.sin(t) / t;
}

function lanczos(x) {
  return (-3 <= x && x < 3) ? sinc(x) * sinc(x / 3) : 0;
}

// Filter taps for resampling inSize -> outSize (the whole image), as fixed-point integers.
function lanczosCoefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = scale < 1 ? 1 : scale;
  const support = LANCZOS_SUPPORT * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const weights = new Float64Array(ksize);
  const one = 1 << PRECISION_BITS;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1 / filterscale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const w = lanczos((x + xmin - center + 0.5) * ss);
      weights[x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) {
      const w = ww !== 0 ? weights[x] / ww : weights[x];
      kk[xx * ksize + x] = w < 0 ? Math.trunc(-0.5 + w * one) : Math.trunc(0.5 + w * one);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function clip8(ss) {
  const v = Math.floor(ss / (1 << PRECISION_BITS));
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

function resampleRows(src, width, rows, rowOffset, outW, coeffs) {
  const out = new Uint8Array(outW * rows);
  const half = 1 << (PRECISION_BITS - 1);
  for (let yy = 0; yy < rows; yy++) {
    const rowStart = (yy + rowOffset) * width;
    for (let xx = 0; xx < outW; xx++) {
      const xmin = coeffs.bounds[xx * 2];
      const xmax = coeffs.bounds[xx * 2 + 1];
      const k = xx * coeffs.ksize;
      let ss = half;
      for (let x = 0; x < xmax; x++) ss += src[rowStart + x + xmin] * coeffs.kk[k + x];
      out[yy * outW + xx] = clip8(ss);
    }
  }
  return out;
}

function resampleColumns(src, width, outH, rowOffset, coeffs) {
  const out = new Uint8Array(width * outH);
  const half = 1 << (PRECISION_BITS - 1);
  for (let yy = 0; yy < outH; yy++) {
    const ymin = coeffs.bounds[yy * 2] - rowOffset;
    const ymax = coeffs.bounds[yy * 2 + 1];
    const k = yy * coeffs.ksize;
    for (let xx = 0; xx < width; xx++) {
      let ss = half;
      for (let y = 0; y < ymax; y++) ss += src[(y + ymin) * width + xx] * coeffs.kk[k + y];
      out[yy * width + xx] = clip8(ss);
    }
  }
  return out;
}

/** Image.resize((outW, outH), LANCZOS) of a greyscale ('L') image. Each pass rounds to 8 bits,
 * so the order matters: Pillow 13 resamples vertically first when the height shrinks by more
 * than twice as many pixels as the width (measured against Pillow 13.0; earlier releases
 * always went horizontal first). */
export function resizeGrey(src, width, height, outW, outH) {
  if (outW === width && outH === height) return Uint8Array.from(src);
  const vert = lanczosCoefficients(height, outH);
  if (outW === width) return resampleColumns(src, width, outH, 0, vert);
  const horiz = lanczosCoefficients(width, outW);
  if (outH === height) return resampleRows(src, width, height, 0, outW, horiz);
  if (height - outH > 2 * (width - outW)) {
    return resampleRows(resampleColumns(src, width, outH, 0, vert), width, outH, 0, outW, horiz);
  }
  // Only the rows the vertical pass reads are resampled horizontally.
  const yFirst = vert.bounds[0];
  const yLast = vert.bounds[outH * 2 - 2] + vert.bounds[outH * 2 - 1];
  const temp = resampleRows(src, width, yLast - yFirst, yFirst, outW, horiz);
  return resampleColumns(temp, outW, outH, yFirst, vert);
}

/** Two resizes of a greyscale image, as local.py does it: the width first
 * (Image.resize((outW, height))), then the height (Image.resize((outW, outH))). */
export function resizeGreyWidthFirst(src, width, height, outW, outH) {
  const wide = outW === width ? src : resizeGrey(src, width, height, outW, height);
  return outH === height ? Uint8Array.from(wide) : resizeGrey(wide, outW, height, outW, outH);
}

// Pillow's Reduce.c divides a sum of n pixels by multiplying with a 32-bit reciprocal computed
// in single precision, then shifting by 24.
function reciprocal(n) {
  return Math.trunc(Math.fround(4294967296 / Math.fround(256 * n)));
}

function boxMean(rgb, width, x0, x1, y0, y1, out, o) {
  const n = (x1 - x0) * (y1 - y0);
  const mult = reciprocal(n);
  const amend = Math.floor(n / 2);
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  for (let y = y0; y < y1; y++) {
    for (let p = (y * width + x0) * 3, end = (y * width + x1) * 3; p < end; p += 3) {
      s0 += rgb[p];
      s1 += rgb[p + 1];
      s2 += rgb[p + 2];
    }
  }
  out[o] = Math.floor(((s0 + amend) * mult) / 16777216);
  out[o + 1] = Math.floor(((s1 + amend) * mult) / 16777216);
  out[o + 2] = Math.floor(((s2 + amend) * mult) / 16777216);
}

/** Image.reduce(factor) of an RGB image: each output pixel is the mean of a factor x factor
 * box (fewer pixels in the last column and row when the size is not a multiple). */
export function reduceRGB(rgb, width, height, factor) {
  if (factor === 1) return { data: Uint8Array.from(rgb), width, height };
  const outW = Math.ceil(width / factor);
  const outH = Math.ceil(height / factor);
  const out = new Uint8Array(outW * outH * 3);
  for (let y = 0; y < outH; y++) {
    const y0 = y * factor;
    const y1 = Math.min(height, y0 + factor);
    for (let x = 0; x < outW; x++) {
      const x0 = x * factor;
      boxMean(rgb, width, x0, Math.min(width, x0 + factor), y0, y1, out, (y * outW + x) * 3);
    }
  }
  return { data: out, width: outW, height: outH };
}

function roundDecimals15(x) {
  // Python's round(x, 15): the nearest 15-decimal number, read back as a double.
  return Number(x.toFixed(15));
}

/** The inverse affine matrix Image.rotate(degrees, expand=False) samples with. */
export function rotationMatrix(width, height, degrees) {
  const angle = -(degrees * (Math.PI / 180));
  const a = roundDecimals15(Math.cos(angle));
  const b = roundDecimals15(Math.sin(angle));
  const d = roundDecimals15(-Math.sin(angle));
  const e = roundDecimals15(Math.cos(angle));
  const cx = width / 2;
  const cy = height / 2;
  const c = a * -cx + b * -cy + 0.0 + cx;
  const f = d * -cx + e * -cy + 0.0 + cy;
  return [a, b, c, d, e, f];
}

function cubic(v1, v2, v3, v4, d) {
  const p1 = v2;
  const p2 = -v1 + v3;
  const p3 = 2 * (v1 - v2) + v3 - v4;
  const p4 = -v1 + v2 - v3 + v4;
  return p1 + d * (p2 + d * (p3 + d * p4));
}

function clampByte(v) {
  return v <= 0 ? 0 : v >= 255 ? 255 : Math.trunc(v);
}

// One output pixel whose 4 x 4 neighbourhood may leave the image: Pillow clamps the columns and
// the first row; a later row outside the image repeats the row above it.
function bicubicAtEdge(rgb, width, height, xf, yf, dx, dy, out, o) {
  const rowStride = width * 3;
  const c0 = Math.min(Math.max(xf - 1, 0), width - 1) * 3;
  const c1 = Math.min(Math.max(xf, 0), width - 1) * 3;
  const c2 = Math.min(Math.max(xf + 1, 0), width - 1) * 3;
  const c3 = Math.min(Math.max(xf + 2, 0), width - 1) * 3;
  const r0 = Math.min(Math.max(yf - 1, 0), height - 1) * rowStride;
  const r1 = yf >= 0 && yf < height ? yf * rowStride : -1;
  const r2 = yf + 1 >= 0 && yf + 1 < height ? (yf + 1) * rowStride : -1;
  const r3 = yf + 2 >= 0 && yf + 2 < height ? (yf + 2) * rowStride : -1;
  for (let band = 0; band < 3; band++) {
    let r = r0 + band;
    const v1 = cubic(rgb[r + c0], rgb[r + c1], rgb[r + c2], rgb[r + c3], dx);
    let v2 = v1;
    if (r1 >= 0) {
      r = r1 + band;
      v2 = cubic(rgb[r + c0], rgb[r + c1], rgb[r + c2], rgb[r + c3], dx);
    }
    let v3 = v2;
    if (r2 >= 0) {
      r = r2 + band;
      v3 = cubic(rgb[r + c0], rgb[r + c1], rgb[r + c2], rgb[r + c3], dx);
    }
    let v4 = v3;
    if (r3 >= 0) {
      r = r3 + band;
      v4 = cubic(rgb[r + c0], rgb[r + c1], rgb[r + c2], rgb[r + c3], dx);
    }
    out[o + band] = clampByte(cubic(v1, v2, v3, v4, dy));
  }
}

/** Image.rotate(degrees, BICUBIC, expand=False, fillcolor=(0, 0, 0)) of an RGB image, written
 * to `out` (a buffer of the same size may be reused). */
export function rotateRGB(rgb, width, height, degrees, out = new Uint8Array(width * height * 3)) {
  const [a0, a1, a2, a3, a4, a5] = rotationMatrix(width, height, degrees);
  const rs = width * 3;
  for (let y = 0; y < height; y++) {
    const yc = y + 0.5;
    for (let x = 0; x < width; x++) {
      const xc = x + 0.5;
      let xin = a0 * xc + a1 * yc + a2;
      let yin = a3 * xc + a4 * yc + a5;
      const o = (y * width + x) * 3;
      if (xin < 0 || xin >= width || yin < 0 || yin >= height) { // outside: black
        out[o] = 0;
        out[o + 1] = 0;
        out[o + 2] = 0;
        continue;
      }
      xin -= 0.5;
      yin -= 0.5;
      const xf = Math.floor(xin);
      const yf = Math.floor(yin);
      const dx = xin - xf;
      const dy = yin - yf;
      if (xf < 1 || xf + 2 >= width || yf < 1 || yf + 2 >= height) {
        bicubicAtEdge(rgb, width, height, xf, yf, dx, dy, out, o);
        continue;
      }
      for (let band = 0, p = ((yf - 1) * width + xf - 1) * 3; band < 3; band++, p++) {
        const v1 = cubic(rgb[p], rgb[p + 3], rgb[p + 6], rgb[p + 9], dx);
        const q = p + rs;
        const v2 = cubic(rgb[q], rgb[q + 3], rgb[q + 6], rgb[q + 9], dx);
        const r = q + rs;
        const v3 = cubic(rgb[r], rgb[r + 3], rgb[r + 6], rgb[r + 9], dx);
        const t = r + rs;
        const v4 = cubic(rgb[t], rgb[t + 3], rgb[t + 6], rgb[t + 9], dx);
        out[o + band] = clampByte(cubic(v1, v2, v3, v4, dy));
      }
    }
  }
  return out;
}

/** Python's round() of a float to an integer: halves go to the even neighbour. */
export function roundHalfEven(x) {
  const r = Math.round(x);
  return (r - x === 0.5 && r % 2 !== 0) ? r - 1 : r;
}
