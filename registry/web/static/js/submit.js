// The submit page: hash the chosen images on this device (a Web Worker), then send only the
// hashes, as JSON. The image files are read by the worker and never sent anywhere.
//
// Worker protocol: we post {id, file}; it answers {id, type: 'progress', done, total, stage}
// messages, then {id, type: 'result', image} or {id, type: 'error', code, message}.
// A video is hashed on the page itself (hash/video.js: a worker has no <video> element) and
// sends only its frame hashes and digests.

import { hashVideo, isVideo } from './hash/video.js';
import { showReceipt } from './receipt.js';

const form = document.getElementById('submit-form');
const strings = document.getElementById('strings').dataset;
const input = document.getElementById('images');
const consent = document.getElementById('consent');
const button = document.getElementById('submit-button');
const start = document.getElementById('start');
const previews = document.getElementById('previews');
const previewList = document.getElementById('preview-list');
const unblur = document.getElementById('unblur');
const progressArea = document.getElementById('progress-area');
const progress = document.getElementById('progress');
const status = document.getElementById('status');
const alertBox = document.getElementById('alert');
const alertText = document.getElementById('alert-text');
const fallback = document.getElementById('fallback');
const minQuality = Number(form.dataset.minQuality);
const maxImages = Number(form.dataset.maxImages);
// The server's size limits (settings max_upload_bytes, max_image_pixels): the worker checks
// each file against them before decoding it.
const limits = { maxBytes: Number(form.dataset.maxBytes), maxPixels: Number(form.dataset.maxPixels) };
// ... and its video limits (max_video_bytes, max_video_pixels, max_video_seconds).
const videoLimits = {
  maxBytes: Number(form.dataset.maxVideoBytes),
  maxPixels: Number(form.dataset.maxVideoPixels),
  maxSeconds: Number(form.dataset.maxVideoSeconds),
};

let previewUrls = [];
let busy = false;

function format(template, values) {
  return template.replace(/\{(\w+)\}/g, (whole, key) => (key in values ? String(values[key]) : whole));
}

class Refusal extends Error {
  constructor(message, { offerServer = false, file = null } = {}) {
    super(message);
    this.offerServer = offerServer;
    this.file = file;
  }
}

// --- previews: local object URLs, blurred until asked -------------------------------------
function clearPreviews() {
  for (const url of previewUrls) URL.revokeObjectURL(url);
  previewUrls = [];
  previewList.replaceChildren();
  previews.hidden = true;
}

function showPreviews() {
  clearPreviews();
  const files = [...input.files];
  for (const file of files) {
    const item = document.createElement('li');
    const frame = document.createElement('div');
    frame.className = 'frame';
    const video = file.type.startsWith('video/');
    const img = document.createElement(video ? 'video' : 'img');
    const url = URL.createObjectURL(file);
    previewUrls.push(url);
    img.src = url;
    if (video) {
      img.muted = true;
      img.preload = 'metadata';
      img.setAttribute('aria-hidden', 'true');
    } else {
      img.alt = '';
    }
    frame.append(img);
    const name = document.createElement('span');
    name.textContent = file.name;
    item.append(frame, name);
    previewList.append(item);
  }
  previews.hidden = files.length === 0;
}

function markBad(file) {
  const index = [...input.files].indexOf(file);
  const item = previewList.children[index];
  if (item) item.classList.add('bad');
}

// --- hashing in the worker ------------------------------------------------------------------
function startWorker() {
  try {
    return new Worker(new URL('./hash/worker.js', import.meta.url), { type: 'module' });
  } catch {
    throw new Refusal(strings.noWorker, { offerServer: true });
  }
}

function hashOne(worker, id, file, onProgress) {
  return new Promise((resolve, reject) => {
    const onMessage = (event) => {
      const message = event.data;
      if (!message || message.id !== id) return;
      if (message.type === 'progress') {
        if (message.total > 0) onProgress(message.done / message.total);
        return;
      }
      cleanup();
      if (message.type === 'result') resolve(message.image);
      else reject(refusalOf(message.code, file));
    };
    const onError = (event) => {
      event.preventDefault();
      cleanup();
      reject(new Refusal(strings.noWorker, { offerServer: true }));
    };
    const cleanup = () => {
      worker.removeEventListener('message', onMessage);
      worker.removeEventListener('error', onError);
    };
    worker.addEventListener('message', onMessage);
    worker.addEventListener('error', onError);
    worker.postMessage({ id, file, limits });
  });
}

// The worker's error codes, as the page says them.
const FILE_ERRORS = {
  empty_file: 'empty',
  file_too_large: 'tooLarge',
  image_too_large: 'tooLarge',
  truncated_image: 'damaged',
  not_an_image: 'unreadable',
  not_a_video: 'notVideo',
  video_too_large: 'videoTooLarge',
};

