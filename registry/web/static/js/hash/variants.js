// The registration views of an original, in registry/hashing/variants.py order: the mirror, the
// 90% and 80% crops (centre, then the four corners) and the rotations by +-4 and +-8 degrees.
// Each view gets a PDQ hash; the list is part of the pipeline version (PIPELINE_VERSION).

import { roundHalfEven } from './pillow.js';

/** [label, fraction kept per side, horizontal and vertical placement (0 = left/top)]. */
export const CROPS = Object.freeze([0.9, 0.8].flatMap((keep) => [
  ['c', 0.5, 0.5], ['tl', 0.0, 0.0], ['tr', 1.0, 0.0], ['bl', 0.0, 1.0], ['br', 1.0, 1.0],
].map(([name, fx, fy]) => Object.freeze([`crop${Math.round(keep * 100)}-${name}`, keep, fx, fy]))));

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
export const VIEW_LABELS = Object.freeze(['mirror', ...CROPS.map((c) => c[0]),
  ...ROTATIONS.map(rotationLabel)]);
