"""The RegistryError family: every failure the domain can report, each with a stable code.

Edges map these once (HTTP status and JSON shape in ``registry.web``, exit code and message in
``cli``). Messages are human sentences safe to show to the person who sent the input; they never
contain image bytes or secrets. Standard library only.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base of every domain error. ``code`` is snake_case and stable across releases."""

    code = "registry_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- input validation -------------------------------------------------------------------------
class InvalidInput(RegistryError):
    code = "invalid_input"


class InvalidJson(InvalidInput):
    code = "invalid_json"


class UnsupportedMediaType(InvalidInput):
    code = "unsupported_media_type"


class InvalidHash(InvalidInput):
    code = "invalid_hash"


class UnknownSignal(InvalidInput):
    code = "unknown_signal"


class DegenerateHash(InvalidInput):
    code = "degenerate_hash"


class LowQualityHash(InvalidInput):
    code = "low_quality_hash"


class TooManyQueries(InvalidInput):
    code = "too_many_queries"


# --- images -----------------------------------------------------------------------------------
class ImageError(InvalidInput):
    code = "invalid_image"


class EmptyImage(ImageError):
    code = "empty_image"


class NotAnImage(ImageError):
    code = "not_an_image"


class TruncatedImage(ImageError):
    code = "truncated_image"


class ImageTooLarge(ImageError):
    code = "image_too_large"


class FileTooLarge(ImageError):
    code = "file_too_large"


class NotAVideo(ImageError):
    """Not a video in a supported container, no video stream, or no decodable frame."""

    code = "not_a_video"


class VideoTooLarge(ImageTooLarge):
    """A video past the frame-size, duration or frame-count limits."""

    code = "video_too_large"


class CursorAhead(InvalidInput):
    """A feed cursor past the end of this registry's change log: the registry was restored from
    an older backup or replaced; a mirror that went on from its cursor would miss records."""

    code = "cursor_ahead"


class UnreadableFile(InvalidInput):
    code = "unreadable_file"


# --- cases ------------------------------------------------------------------------------------
class CaseNotFound(RegistryError):
    code = "case_not_found"


class InvalidCaseNumber(InvalidInput):
    code = "invalid_case_number"


class WrongPin(RegistryError):
    code = "wrong_pin"


class CaseLocked(RegistryError):
    code = "case_locked"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class MatchNotFound(RegistryError):
    code = "match_not_found"


class InvalidTransition(RegistryError):
    code = "invalid_transition"


# --- platforms --------------------------------------------------------------------------------
class PlatformNotFound(RegistryError):
    code = "platform_not_found"


class BankNotFound(RegistryError):
    code = "bank_not_found"


class BankExists(RegistryError):
    code = "bank_exists"


class PlatformExists(RegistryError):
    code = "platform_exists"


class InvalidScope(InvalidInput):
    code = "invalid_scope"


class Unauthenticated(RegistryError):
    code = "unauthenticated"


class Forbidden(RegistryError):
    code = "forbidden"


# --- index and storage ------------------------------------------------------------------------
class SnapshotError(RegistryError):
    code = "snapshot_invalid"


class IndexMismatch(RegistryError):
    code = "index_mismatch"


class StorageUnavailable(RegistryError):
    code = "storage_unavailable"


class ConfigError(RegistryError):
    code = "invalid_configuration"
