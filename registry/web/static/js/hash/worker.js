// The hashing worker: new Worker('/static/js/hash/worker.js', {type: 'module'}).
//
// Protocol (fixed; the submit page depends on it):
//   page -> worker  {id, file, limits}               a File or Blob; limits {maxBytes, maxPixels}
//                                                    are the server's (the page gives them)
//   worker -> page  {id, type: 'progress', done, total, stage}   zero or more
//                   then exactly one of
//                   {id, type: 'result', image: {signals: {pdq, phash, md5, sha256}, pdq_quality,
//                     views: [{label, pdq, quality}, ...], pipeline_version, width, height}}
//                   {id, type: 'error', code, message}
//
// Error codes: empty_file, file_too_large, not_an_image, unsupported_format, image_too_large,
// truncated_image, hashing_failed (anything unexpected). Messages are English sentences.
// Files are hashed one at a time, in the order they arrive. Only hashes leave this worker.

import { HashError, hashFile } from './signals.js';

let queue = Promise.resolve();

async function handle(id, file, limits) {
  try {
    if (!(file instanceof Blob)) throw new HashError('not_an_image', 'No file was given.');
    const image = await hashFile(file, {
      limits,
      onProgress: (done, total, stage) => self.postMessage({ id, type: 'progress', done, total, stage }),
    });
    self.postMessage({ id, type: 'result', image });
  } catch (error) {
    if (error instanceof HashError) {
      self.postMessage({ id, type: 'error', code: error.code, message: error.message });
    } else {
      self.postMessage({
        id,
        type: 'error',
        code: 'hashing_failed',
        message: 'The image could not be hashed in this browser (it may be too large for the ' +
          'memory available).',
      });
    }
  }
}

self.addEventListener('message', (event) => {
  const { id, file, limits } = event.data || {};
  queue = queue.then(() => handle(id, file, limits));
});
