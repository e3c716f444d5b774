"""Image bytes -> signals. The only package that touches Pillow, imagehash and pdqhash.

``decode`` turns untrusted bytes held in memory into an RGB image (EXIF orientation applied,
alpha flattened onto black, every mode handled, bombs refused); ``signals`` computes PDQ, pHash
and the exact digests from it. Nothing here writes anywhere: bytes in, values out.
"""

from registry.hashing.decode import DecodeOptions, decode_image
from registry.hashing.signals import PIPELINE_VERSION, ImageSignals, Variant, compute_signals

__all__ = ["PIPELINE_VERSION", "DecodeOptions", "ImageSignals", "Variant", "compute_signals",
           "decode_image"]
