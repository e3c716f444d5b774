// A video's registration signals computed in the browser: the port of
// registry/hashing/video.py (its docstring defines the rules; the numbers below are its
// constants). The page's own <video> element decodes the file from an object URL (the bytes stay
// on this device) and plays it, muted, four times as fast; the frame shown at each quarter
// second is drawn onto a canvas reduced to a short side of at most 512 px; the frame box (letterbox and pillarbox bars
// peeled, content.js FRAME_RULES) is PDQ-hashed (pdq.js), and the kept frames are packed as the
// `vpdq` signal. Only the hashes come out:
//
//   {signals: {vpdq, md5, sha256}, pipeline_version, frames, duration_ms, width, height}
//
// Runs on the page (a worker has no <video>), one frame at a time as they are shown, so the page
// stays responsive. Differences from FFmpeg's decode: the browser converts YUV to RGB and scales
// itself, and at four times the speed it may skip a frame, so a candidate can be one frame later
// than video.py's; bench/browser_parity_video.py measures what that costs in matches.

import { contentBox, FRAME_RULES } from './content.js';
import { boxFamily, HashError } from './decode.js';
import { md5Hex, sha256Hex } from './digests.js';
import { pdqLuma, pdqOfLuma } from './pdq.js';
import { roundHalfEven } from './pillow.js';
import { base64 } from './local.js';
import { flatten, PIPELINE_VERSION } from './signals.js';

export const VERSION = 1;
export const CANDIDATE_FPS = 4;
export const FRAME_SIZE = 512;
export const MIN_QUALITY = 50;
export const DEDUP_BITS = 16;
export const FRAMES_PER_MINUTE = 54;
export const MIN_FRAMES = 4;
const MIN_TRIM = 0.01;
const HEADER_BYTES = 8; // >BBHI
const FRAME_BYTES = 37; // >IB32s
const LOAD_TIMEOUT_MS = 20_000;
const STALL_MS = 20_000; // no frame for this long: the browser cannot play it
const PLAYBACK_RATE = 4;

/** The demuxer video.py would name for these first bytes (null: not a video it opens). */
export function containerOf(bytes) {
  const tag = (i) => String.fromCharCode(...bytes.subarray(i, i + 4));
  if (bytes[0] === 0x1a && bytes[1] === 0x45 && bytes[2] === 0xdf && bytes[3] === 0xa3) {
    return 'matroska';
  }
  if (tag(0) === 'RIFF' && tag(8) === 'AVI ') return 'avi';
  if (bytes.length >= 12 && ['ftyp', 'moov', 'mdat', 'wide', 'free', 'skip'].includes(tag(4))) {
    if (tag(4) === 'ftyp' && boxFamily(bytes) !== null) return null; // a HEIF or AVIF still
    return 'mov';
  }
  return null;
}

/** Whether a file the user picked is a video (by its type, or by its first bytes). */
export async function isVideo(blob) {
  if (blob.type.startsWith('video/')) return true;
  if (blob.type.startsWith('image/')) return false;
  return containerOf(new Uint8Array(await blob.slice(0, 4096).arrayBuffer())) !== null;
}

/** video.py keep()'s registration budget for a video of this many milliseconds. */
export function budgetOf(durationMs) {
  return Math.max(MIN_FRAMES, Math.floor((FRAMES_PER_MINUTE * durationMs) / 60_000));
}

