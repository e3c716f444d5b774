// The registration views of an original, in registry/hashing/variants.py order: the mirror, the
// other six orientations, the 90% and 80% crops (centre, then the four corners) and the
// rotations by +-4 and +-8 degrees.
// Each view gets a PDQ hash; the list is part of the pipeline version (PIPELINE_VERSION).

import { roundHalfEven } from './pillow.js';

/** [label, fraction kept per side, horizontal and vertical placement (0 = left/top)]. */
export const CROPS = Object.freeze([0.9, 0.8].flatMap((keep) => [
  ['c', 0.5, 0.5], ['tl', 0.0, 0.0], ['tr', 1.0, 0.0], ['bl', 0.0, 1.0], ['br', 1.0, 1.0],
].map(([name, fx, fy]) => Object.freeze([`crop${Math.round(keep * 100)}-${name}`, keep, fx, fy]))));

/** The six other orientations (Pillow's Image.Transpose), as [label, method]. */
export const ORIENTATIONS = Object.freeze([
  ['flip-v', 'FLIP_TOP_BOTTOM'], ['rot90', 'ROTATE_90'], ['rot180', 'ROTATE_180'],
  ['rot270', 'ROTATE_270'], ['transpose', 'TRANSPOSE'], ['transverse', 'TRANSVERSE'],
].map((o) => Object.freeze(o)));

/** A float luma image turned as Image.transpose(method) turns the picture: {luma, width,
 * height}. `out` (a buffer of the same size) may be reused. */
export function orientLuma(luma, width, height, method, out = new Float32Array(width * height)) {
  const turned = method !== 'FLIP_TOP_BOTTOM' && method !== 'ROTATE_180';
  const w = turned ? height : width;
  const h = turned ? width : height;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      let sx;
      let sy;
      switch (method) {
        case 'FLIP_TOP_BOTTOM': sx = x; sy = height - 1 - y; break;
        case 'ROTATE_90': sx = width - 1 - y; sy = x; break;
        case 'ROTATE_180': sx = width - 1 - x; sy = height - 1 - y; break;
        case 'ROTATE_270': sx = y; sy = height - 1 - x; break;
        case 'TRANSPOSE': sx = y; sy = x; break;
        case 'TRANSVERSE': sx = width - 1 - y; sy = height - 1 - x; break;
        default: throw new Error(`unknown orientation ${method}`);
      }
      out[y * w + x] = luma[sy * width + sx];
    }
  }
  return { luma: out, width: w, height: h };
}

/** Views are cut from a copy reduced by the largest whole factor that keeps its short side at
 * VIEW_SIDE px or more (registry/hashing/variants.py view_source). */
export const VIEW_SIDE = 512;

export function viewFactor(width, height) {
  return Math.max(1, Math.floor(Math.min(width, height) / VIEW_SIDE));
}

export const ROTATIONS = Object.freeze([4.0, -4.0, 8.0, -8.0]);

/** The label Python gives a rotation: f"rot{degrees:+g}". */
export function rotationLabel(degrees) {
  return `rot${degrees < 0 ? '-' : '+'}${Math.abs(degrees)}`;
}

/** [x, y, width, height] of a crop window, with Python's rounding (halves to even). */
export function cropWindow(width, height, keep, fx, fy) {
  const cw = Math.max(1, roundHalfEven(width * keep));
  const ch = Math.max(1, roundHalfEven(height * keep));
  return [roundHalfEven((width - cw) * fx), roundHalfEven((height - ch) * fy), cw, ch];
}

/** Labels of every view, in the order they are computed and reported. */
export const VIEW_LABELS = Object.freeze(['mirror', ...ORIENTATIONS.map((o) => o[0]),
  ...CROPS.map((c) => c[0]),
  ...ROTATIONS.map(rotationLabel)]);
