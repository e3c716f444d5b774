// The local-feature signal in the browser: registry/hashing/local.py step by step, with OpenCV's
// own ORB compiled to WebAssembly (opencv.js 4.12, the version opencv-python-headless pins),
// which `make` installs from the npm registry into /static/vendor/opencv.js (same origin).
//
// 1. grey = Pillow convert('L') of the RGB pixels (pillow.js greyLuminance);
// 2. resized with Pillow's LANCZOS to REGISTER_AREA pixels, aspect kept, the width first;
// 3. ORB with the parameters of local.py's _orb finds up to REGISTER_FOUND x REGISTER_KEYPOINTS
//    keypoints over its REGISTER_LEVELS finest pyramid levels (fewer than REGISTER_KEYPOINTS
//    there, a smooth picture: FALLBACK_FOUND x REGISTER_KEYPOINTS over all eight levels);
// 4. a canonical order (strongest first, ties by level, y, x), then the grid spread;
// 5. packed: version u8, count u16, width u16, height u16 (little-endian), then per keypoint a
//    big-endian u32 x:12 y:12 angle:5 octave:3, then the 32-byte descriptors; sent as base64.
//
// Only the packed keypoints leave this module; the grey picture is freed when ORB is done.

import { greyLuminance, resizeGreyWidthFirst, roundHalfEven } from './pillow.js';

export const FORMAT_VERSION = 1;
export const REGISTER_AREA = 180_000;
export const REGISTER_KEYPOINTS = 112;
export const REGISTER_GRID = 6;
export const REGISTER_LEVELS = 5;
export const REGISTER_FOUND = 8;
export const FALLBACK_FOUND = 4;
export const MIN_KEYPOINTS = 16;
export const ANGLE_STEPS = 32;
const EDGE = 16;
const DESCRIPTOR_BYTES = 32;
const OPENCV_URL = new URL('../../vendor/opencv.js', import.meta.url).href;

let loading = null;

/** OpenCV, loaded once per worker (a module that sets globalThis.cv); resolves to {cv}. The
 * runtime object is thenable, so it is wrapped rather than resolved directly. */
export function loadOpenCV() {
  if (loading === null) {
    loading = import(OPENCV_URL).then(() => new Promise((resolve, reject) => {
      const cv = globalThis.cv;
      if (!cv) {
        reject(new Error('opencv.js did not load'));
      } else if (cv.Mat) {
        resolve({ cv });
      } else {
        cv.onRuntimeInitialized = () => resolve({ cv });
      }
    }));
    loading.catch(() => { loading = null; });
  }
  return loading;
}

/** Steps 1-2: {grey, width, height}, the picture ORB sees. */
export function analysed(rgb, width, height, area = REGISTER_AREA) {
  const grey = greyLuminance(rgb, width, height);
  const scale = Math.sqrt(area / (width * height));
  const w = Math.max(1, roundHalfEven(width * scale));
  const h = Math.max(1, roundHalfEven(height * scale));
  if (w === width && h === height) return { grey, width, height };
  return { grey: resizeGreyWidthFirst(grey, width, height, w, h), width: w, height: h };
}

function lexCompare(keys) {
  return (a, b) => {
    for (const key of keys) {
      const d = key[a] - key[b];
      if (d !== 0) return d;
    }
    return a - b;
  };
}

/** Step 4 (local.py spread): indices kept, strongest first; round r takes the r-th strongest
 * of every grid cell, ties by index, whole rounds until `wanted`. */
export function spread(response, x, y, width, height, wanted, grid) {
  const n = response.length;
  const neg = Float64Array.from(response, (r) => -r);
  const cell = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const cx = Math.min(grid - 1, Math.trunc((x[i] * grid) / width));
    const cy = Math.min(grid - 1, Math.trunc((y[i] * grid) / height));
    cell[i] = cy * grid + cx;
  }
  const index = Array.from({ length: n }, (_, i) => i);
  const byCell = index.slice().sort(lexCompare([cell, neg]));
  const rank = new Float64Array(n);
  let start = 0;
  for (let k = 0; k < n; k++) {
    if (k > 0 && cell[byCell[k]] !== cell[byCell[k - 1]]) start = k;
    rank[byCell[k]] = k - start;
  }
  const chosen = index.slice().sort(lexCompare([rank, neg])).slice(0, wanted);
  return chosen.sort(lexCompare([neg]));
}

