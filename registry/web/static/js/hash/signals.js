// Every signal of the registration pipeline, computed in the browser: what the server computes
// with compute_signals(data, registration=True) and SubmittedImage.from_image
// (registry/hashing/signals.py, registry/service/cases.py), in the shape the submit page sends:
//
//   {signals: {pdq, phash, md5, sha256, local}, pdq_quality, views: [{label, pdq, quality}, ...],
//    pipeline_version, width, height}
//
// `local` (local.js: ORB keypoints, base64) is left out when the picture has too few keypoints,
// as the server leaves it out.
//
// Views: "content" first when the content box shaves at least 1% of the area, then the views of
// variants.js in order. Like the server, views are cut from the original image, not from the
// trimmed one (from a reduced copy of it when it is large: variants.js viewFactor). Nothing here sends, stores or posts pixels; only the hashes come out.

import { contentBox } from './content.js';
import { checkLimits, decodeImage, HashError } from './decode.js';
import { md5Hex, sha256Hex } from './digests.js';
import { pdqLuma, pdqOfLuma, releaseScratch } from './pdq.js';
import { phashOfRGB } from './phash.js';
import { base64, loadOpenCV, localOfRGB } from './local.js';
import { reduceRGB, rotateRGB } from './pillow.js';
import { CROPS, cropWindow, ORIENTATIONS, orientLuma, ROTATIONS, rotationLabel, viewFactor }
  from './variants.js';

export { HashError } from './decode.js';

/** Must equal registry.hashing.PIPELINE_VERSION. */
export const PIPELINE_VERSION = 4;
const MIN_TRIM = 0.01;

// pdq, phash, content, the views, local
const PIXEL_STAGES = 3 + 1 + ORIENTATIONS.length + CROPS.length + ROTATIONS.length + 1;
const FILE_STAGES = 3; // read, digests, decode

/** RGBA (un-premultiplied, as ImageData holds it) -> RGB flattened onto black:
 * c' = (c * a + 127) // 255, as registry/hashing/decode.py. */
export function flatten(rgba, width, height) {
  const n = width * height;
  const rgb = new Uint8Array(n * 3);
  for (let i = 0, p = 0, q = 0; i < n; i++, p += 4, q += 3) {
    const a = rgba[p + 3];
    if (a === 255) {
      rgb[q] = rgba[p];
      rgb[q + 1] = rgba[p + 1];
      rgb[q + 2] = rgba[p + 2];
    } else {
      rgb[q] = Math.floor((rgba[p] * a + 127) / 255);
      rgb[q + 1] = Math.floor((rgba[p + 1] * a + 127) / 255);
      rgb[q + 2] = Math.floor((rgba[p + 2] * a + 127) / 255);
    }
  }
  return rgb;
}

function counter(onProgress, total, start = 0) {
  let done = start;
  return (stage) => {
    done += 1;
    if (onProgress) onProgress(done, total, stage);
  };
}

/**
 * The perceptual signals of an RGB image (3 bytes per pixel): {pdq, pdq_quality, phash, views,
 * local, width, height}; `local` (a Uint8Array, or null) only when OpenCV is given as `cv`.
 * `step(stage)` is called after each stage.
 */
