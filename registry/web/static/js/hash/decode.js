// Decoding a picked file into RGB pixels, inside the worker, with the rules of
// registry/hashing/decode.py:
//
// - only the formats the server accepts (JPEG, PNG, GIF, WebP, BMP, AVIF; TIFF and HEIC/HEIF
//   are accepted by the server but Chromium cannot decode them: refused with
//   'unsupported_format', and the page offers the server's in-memory path) and at most
//   limits.maxBytes;
// - the pixel count is read from the file header and checked (limits.maxPixels) before
//   decoding. Both limits are the server's settings (max_upload_bytes, max_image_pixels),
//   given to the worker by the page; this module holds no copy of them;
// - files that end before their image data does are refused, as Pillow refuses them (browsers
//   would draw the missing part grey);
// - createImageBitmap(file, {colorSpaceConversion: 'none'}): no colour management (Pillow has
//   none) and EXIF orientation applied (Pillow's exif_transpose), first frame of an animation;
// - the bitmap is drawn at its natural size on an OffscreenCanvas and read with getImageData.
//   Chromium keeps canvas pixels premultiplied by alpha and getImageData un-premultiplies them
//   (so a colour under alpha a is only known to about 255/a steps). Flattening onto black is
//   (c * a + 127) // 255, the premultiplied value rounded, which the un-premultiplied value
//   still yields exactly (signals.js flatten; measured in tests/test_browser_hashing.py).

/** A failure with a stable snake_case code (the server's codes where it has one). */
export class HashError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'HashError';
    this.code = code;
  }
}

/** The limits {maxBytes, maxPixels} as given, checked: without them nothing is hashed. */
export function checkLimits(limits) {
  const { maxBytes, maxPixels } = limits || {};
  if (!(Number.isSafeInteger(maxBytes) && maxBytes > 0
        && Number.isSafeInteger(maxPixels) && maxPixels > 0)) {
    throw new HashError('hashing_failed', 'The page did not give the size limits.');
  }
  return { maxBytes, maxPixels };
}

const u16be = (b, o) => (b[o] << 8) | b[o + 1];
const u16le = (b, o) => b[o] | (b[o + 1] << 8);
const u24le = (b, o) => b[o] | (b[o + 1] << 8) | (b[o + 2] << 16);
const u32be = (b, o) => ((b[o] << 24) >>> 0) + ((b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]);
const i32le = (b, o) => b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24);
const ascii = (b, o, n) => String.fromCharCode(...b.subarray(o, o + n));

function truncated() {
  return new HashError('truncated_image', 'The image file is truncated: it ends before its data.');
}

// JPEG: walk the marker segments to the frame header; then check that every scan's
// entropy-coded data is followed by a marker (a file cut inside a scan has none).
function jpegInfo(b) {
  let size = null;
  let o = 2;
  while (o + 2 <= b.length) {
    if (b[o] !== 0xff) { o++; continue; } // stray bytes between segments: libjpeg skips them
    const marker = b[o + 1];
    if (marker === 0xff) { o++; continue; } // fill byte
    if (marker === 0xd9) return { size, complete: size !== null };
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) { o += 2; continue; }
    if (o + 4 > b.length) break;
    const length = u16be(b, o + 2);
    if (length < 2 || o + 2 + length > b.length) throw truncated();
    const isFrame = marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 &&
      marker !== 0xcc;
    if (isFrame && size === null) size = { width: u16be(b, o + 7), height: u16be(b, o + 5) };
    o += 2 + length;
    if (marker === 0xda) { // scan data runs to the next marker other than RSTn or a stuffed 0
      while (o + 1 < b.length && !(b[o] === 0xff && b[o + 1] !== 0 &&
          !(b[o + 1] >= 0xd0 && b[o + 1] <= 0xd7))) o++;
      if (o + 1 >= b.length) throw truncated();
    }
  }
  throw truncated();
}