function quantise(v, size) {
  const q = roundHalfEven((v / Math.max(1, size - 1)) * 4095);
  return q < 0 ? 0 : q > 4095 ? 4095 : q;
}

/** Step 5: the packed signal of the chosen keypoints. */
export function pack(width, height, kps, descriptors) {
  const n = kps.length;
  const out = new Uint8Array(7 + n * (4 + DESCRIPTOR_BYTES));
  const view = new DataView(out.buffer);
  view.setUint8(0, FORMAT_VERSION);
  view.setUint16(1, n, true);
  view.setUint16(3, width, true);
  view.setUint16(5, height, true);
  kps.forEach((k, i) => {
    const angle = ((roundHalfEven((k.angle / 360) * ANGLE_STEPS) % ANGLE_STEPS) + ANGLE_STEPS)
      % ANGLE_STEPS;
    const meta = (quantise(k.x, width) * 1048576) + (quantise(k.y, height) << 8) + (angle << 3)
      + k.octave;
    view.setUint32(7 + i * 4, meta, false);
    out.set(descriptors.subarray(k.row * DESCRIPTOR_BYTES, (k.row + 1) * DESCRIPTOR_BYTES),
      7 + n * 4 + i * DESCRIPTOR_BYTES);
  });
  return out;
}

export function base64(bytes) {
  let text = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

/** The packed registration keypoints of an RGB image (Uint8Array), or null when it has fewer
 * than MIN_KEYPOINTS (a flat, tiny or blank picture: no local signal, as in Python). */
export function localOfRGB(cv, rgb, width, height) {
  const { grey, width: w, height: h } = analysed(rgb, width, height);
  if (Math.min(w, h) < 2 * EDGE + 1) return null;
  const mat = new cv.Mat(h, w, cv.CV_8UC1);
  try {
    mat.data.set(grey);
    const fine = detect(cv, mat, REGISTER_FOUND * REGISTER_KEYPOINTS, REGISTER_LEVELS);
    if (fine.kps.length >= REGISTER_KEYPOINTS) return chosen(fine, w, h);
    // A smooth picture has its corners on the coarse levels only: all eight, as in local.py.
    return chosen(detect(cv, mat, FALLBACK_FOUND * REGISTER_KEYPOINTS, 8), w, h);
  } finally {
    mat.delete();
  }
}

/** ORB (local.py's _orb parameters) on the grey Mat: {kps, descriptors} or {kps: []}. */
function detect(cv, mat, nfeatures, levels) {
  const mask = new cv.Mat();
  const found = new cv.KeyPointVector();
  const desc = new cv.Mat();
  const orb = new cv.ORB(nfeatures, 1.2, levels, EDGE, 0, 2, cv.ORB_HARRIS_SCORE, 31, 12);
  try {
    orb.detectAndCompute(mat, mask, found, desc);
    const n = found.size();
    if (desc.rows !== n) return { kps: [] };
    const kps = [];
    for (let i = 0; i < n; i++) {
      const k = found.get(i);
      kps.push({ x: k.pt.x, y: k.pt.y, angle: k.angle, response: k.response,
        octave: k.octave & 7, row: i });
    }
    return { kps, descriptors: Uint8Array.from(desc.data) };
  } finally {
    mask.delete();
    found.delete();
    desc.delete();
    orb.delete();
  }
}

/** Steps 4-5 on what ORB found: the spread, packed; null below MIN_KEYPOINTS. */
function chosen({ kps, descriptors }, w, h) {
  if (kps.length < MIN_KEYPOINTS) return null;
  // The canonical order of local.py (ORB's own order differs between builds).
  kps.sort((a, b) => (b.response - a.response) || (a.octave - b.octave) || (a.y - b.y)
    || (a.x - b.x));
  const keep = spread(kps.map((k) => k.response), kps.map((k) => k.x), kps.map((k) => k.y),
    w, h, REGISTER_KEYPOINTS, REGISTER_GRID);
  return pack(w, h, keep.map((i) => kps[i]), descriptors);
}
