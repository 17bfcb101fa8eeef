"""Which language a person is spoken to in (gateway.i18n): the environment as gettext reads it, and a browser's
Accept-Language (RFC 9110 12.5.4)."""

import pytest

from gateway.i18n import CHINESE, ENGLISH, language_for_accept, language_from_env


@pytest.mark.parametrize("env, lang", [
    ({}, ENGLISH),
    ({"LANG": "C.UTF-8"}, ENGLISH),
    ({"LANG": "zh_CN.UTF-8"}, CHINESE),
    ({"LANG": "en_US.UTF-8", "LC_ALL": "zh_CN.UTF-8"}, CHINESE),      # LC_ALL before LANG
    ({"LC_ALL": "C", "LC_MESSAGES": "zh_CN.UTF-8"}, ENGLISH),         # LC_ALL before LC_MESSAGES
    ({"LANGUAGE": "zh_CN:en", "LC_ALL": "C"}, CHINESE),               # LANGUAGE first, its first entry
    ({"LANGUAGE": "", "LANG": "zh_TW.UTF-8"}, CHINESE),               # an empty variable does not count
    ({"LANGUAGE": ":en_GB", "LANG": "zh_CN"}, ENGLISH),
])
def test_language_from_the_environment(env, lang):
    assert language_from_env(env) == lang


@pytest.mark.parametrize("header, lang", [
    (None, ENGLISH),
    ("", ENGLISH),
    ("zh-CN,zh;q=0.9,en;q=0.8", CHINESE),
    ("en-US,en;q=0.9,zh-CN;q=0.8", ENGLISH),
    ("en;q=0.5, zh;q=0.5", CHINESE),          # a tie goes to Chinese, the plant's language
    ("zh;q=0, en", ENGLISH),                  # q=0: not acceptable
    ("de-DE, fr;q=0.9", ENGLISH),             # neither offered: English
    ("zh;q=abc, en;q=0.1", ENGLISH),          # a malformed q counts as 0
])
def test_language_for_a_browser(header, lang):
    assert language_for_accept(header) == lang
