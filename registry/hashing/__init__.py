"""Image bytes -> signals. The only package that touches Pillow, imagehash and pdqhash.

``decode`` turns untrusted bytes held in memory into an RGB image (EXIF orientation applied,
alpha flattened onto black, every mode handled, bombs refused); ``signals`` computes PDQ, pHash
and the exact digests from it; ``video`` the digests and kept frame hashes of a
video. Nothing here writes anywhere: bytes in, values out.
"""

from registry.hashing.decode import DecodeOptions, decode_image
from registry.hashing.signals import PIPELINE_VERSION, ImageSignals, Variant, compute_signals
from registry.hashing.video import (
                                    VideoOptions,
                                    VideoSignals,
                                    compute_video_signals,
                                    registration_budget,
)

__all__ = ["PIPELINE_VERSION", "DecodeOptions", "ImageSignals", "Variant", "VideoOptions",
           "VideoSignals", "compute_signals", "compute_video_signals", "decode_image",
           "registration_budget"]
