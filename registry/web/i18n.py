"""Korean and English for the submitter pages: gettext catalogues and the request's language.

Catalogues are the ``.po`` files under ``translations/`` (msgids are the English text), read and
compiled in memory when the app is built, so there is no build step and no ``.mo`` file to keep
in step. The language comes from ``?lang=ko|en``, then ``Accept-Language``, then Korean (the
registry's first audience); it is never stored in a cookie, so links carry ``?lang=`` instead.

``_`` and ``ngettext`` translate into the current request's language; ``N_`` only marks a
string for extraction (module-level tables translated when used).
"""

from __future__ import annotations

import gettext
import io
from pathlib import Path
from typing import Any

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from flask import Flask, current_app, g, has_request_context, request

LANGUAGES = {"ko": "한국어", "en": "English"}  # endonyms: each shown in its own language
DEFAULT_LANGUAGE = "ko"
TRANSLATIONS = Path(__file__).resolve().parent / "translations"
DOMAIN = "messages"


def catalogue_path(lang: str) -> Path:
    return TRANSLATIONS / lang / "LC_MESSAGES" / f"{DOMAIN}.po"


def load_catalogues() -> dict[str, gettext.NullTranslations]:
    """Every language's translations, compiled in memory from its ``.po`` (English, the msgid
    language, needs none)."""
    out: dict[str, gettext.NullTranslations] = {"en": gettext.NullTranslations()}
    for lang in LANGUAGES:
        path = catalogue_path(lang)
        if lang == "en" or not path.exists():
            continue
        with path.open("rb") as f:
            catalog = read_po(f, locale=lang, domain=DOMAIN)
        buf = io.BytesIO()
        write_mo(buf, catalog, use_fuzzy=False)
        buf.seek(0)
        out[lang] = gettext.GNUTranslations(buf)
    return out


def language() -> str:
    """The current request's language: ``?lang=``, then ``Accept-Language``, then Korean."""
    if not has_request_context():
        return DEFAULT_LANGUAGE
    if "lang" not in g:
        asked = request.args.get("lang", "")
        g.lang = asked if asked in LANGUAGES else request.accept_languages.best_match(
            list(LANGUAGES), default=DEFAULT_LANGUAGE)
    chosen: str = g.lang
    return chosen


def explicit_language() -> str | None:
    """The language the address asked for (``?lang=``), which links and forms pass on."""
    asked = request.args.get("lang", "") if has_request_context() else ""
    return asked if asked in LANGUAGES else None


def _translations() -> gettext.NullTranslations:
    catalogues = current_app.extensions["catalogues"]
    found: gettext.NullTranslations = catalogues.get(language(), catalogues["en"])
    return found


def _(message: str, **variables: Any) -> str:
    text = _translations().gettext(message)
    return text % variables if variables else text


def ngettext(singular: str, plural: str, n: int, **variables: Any) -> str:
    text = _translations().ngettext(singular, plural, n)
    return text % {"num": n, **variables}


def N_(message: str) -> str:
    return message


def install(app: Flask) -> None:
    app.extensions["catalogues"] = load_catalogues()
    app.jinja_env.add_extension("jinja2.ext.i18n")
    # newstyle: {{ _('Hello %(name)s', name=x) }} formats and escapes the variables.
    app.jinja_env.install_gettext_callables(  # type: ignore[attr-defined]
        lambda s: _translations().gettext(s),
        lambda s, p, n: _translations().ngettext(s, p, n),
        newstyle=True,
    )