function popcount32(x) {
  let v = x - ((x >>> 1) & 0x55555555);
  v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
  return (((v + (v >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

function distance(a, b) {
  let d = 0;
  for (let i = 0; i < 32; i += 4) {
    d += popcount32(((a[i] ^ b[i]) << 24) | ((a[i + 1] ^ b[i + 1]) << 16) |
      ((a[i + 2] ^ b[i + 2]) << 8) | (a[i + 3] ^ b[i + 3]));
  }
  return d;
}

function hexBytes(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
  return out;
}

/** Rule 4 (registration): frames [{ms, quality, pdq: Uint8Array(32)}] -> the kept ones. */
export function keep(frames, durationMs) {
  const usable = frames.filter((f) => f.quality >= MIN_QUALITY);
  if (!usable.length) {
    throw new HashError('not_a_video', 'Every frame of the video is too plain (for example ' +
      'black or one colour) to be recognised reliably.');
  }
  let kept = [0];
  for (let i = 1; i < usable.length; i++) {
    if (distance(usable[i].pdq, usable[kept[kept.length - 1]].pdq) > DEDUP_BITS) kept.push(i);
  }
  const budget = budgetOf(durationMs);
  if (kept.length > budget) {
    const step = (kept.length - 1) / (budget - 1);
    kept = Array.from({ length: budget }, (_, j) => kept[roundHalfEven(j * step)]);
  }
  return kept.map((i) => usable[i]);
}

/** VideoFrames.pack: the bytes of a vpdq signal. */
export function pack(frames, durationMs) {
  const out = new Uint8Array(HEADER_BYTES + frames.length * FRAME_BYTES);
  const view = new DataView(out.buffer);
  view.setUint8(0, VERSION);
  view.setUint8(1, DEDUP_BITS);
  view.setUint16(2, frames.length);
  view.setUint32(4, durationMs);
  frames.forEach((f, n) => {
    const at = HEADER_BYTES + n * FRAME_BYTES;
    view.setUint32(at, f.ms);
    view.setUint8(at + 4, f.quality);
    out.set(f.pdq, at + 5);
  });
  return out;
}

/** One frame's registration hash: PDQ of its frame box (the whole frame when nothing is
 * peeled), as video.py's candidates(frame_box=True). `rgba` as ImageData holds it. */
export function frameHash(rgba, width, height) {
  const rgb = flatten(rgba, width, height); // opaque: the RGB as drawn
  const luma = pdqLuma(rgb, width, height);
  const [left, top, right, bottom] = contentBox(rgb, width, height, FRAME_RULES);
  const shaved = (right - left) * (bottom - top) < (1 - MIN_TRIM) * width * height;
  const { hex, quality } = shaved
    ? pdqOfLuma(luma, width, left, top, right - left, bottom - top)
    : pdqOfLuma(luma, width, 0, 0, width, height);
  return { pdq: hexBytes(hex), quality };
}

function once(target, ok, bad, ms, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { done(); reject(new HashError('unsupported_format', what)); }, ms);
    const onOk = () => { done(); resolve(); };
    const onBad = () => { done(); reject(new HashError('unsupported_format', what)); };
    const done = () => {
      clearTimeout(timer);
      target.removeEventListener(ok, onOk);
      target.removeEventListener(bad, onBad);
    };
    target.addEventListener(ok, onOk);
    target.addEventListener(bad, onBad);
  });
}

/** {maxBytes, maxPixels, maxSeconds}: the server's video limits (the page's data attributes). */
function checkVideoLimits(limits) {
  const { maxBytes, maxPixels, maxSeconds } = limits || {};
  for (const v of [maxBytes, maxPixels, maxSeconds]) {
    if (!Number.isFinite(v) || v <= 0) throw new Error('the video limits were not given');
  }
  return { maxBytes, maxPixels, maxSeconds };
}

/**
 * Every registration signal of a video file (a File or Blob), hashed on this device.
 * onProgress(done, total) after each frame. Throws HashError: empty_file, file_too_large,
 * not_a_video, video_too_large, unsupported_format (the browser cannot decode it: the server
 * still may).
 */
export async function hashVideo(blob, { limits, onProgress } = {}) {
  const { maxBytes, maxPixels, maxSeconds } = checkVideoLimits(limits);
  if (blob.size === 0) throw new HashError('empty_file', 'The file is empty.');
  if (blob.size > maxBytes) {
    throw new HashError('file_too_large',
      `The file is ${blob.size} bytes; the limit is ${maxBytes} bytes.`);
  }
  const bytes = new Uint8Array(await blob.arrayBuffer());
  if (containerOf(bytes) === null) {
    throw new HashError('not_a_video', 'The file is not a video this registry reads (MP4, ' +
      'MOV, 3GP, WebM, MKV or AVI).');
  }
  if (!('requestVideoFrameCallback' in HTMLVideoElement.prototype)) {
    throw new HashError('unsupported_format', 'This browser cannot show a video frame by frame.');
  }
  const md5 = md5Hex(bytes);
  const sha256 = await sha256Hex(bytes);
  const url = URL.createObjectURL(blob);
  const video = document.createElement('video');
  video.muted = true;
  video.preload = 'auto';
  video.playsInline = true;
  try {
    const loaded = once(video, 'loadeddata', 'error', LOAD_TIMEOUT_MS,
      'This browser cannot play this video.');
    video.src = url;
    await loaded;
    const width = video.videoWidth;
    const height = video.videoHeight;
    if (!width || !height) throw new HashError('not_a_video', 'The file has no video picture.');
    if (width * height > maxPixels) {
      throw new HashError('video_too_large', `The video is ${width} x ${height} pixels; the ` +
        `limit is ${maxPixels} pixels a frame.`);
    }
    const seconds = video.duration;
    if (!Number.isFinite(seconds)) {
      throw new HashError('unsupported_format', 'This browser cannot tell how long the video is.');
    }
    if (seconds > maxSeconds) {
      throw new HashError('video_too_large', `The video runs ${Math.round(seconds)} s; the ` +
        `limit is ${maxSeconds} s.`);
    }
    const short = Math.min(width, height);
    const scale = short > FRAME_SIZE ? FRAME_SIZE / short : 1;
    const w = Math.max(1, roundHalfEven(width * scale));
    const h = Math.max(1, roundHalfEven(height * scale));
    const canvas = new OffscreenCanvas(w, h);
    const context = canvas.getContext('2d', { willReadFrequently: true });
    context.imageSmoothingEnabled = true;
    context.imageSmoothingQuality = 'high';
    // Played (muted, PLAYBACK_RATE times as fast) rather than seeked: a seek decodes from the
    // last keyframe, so 240 seeks a minute of phone video cost a minute; playing decodes each
    // frame once. The first presented frame at or after each candidate time is taken, as
    // video.py takes the first decoded one (the browser may skip a frame at this rate, so it
    // can be one frame later).
    const total = Math.max(1, Math.ceil(seconds * CANDIDATE_FPS));
    const frames = [];
    let next = 0; // the next candidate time, in seconds
    let lastMs = 0;
    const take = (mediaTime) => {
      context.drawImage(video, 0, 0, w, h);
      const { data } = context.getImageData(0, 0, w, h);
      const ms = Math.floor(mediaTime * 1000 + 1e-6);
      frames.push({ ms, ...frameHash(data, w, h) });
      next = (Math.floor(mediaTime * CANDIDATE_FPS + 1e-9) + 1) / CANDIDATE_FPS;
      if (onProgress) onProgress(Math.min(frames.length, total), total);
    };
    take(0); // the first frame, shown once loaded
    await new Promise((resolve, reject) => {
      let timer = 0;
      const stall = () => {
        clearTimeout(timer);
        timer = setTimeout(() => {
          video.pause();
          reject(new HashError('unsupported_format', 'This browser stopped playing the video.'));
        }, STALL_MS);
      };
      const onFrame = (_now, meta) => {
        stall();
        lastMs = Math.max(lastMs, Math.floor(meta.mediaTime * 1000 + 1e-6));
        if (meta.mediaTime + 1e-6 >= next) take(meta.mediaTime);
        if (!video.ended) video.requestVideoFrameCallback(onFrame);
      };
      video.addEventListener('ended', () => { clearTimeout(timer); resolve(); }, { once: true });
      video.addEventListener('error', () => {
        clearTimeout(timer);
        reject(new HashError('unsupported_format', 'This browser could not decode the video.'));
      }, { once: true });
      video.requestVideoFrameCallback(onFrame);
      video.playbackRate = PLAYBACK_RATE;
      stall();
      video.play().catch(() => {
        clearTimeout(timer);
        reject(new HashError('unsupported_format', 'This browser cannot play this video.'));
      });
    });
    const durationMs = lastMs; // video.py: the last frame's time, not the container's length
    const kept = keep(frames, durationMs);
    return {
      signals: { vpdq: base64(pack(kept, durationMs)), md5, sha256 },
      pipeline_version: PIPELINE_VERSION,
      frames: kept.length,
      duration_ms: durationMs,
      width,
      height,
    };
  } finally {
    video.removeAttribute('src');
    video.load();
    URL.revokeObjectURL(url);
  }
}
