"""Messages a person reads, in the person's language: English, or Chinese (zh_CN) when the locale says so.

GNU gettext catalogs (GNU gettext manual, "The Format of PO Files" and "Locale Environment Variables"):
``gateway/locale/<lang>/LC_MESSAGES/hazard_gateway.po``, extracted from the code with Babel
(``pybabel extract``, keywords ``_``/``gettext``/``ngettext``) and compiled to the ``.mo`` beside it, which the
wheel ships; tests/ops/test_i18n.py fails when a message in the code has no translation or a ``.mo`` is stale.

Use: ``from gateway.i18n import gettext as _`` and ``_("text with {name}").format(name=...)``: the msgid is the
English text, placeholders are named so a translation may reorder them. Terms come from the standards
(docs/domain.md): 一级/二级报警 (GB/T 50493-2019 5.5.2), 联锁, 旁路, 重大危险源 and its 一级..四级 grade
(GB 18218-2018 4.3).

The language of the process is read once from the environment as gettext reads it (LANGUAGE, then LC_ALL,
LC_MESSAGES, LANG; the first that is set): a value starting with ``zh`` selects zh_CN, anything else (or C,
POSIX, unset) English. :func:`set_language` changes it (tests); :func:`translator` gives one language's
gettext for text that is not in the process's language.
"""

from __future__ import annotations

import gettext as _gettext
import os
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path

DOMAIN = "hazard_gateway"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"
ENGLISH = "en"
CHINESE = "zh_CN"
LANGUAGES = (ENGLISH, CHINESE)
ENV_VARS = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")


def language_from_env(environ: Mapping[str, str] | None = None) -> str:
    """``zh_CN`` or ``en`` from the first of LANGUAGE, LC_ALL, LC_MESSAGES, LANG that is set and not empty
    (LANGUAGE may list several, colon-separated: the first one that names a language counts)."""
    env = os.environ if environ is None else environ
    for var in ENV_VARS:
        value = env.get(var, "")
        for part in value.split(":") if var == "LANGUAGE" else [value]:
            part = part.strip()
            if part:
                return _normalise(part)
    return ENGLISH


def language_for_accept(header: str | None) -> str:
    """``zh_CN`` or ``en`` for an HTTP Accept-Language header (RFC 9110 12.5.4: ``zh-CN,zh;q=0.9,en;q=0.8``): the
    language range with the highest q (the first of equals) that is ``zh...`` or ``en...`` decides; ``*``, other
    languages, q=0 and a missing or malformed header give English. Caller: the status page (gateway.ops.web)."""
    best, best_q = ENGLISH, -1.0
    for item in (header or "")[:1024].split(","):
        tag, _sep, params = item.strip().partition(";")
        tag = tag.strip().lower()
        q = 1.0
        for p in params.split(";"):
            k, _eq, v = p.strip().partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if q <= 0 or not (tag.startswith("zh") or tag.startswith("en")):
            continue
        if q > best_q:
            best, best_q = _normalise(tag), q
    return best


def _normalise(value: str) -> str:
    return CHINESE if value.lower().startswith("zh") else ENGLISH


@lru_cache(maxsize=None)
def translations(lang: str) -> _gettext.NullTranslations:
    """The catalog of ``lang`` (``en`` or ``zh_CN``; other values are normalised as the environment's are). English
    is the msgids themselves (NullTranslations); so is a zh_CN catalog that is not installed (a broken install
    speaks English rather than failing; tests/ops/test_i18n.py keeps the shipped catalog complete)."""
    lang = _normalise(lang) if lang not in LANGUAGES else lang
    if lang == ENGLISH:
        return _gettext.NullTranslations()
    return _gettext.translation(DOMAIN, localedir=str(LOCALE_DIR), languages=[lang], fallback=True)


def translator(lang: str) -> Callable[[str], str]:
    """``gettext`` of one language, for text that is not in the process's language (a page per request)."""
    return translations(lang).gettext


_current: list[_gettext.NullTranslations] = []


def set_language(lang: str) -> None:
    """Make ``lang`` (``en``, ``zh_CN``, or a locale name such as ``zh_CN.UTF-8``) the process's language."""
    _current[:] = [translations(lang)]


def current_language() -> str:
    """The process's language: ``en`` or ``zh_CN``."""
    return ENGLISH if type(_active()) is _gettext.NullTranslations else CHINESE


def _active() -> _gettext.NullTranslations:
    if not _current:
        set_language(language_from_env())
    return _current[0]


def gettext(message: str) -> str:
    """``message`` in the process's language (the msgid itself where the catalog has no entry)."""
    return _active().gettext(message)


def display_width(text: str) -> int:
    """Terminal columns ``text`` takes: East Asian wide and fullwidth characters (Unicode UAX #11: W, F) take two,
    combining marks none, anything else one; so a table of Chinese headings lines up."""
    import unicodedata

    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def ljust_display(text: str, width: int) -> str:
    """``text`` padded with spaces to ``width`` terminal columns (display_width)."""
    return text + " " * max(0, width - display_width(text))
