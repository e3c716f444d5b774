// pHash exactly as `imagehash.phash` computes it (registry/hashing/signals.py phash_of):
// Pillow's greyscale conversion, Pillow's LANCZOS resize to 32 x 32 (both in pillow.js), the
// unnormalised DCT-II of scipy.fftpack.dct along columns then rows, the top-left 8 x 8
// coefficients, and one bit per coefficient: greater than their median (numpy's, the mean of the
// two middle values). Hex: the 64 bits row by row, as one big-endian number (16 digits).
//
// The DCT is summed directly rather than through an FFT as scipy does; the two differ by about
// 1e-13, which flips a bit only when a coefficient equals the median to that precision (a tie
// that needs an image symmetric enough to have coefficients that are exactly equal).

import { greyLuminance, resizeGrey } from './pillow.js';

const SIZE = 32;
const LOW = 8;

// COS[k * SIZE + n] = 2 cos(pi k (2n + 1) / (2 SIZE)), the scipy type-II kernel.
const COS = new Float64Array(LOW * SIZE);
for (let k = 0; k < LOW; k++) {
  for (let n = 0; n < SIZE; n++) COS[k * SIZE + n] = 2 * Math.cos((Math.PI * k * (2 * n + 1)) / (2 * SIZE));
}

/** The 32 x 32 greyscale image pHash works on (Pillow's convert('L').resize(LANCZOS)). */
export function phashPixels(rgb, width, height) {
  return resizeGrey(greyLuminance(rgb, width, height), width, height, SIZE, SIZE);
}

/** pHash of an RGB image (3 bytes per pixel), as 16 lowercase hex digits. */
export function phashOfRGB(rgb, width, height) {
  const pixels = phashPixels(rgb, width, height);
  // Along axis 0 (columns), only the first LOW output rows are needed.
  const cols = new Float64Array(LOW * SIZE);
  for (let k = 0; k < LOW; k++) {
    for (let m = 0; m < SIZE; m++) {
      let sum = 0;
      for (let n = 0; n < SIZE; n++) sum += pixels[n * SIZE + m] * COS[k * SIZE + n];
      cols[k * SIZE + m] = sum;
    }
  }
  const low = new Float64Array(LOW * LOW);
  for (let k = 0; k < LOW; k++) {
    for (let l = 0; l < LOW; l++) {
      let sum = 0;
      for (let m = 0; m < SIZE; m++) sum += cols[k * SIZE + m] * COS[l * SIZE + m];
      low[k * LOW + l] = sum;
    }
  }
  const sorted = Float64Array.from(low).sort();
  const median = (sorted[LOW * LOW / 2 - 1] + sorted[LOW * LOW / 2]) / 2;
  let hex = '';
  for (let nibble = 0; nibble < LOW * LOW / 4; nibble++) {
    let v = 0;
    for (let b = 0; b < 4; b++) v = (v << 1) | (low[nibble * 4 + b] > median ? 1 : 0);
    hex += v.toString(16);
  }
  return hex;
}
