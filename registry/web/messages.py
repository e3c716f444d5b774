"""What the submitter pages say when something goes wrong, in the reader's language.

Domain errors carry English sentences written for API clients and operators; a submitter reads
one of these instead, chosen by the error's stable ``code``. Strings are marked with ``N_`` and
translated when shown.
"""

from __future__ import annotations

from registry.errors import CaseLocked, RegistryError
from registry.web.i18n import N_, _, ngettext

_UNREADABLE = N_("%(file)s is not an image this page can read. Use JPEG, PNG, WebP or GIF "
                 "files.")
_PLAIN = N_("%(file)s is too plain (for example almost all one colour) to be recognised "
            "reliably, so it cannot be registered.")
FILE_ERRORS = {
    "empty_image": N_("%(file)s is empty."),
    "not_an_image": _UNREADABLE,
    "invalid_image": _UNREADABLE,
    "unreadable_file": _UNREADABLE,
    "truncated_image": N_("%(file)s is damaged or incomplete. Try another copy of it."),
    "image_too_large": N_("%(file)s has more pixels than this registry accepts."),
    "file_too_large": N_("%(file)s is larger than %(mb)s MB."),
    "low_quality_hash": _PLAIN,
    "degenerate_hash": _PLAIN,
    "not_a_video": N_("%(file)s could not be read as a video (MP4, MOV, WebM, MKV or AVI), or "
                      "every frame of it is too plain to be recognised."),
    "video_too_large": N_("%(file)s is longer, or its frames larger, than this registry "
                          "accepts."),
}

REJECTED = N_("The hashes this page computed were not accepted. Reload the page and try "
               "again.")
SUBMISSION_ERRORS = {
    "low_quality_hash": N_("Image %(n)s is too plain (for example almost all one colour) to be "
                           "recognised reliably. Remove it and try again."),
    "degenerate_hash": N_("Image %(n)s is too plain (for example almost all one colour) to be "
                          "recognised reliably. Remove it and try again."),
}

CASE_ERRORS = {
    "invalid_case_number": N_("Check the case number: it has 12 letters or digits and a check "
                              "character, like %(example)s."),
    "wrong_pin": N_("The case number or PIN is not right. Check both and try again."),
    "invalid_transition": N_("This case has already been withdrawn."),
}

UNAVAILABLE = N_("The registry cannot be reached right now, so nothing was changed. Please try "
                 "again in a few minutes.")
EXPIRED = N_("This page had expired, so nothing was sent. Please try again.")
TOO_MANY = N_("Too many tries from this connection. Please wait a while and try again.")


def file_error(err: RegistryError, filename: str, max_mb: str) -> str:
    template = FILE_ERRORS.get(err.code, _UNREADABLE)
    return _(template, file=filename, mb=max_mb)


def submission_error(err: RegistryError, image_number: int | None) -> str:
    if err.code == "storage_unavailable":
        return _(UNAVAILABLE)
    if image_number is not None and err.code in SUBMISSION_ERRORS:
        return _(SUBMISSION_ERRORS[err.code], n=image_number)
    return _(REJECTED)


def case_error(err: RegistryError, example: str) -> str:
    if isinstance(err, CaseLocked):
        # retry_after_s is rounded up by a second for clients; people read whole minutes.
        minutes = max(1, (err.retry_after_s - 1 + 59) // 60)
        return ngettext(
            "Too many wrong PINs were entered from this device or network, so it can try this "
            "case again in %(num)d minute. The case is not locked: from another device or "
            "network its PIN still works.",
            "Too many wrong PINs were entered from this device or network, so it can try this "
            "case again in %(num)d minutes. The case is not locked: from another device or "
            "network its PIN still works.", minutes)
    if err.code == "storage_unavailable":
        return _(UNAVAILABLE)
    return _(CASE_ERRORS.get(err.code, CASE_ERRORS["wrong_pin"]), example=example)