function refusalOf(code, file) {
  // A format the server reads and this browser cannot (HEIC, TIFF): the server still could.
  if (code === 'unsupported_format') {
    return new Refusal(format(strings.cannotOpen, { file: file.name }), { file, offerServer: true });
  }
  if (code in FILE_ERRORS) return new Refusal(format(strings[FILE_ERRORS[code]], { file: file.name }), { file });
  // hashing_failed (e.g. out of memory): this browser cannot do it; the server still could.
  return new Refusal(format(strings.browserFailed, { file: file.name }), { file, offerServer: true });
}

// Only these fields are sent: hashes, keypoint descriptors, quality scores and view labels
// (never pixels or names). `local` is absent when the picture has too few keypoints.
function signalsOf(image) {
  const { pdq, phash, md5, sha256, local } = image.signals;
  const signals = { pdq, phash, md5, sha256 };
  if (local) signals.local = local;
  return {
    signals,
    pdq_quality: image.pdq_quality,
    views: (image.views || []).map(({ label, pdq: hash, quality }) => ({ label, pdq: hash, quality })),
    pipeline_version: image.pipeline_version,
  };
}

// A video, hashed on this page: only its frame hashes and digests are sent.
async function hashOneVideo(file, n, total) {
  const show = (done, frames) => {
    status.textContent = format(strings.hashingVideo, { n: n + 1, total, frame: done, frames });
    progress.value = n + (frames ? Math.min(done / frames, 1) : 0);
  };
  show(0, 0);
  try {
    const video = await hashVideo(file, { limits: videoLimits, onProgress: show });
    return { signals: video.signals, pipeline_version: video.pipeline_version };
  } catch (error) {
    if (error && error.code === 'unsupported_format') {
      throw new Refusal(format(strings.cannotPlay, { file: file.name }), { file, offerServer: true });
    }
    if (error && error.code) throw refusalOf(error.code, file);
    throw new Refusal(format(strings.browserFailed, { file: file.name }), { file, offerServer: true });
  }
}

async function hashAll(files) {
  const worker = startWorker();
  const images = [];
  try {
    progress.max = files.length;
    for (const [n, file] of files.entries()) {
      progress.value = n;
      if (await isVideo(file)) {
        images.push(await hashOneVideo(file, n, files.length));
        continue;
      }
      status.textContent = format(strings.hashing, { n: n + 1, total: files.length });
      const image = await hashOne(worker, `image-${n}`, file, (fraction) => {
        progress.value = n + Math.min(fraction, 1);
      });
      if (image.pdq_quality < minQuality) {
        throw new Refusal(format(strings.plain, { file: file.name }), { file });
      }
      images.push(signalsOf(image));
    }
    progress.value = files.length;
  } finally {
    worker.terminate();
  }
  return images;
}

// --- sending the hashes ---------------------------------------------------------------------
async function send(images) {
  const url = new URL(form.dataset.signalsUrl, window.location.href);
  url.searchParams.set('lang', document.documentElement.lang);
  let response;
  try {
    response = await fetch(url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': form.elements.csrf_token.value },
      body: JSON.stringify({ images }),
      credentials: 'same-origin',
      cache: 'no-store',
    });
  } catch {
    throw new Refusal(strings.network);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok || !body || !body.case) {
    throw new Refusal((body && body.error && body.error.message) || strings.failed);
  }
  return body;
}

// --- the page -------------------------------------------------------------------------------
function showError(message, offerServer) {
  alertText.textContent = message;
  fallback.hidden = !offerServer;
  alertBox.hidden = false;
  alertBox.focus();
}

function setBusy(on) {
  busy = on;
  button.disabled = on;
  form.setAttribute('aria-busy', String(on));
  progressArea.hidden = !on;
}

function finish(receipt) {
  form.reset();
  clearPreviews();
  start.hidden = true;
  alertBox.hidden = true;
  // Announced, not shown: the receipt's own heading says the same on screen.
  status.classList.add('sr-only');
  status.textContent = strings.registered;
  showReceipt(receipt.case, receipt.pin);
}

async function register(event) {
  event.preventDefault();
  if (busy) return;
  const files = [...input.files];
  if (files.length > maxImages) {
    showError(format(strings.tooMany, { max: maxImages }), false);
    return;
  }
  alertBox.hidden = true;
  setBusy(true);
  try {
    const images = await hashAll(files);
    status.textContent = strings.sending;
    finish(await send(images));
  } catch (error) {
    status.textContent = '';
    if (error instanceof Refusal) {
      if (error.file) markBad(error.file);
      showError(error.message, error.offerServer);
    } else {
      showError(strings.failed, false);
    }
  } finally {
    setBusy(false);
  }
}

form.addEventListener('submit', register);
input.addEventListener('change', () => {
  alertBox.hidden = true;
  showPreviews();
});
unblur.addEventListener('change', () => previews.classList.toggle('clear', unblur.checked));
// The explicit second choice: upload to be hashed in memory on the server (no-JS path).
document.getElementById('fallback-button').addEventListener('click', () => {
  if (consent.checked && input.files.length) HTMLFormElement.prototype.submit.call(form);
  else form.reportValidity();
});
document.addEventListener('quickexit', clearPreviews);