function pngInfo(b) {
  if (b.length < 33) throw truncated();
  const size = { width: u32be(b, 16), height: u32be(b, 20) };
  let o = 8;
  while (o + 12 <= b.length) {
    const length = u32be(b, o);
    const type = ascii(b, o + 4, 4);
    o += 12 + length;
    if (type === 'IEND') return { size, complete: o <= b.length };
  }
  throw truncated();
}

function webpInfo(b) {
  if (b.length < 30) throw truncated();
  if (8 + (u16le(b, 4) + 65536 * u16le(b, 6)) > b.length) throw truncated();
  const chunk = ascii(b, 12, 4);
  if (chunk === 'VP8X') return { width: 1 + u24le(b, 24), height: 1 + u24le(b, 27) };
  if (chunk === 'VP8L') {
    const bits = i32le(b, 21);
    return { width: 1 + (bits & 0x3fff), height: 1 + ((bits >>> 14) & 0x3fff) };
  }
  if (chunk === 'VP8 ') return { width: u16le(b, 26) & 0x3fff, height: u16le(b, 28) & 0x3fff };
  return null;
}

function bmpInfo(b) {
  if (b.length < 26) throw truncated();
  if (i32le(b, 14) === 12) return { width: u16le(b, 18), height: u16le(b, 20) };
  return { width: Math.abs(i32le(b, 18)), height: Math.abs(i32le(b, 22)) };
}

// HEIF and AVIF (ISO base media boxes; registry/hashing/isobmff.py, the same rules): the
// family from the ftyp brands, and the largest picture any ispe property declares, read from
// meta > iprp > ipco. A box running past the end of the file is a truncated file.
const HEIF_BRANDS = ['heic', 'heix', 'heim', 'heis', 'hevc', 'hevx', 'mif1', 'msf1'];
const AVIF_BRANDS = ['avif', 'avis'];
const MAX_BOXES = 4096;
const CONTAINERS = { meta: 4, iprp: 0, ipco: 0 };

/** 'AVIF', 'HEIF' or null, from the ftyp box that must open the file (isobmff.family). */
export function boxFamily(b) {
  if (b.length < 16 || ascii(b, 4, 4) !== 'ftyp') return null;
  const size = u32be(b, 0);
  if (size < 16 || size > 4096) return null;
  const end = Math.min(size, b.length); // a file cut inside its ftyp box is known (truncated)
  const brands = [ascii(b, 8, 4)];
  for (let i = 16; i + 4 <= end; i += 4) brands.push(ascii(b, i, 4));
  if (brands.some((x) => AVIF_BRANDS.includes(x))) return 'AVIF';
  if (brands.some((x) => HEIF_BRANDS.includes(x))) return 'HEIF';
  return null;
}

function largestPicture(b, family) {
  const corrupt = () => new HashError('truncated_image',
    `The ${family} file is corrupt and cannot be decoded.`);
  let count = 0;
  let largest = null;
  const walk = (start, end) => {
    let at = start;
    while (at < end) {
      if (++count > MAX_BOXES) throw corrupt();
      if (end - at < 8) throw end === b.length ? truncated() : corrupt();
      let size = u32be(b, at);
      const kind = ascii(b, at + 4, 4);
      let body = at + 8;
      if (size === 1) {
        if (end - at < 16) throw end === b.length ? truncated() : corrupt();
        size = u32be(b, at + 8) * 4294967296 + u32be(b, at + 12);
        body = at + 16;
      } else if (size === 0) {
        size = end - at;
      }
      if (size < body - at || at + size > end) throw at + size > b.length ? truncated() : corrupt();
      foundMeta = foundMeta || kind === 'meta';
      if (kind in CONTAINERS) {
        walk(body + CONTAINERS[kind], at + size);
      } else if (kind === 'ispe' && at + size - body >= 12) {
        const width = u32be(b, body + 4);
        const height = u32be(b, body + 8);
        if (largest === null || width * height > largest.width * largest.height) {
          largest = { width, height };
        }
      }
      at += size;
    }
  };
  let foundMeta = false;
  walk(0, b.length);
  if (largest === null && !foundMeta) throw truncated(); // the file ends before its meta box
  if (largest === null) {
    throw new HashError('truncated_image',
      `The ${family} file declares no picture size; it is corrupt.`);
  }
  return largest;
}