export function hashRGB(rgb, width, height, step = () => {}, cv = null) {
  const luma = pdqLuma(rgb, width, height);
  const full = pdqOfLuma(luma, width, 0, 0, width, height);
  step('pdq');
  const phash = phashOfRGB(rgb, width, height);
  step('phash');
  const views = [];
  const [left, top, right, bottom] = contentBox(rgb, width, height);
  if ((right - left) * (bottom - top) < (1 - MIN_TRIM) * width * height) {
    const content = pdqOfLuma(luma, width, left, top, right - left, bottom - top);
    views.push({ label: 'content', pdq: content.hex, quality: content.quality });
  }
  step('content');
  // The views are cut from a reduced copy of large pictures (variants.js viewFactor).
  const factor = viewFactor(width, height);
  let vrgb = rgb;
  let vluma = luma;
  let vw = width;
  let vh = height;
  if (factor > 1) {
    const small = reduceRGB(rgb, width, height, factor);
    vrgb = small.data;
    vw = small.width;
    vh = small.height;
    vluma = pdqLuma(vrgb, vw, vh);
  }
  const mirror = pdqOfLuma(vluma, vw, 0, 0, vw, vh, true);
  views.push({ label: 'mirror', pdq: mirror.hex, quality: mirror.quality });
  step('mirror');
  const turned = new Float32Array(vw * vh);
  for (const [label, method] of ORIENTATIONS) {
    const o = orientLuma(vluma, vw, vh, method, turned);
    const view = pdqOfLuma(o.luma, o.width, 0, 0, o.width, o.height);
    views.push({ label, pdq: view.hex, quality: view.quality });
    step(label);
  }
  for (const [label, keep, fx, fy] of CROPS) {
    const [x, y, w, h] = cropWindow(vw, vh, keep, fx, fy);
    const crop = pdqOfLuma(vluma, vw, x, y, w, h);
    views.push({ label, pdq: crop.hex, quality: crop.quality });
    step(label);
  }
  // The rotations reuse two buffers: one for the rotated pixels, the luma's for their luma.
  const rotated = new Uint8Array(vrgb.length);
  const rluma = factor > 1 ? vluma : luma; // the full picture's luma is not needed any more
  for (const degrees of ROTATIONS) {
    pdqLuma(rotateRGB(vrgb, vw, vh, degrees, rotated), vw, vh, rluma);
    const view = pdqOfLuma(rluma, vw, 0, 0, vw, vh);
    const label = rotationLabel(degrees);
    views.push({ label, pdq: view.hex, quality: view.quality });
    step(label);
  }
  releaseScratch();
  const local = cv ? localOfRGB(cv, rgb, width, height) : null;
  step('local');
  return { pdq: full.hex, pdq_quality: full.quality, phash, views, local, width, height };
}

/**
 * The perceptual signals of decoded pixels (RGBA, un-premultiplied, e.g. ImageData.data):
 * {pdq, pdq_quality, phash, views, width, height}. onProgress(done, total, stage) is optional.
 */
export function hashPixels(rgba, width, height, { onProgress, cv = null } = {}) {
  return hashRGB(flatten(rgba, width, height), width, height, counter(onProgress, PIXEL_STAGES),
    cv);
}

// Decoded and flattened; the RGBA pixels are not kept beyond this function.
async function decodeRGB(bytes, limits) {
  const { rgba, width, height } = await decodeImage(bytes, limits);
  return { rgb: flatten(rgba, width, height), width, height };
}

/**
 * Every signal of an image file (a File or Blob), decoded and hashed here: the object the submit
 * page sends. `limits` {maxBytes, maxPixels} are the server's (the page's data attributes).
 * Throws HashError (code, message) for files that are not hashable images.
 */
export async function hashFile(blob, { onProgress, limits } = {}) {
  const { maxBytes } = checkLimits(limits);
  const total = FILE_STAGES + PIXEL_STAGES;
  const step = counter(onProgress, total);
  if (blob.size === 0) throw new HashError('empty_file', 'The file is empty.');
  if (blob.size > maxBytes) { // refused before it is read into memory
    throw new HashError('file_too_large',
      `The file is ${blob.size} bytes; the limit is ${maxBytes} bytes.`);
  }
  const opencv = loadOpenCV(); // loads while the file is read and decoded
  const bytes = new Uint8Array(await blob.arrayBuffer());
  step('read');
  const md5 = md5Hex(bytes);
  const sha256 = await sha256Hex(bytes);
  step('digests');
  const { rgb, width, height } = await decodeRGB(bytes, limits);
  step('decode');
  let cv;
  try {
    ({ cv } = await opencv);
  } catch {
    throw new HashError('hashing_failed', 'The image analyser (opencv.js) could not be loaded ' +
      'in this browser.');
  }
  const image = hashRGB(rgb, width, height, step, cv);
  const signals = { pdq: image.pdq, phash: image.phash, md5, sha256 };
  if (image.local) signals.local = base64(image.local);
  return {
    signals,
    pdq_quality: image.pdq_quality,
    views: image.views,
    pipeline_version: PIPELINE_VERSION,
    width,
    height,
  };
}
