"""No untranslated string: every message the pages use has a Korean translation, the Korean
catalogue holds nothing stale, placeholders survive translation, templates show no text outside
gettext, and every string the page scripts use is handed to them by a template."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

from registry.web.i18n import TRANSLATIONS, catalogue_path, load_catalogues

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "registry" / "web" / "templates"
SCRIPTS = ROOT / "registry" / "web" / "static" / "js"
PLACEHOLDER = re.compile(r"%\(\w+\)[sd]|\{\w+\}")
LETTER = re.compile(r"[^\W\d_]")


def used_messages() -> dict[str | tuple[str, ...], set[str]]:
    """msgid -> where it is used, extracted exactly as README's pybabel command does."""
    with (TRANSLATIONS / "babel.cfg").open() as f:
        method_map, options_map = parse_mapping_cfg(f)
    found: dict[str | tuple[str, ...], set[str]] = {}
    for filename, _lineno, message, _comments, _context in extract_from_dir(
            str(ROOT), method_map, options_map):
        found.setdefault(message, set()).add(filename)
    return found


def korean() -> dict[str | tuple[str, ...], object]:
    with catalogue_path("ko").open("rb") as f:
        catalog = read_po(f, locale="ko")
    return {m.id: m for m in catalog if m.id}


def test_extraction_finds_the_pages_messages():
    used = used_messages()
    assert len(used) > 100
    sources = {name for names in used.values() for name in names}
    assert any(name.endswith(".html") for name in sources)
    assert any(name.endswith("messages.py") for name in sources)


def test_every_message_has_a_korean_translation():
    ko = korean()
    missing = [m for m in used_messages() if m not in ko]
    assert not missing, f"msgids without a Korean entry: {missing}"
    for msgid, message in ko.items():
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        assert all(s.strip() for s in strings), f"empty msgstr for {msgid!r}"
        assert not message.fuzzy, f"fuzzy translation for {msgid!r}"


def test_the_korean_catalogue_holds_nothing_stale():
    stale = set(korean()) - set(used_messages())
    assert not stale, f"msgids no longer used (run pybabel update): {stale}"


def test_placeholders_survive_translation():
    for msgid, message in korean().items():
        ids = msgid if isinstance(msgid, tuple) else (msgid,)
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        wanted = set(PLACEHOLDER.findall(ids[-1]))
        for text in strings:
            assert set(PLACEHOLDER.findall(text)) == wanted, (msgid, text)


def test_korean_is_really_korean():
    hangul = re.compile(r"[\uac00-\ud7a3]")
    untranslated_on_purpose = {"PIN"}  # the same word in Korean use
    for msgid, message in korean().items():
        text = message.string[0] if isinstance(message.string, tuple) else message.string
        if msgid in untranslated_on_purpose:
            assert text == msgid
            continue
        assert hangul.search(text), f"no Korean in the translation of {msgid!r}: {text!r}"


def test_catalogues_compile_and_plural_forms_work():
    catalogues = load_catalogues()
    assert set(catalogues) == {"ko", "en"}
    singular = ("Too many wrong PINs were entered from this device or network, so it can try "
                "this case again in %(num)d minute. The case is not locked: from another "
                "device or network its PIN still works.")
    plural = singular.replace("minute.", "minutes.")
    assert catalogues["ko"].ngettext(singular, plural, 1) == catalogues["ko"].ngettext(
        singular, plural, 7)
    assert "분 뒤에" in catalogues["ko"].ngettext(singular, plural, 7)
    assert catalogues["en"].ngettext(singular, plural, 7) == plural


# --- templates show nothing outside gettext ---------------------------------------------------
class Visible(HTMLParser):
    """Text a reader sees or hears: text nodes and the attributes read aloud or shown."""

    SPOKEN = ("alt", "title", "aria-label", "placeholder", "content")

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        shown_value = tag == "input" and dict(attrs).get("type") in ("submit", "button", "reset")
        for name, value in attrs:
            if value and (name in self.SPOKEN or (shown_value and name == "value")):
                if name == "content" and tag == "meta":
                    continue  # charset, viewport, referrer: not text
                self.found.append(f"<{tag} {name}={value!r}>")

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.found.append(data.strip())


def without_jinja(source: str) -> str:
    source = re.sub(r"\{#.*?#\}", "", source, flags=re.S)
    source = re.sub(r"\{%.*?%\}", "", source, flags=re.S)
    return re.sub(r"\{\{.*?\}\}", "", source, flags=re.S)


@pytest.mark.parametrize("template", sorted(p.name for p in TEMPLATES.glob("*.html")))
def test_templates_have_no_text_outside_gettext(template):
    parser = Visible()
    parser.feed(without_jinja((TEMPLATES / template).read_text()))
    text = [t for t in parser.found if LETTER.search(t)]
    assert not text, f"{template} shows text that is not translated: {text}"


def test_every_expression_that_prints_text_is_translated():
    """Inside {{ }}, literal strings are gettext'd (or are not text: URLs, names)."""
    for path in TEMPLATES.glob("*.html"):
        for expr in re.findall(r"\{\{(.*?)\}\}", path.read_text(), flags=re.S):
            literals = re.findall(r"'([^']*)'", expr)
            if "_(" in expr or "ngettext(" in expr:
                continue
            for literal in literals:
                assert not re.search(r"[A-Za-z]{2,} [A-Za-z]{2,}", literal), (path.name, expr)


# --- page scripts get every string from the page ----------------------------------------------
def test_page_scripts_use_only_strings_the_templates_provide():
    provided = set(re.findall(r"data-([a-z-]+)=", (TEMPLATES / "_strings.html").read_text()))
    used: set[str] = set()
    for script in SCRIPTS.glob("*.js"):
        source = script.read_text()
        used |= set(re.findall(r"strings\.(\w+)", source))
        for table in re.findall(r"const FILE_ERRORS = \{(.*?)\};", source, flags=re.S):
            used |= set(re.findall(r":\s*'(\w+)'", table))
    kebab = {re.sub(r"([A-Z])", lambda m: "-" + m.group(1).lower(), name) for name in used}
    assert kebab, "no strings found in the page scripts"
    assert kebab <= provided, kebab - provided


def test_page_scripts_hold_no_sentences_of_their_own():
    """User-facing text lives in the catalogues; a sentence in a page script would not be
    translated."""
    for script in SCRIPTS.glob("*.js"):
        code = re.sub(r"//[^\n]*", "", script.read_text())
        for literal in re.findall(r"'([^'\n]*)'|`([^`]*)`", code):
            text = literal[0] or literal[1]
            assert not re.search(r"[A-Za-z]+ [a-z]+ [a-z]+", text), (script.name, text)