/** The format and, where the header tells, the size of an image file; throws HashError. */
export function sniff(bytes, limits) {
  const { maxBytes } = checkLimits(limits);
  const b = bytes;
  if (b.length === 0) throw new HashError('empty_file', 'The file is empty.');
  if (b.length > maxBytes) {
    throw new HashError('file_too_large',
      `The file is ${b.length} bytes; the limit is ${maxBytes} bytes.`);
  }
  if (b.length >= 3 && b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) {
    const info = jpegInfo(b);
    if (!info.complete) throw truncated();
    return { format: 'JPEG', size: info.size };
  }
  if (b.length >= 8 && u32be(b, 0) === 0x89504e47 && u32be(b, 4) === 0x0d0a1a0a) {
    const info = pngInfo(b);
    if (!info.complete) throw truncated();
    return { format: 'PNG', size: info.size };
  }
  if (b.length >= 10 && (ascii(b, 0, 6) === 'GIF87a' || ascii(b, 0, 6) === 'GIF89a')) {
    return { format: 'GIF', size: { width: u16le(b, 6), height: u16le(b, 8) } };
  }
  if (b.length >= 16 && ascii(b, 0, 4) === 'RIFF' && ascii(b, 8, 4) === 'WEBP') {
    return { format: 'WEBP', size: webpInfo(b) };
  }
  if (b.length >= 2 && ascii(b, 0, 2) === 'BM') return { format: 'BMP', size: bmpInfo(b) };
  const family = boxFamily(b);
  if (family === 'AVIF') return { format: 'AVIF', size: largestPicture(b, family) };
  if (family === 'HEIF') {
    throw new HashError('unsupported_format',
      'This browser cannot read HEIC or HEIF images; convert the picture to JPEG, or have ' +
      'the server hash it in memory.');
  }
  if (b.length >= 4 && (ascii(b, 0, 4) === 'II*\0' || ascii(b, 0, 4) === 'MM\0*')) {
    throw new HashError('unsupported_format',
      'This browser cannot read TIFF images; save the picture as JPEG or PNG and pick it again.');
  }
  throw new HashError('not_an_image',
    'The file is not an image in a supported format (JPEG, PNG, GIF, WEBP, BMP, AVIF).');
}

/** Refuse a size over the pixel limit (the server's check, same message). */
export function checkPixels(width, height, limits) {
  const { maxPixels } = checkLimits(limits);
  if (!(width > 0 && height > 0)) throw new HashError('not_an_image', 'The image has no pixels.');
  if (width * height > maxPixels) {
    throw new HashError('image_too_large', `The image is ${width}x${height} pixels; the limit is ` +
      `${maxPixels} pixels (it stops decompression bombs).`);
  }
}

/**
 * Decode the bytes of an image file: {rgba (Uint8ClampedArray, un-premultiplied), width, height}.
 * Needs createImageBitmap and OffscreenCanvas (a browser window or worker).
 */
export async function decodeImage(bytes, limits) {
  const { format, size } = sniff(bytes, limits);
  if (size) checkPixels(size.width, size.height, limits);
  let bitmap;
  try {
    bitmap = await createImageBitmap(new Blob([bytes]), { colorSpaceConversion: 'none' });
  } catch {
    throw new HashError('truncated_image', `The ${format} file is corrupt and cannot be decoded.`);
  }
  try {
    const { width, height } = bitmap;
    checkPixels(width, height, limits);
    const canvas = new OffscreenCanvas(width, height);
    const context = canvas.getContext('2d', { willReadFrequently: true });
    context.drawImage(bitmap, 0, 0);
    return { rgba: context.getImageData(0, 0, width, height).data, width, height };
  } finally {
    bitmap.close();
  }
}
