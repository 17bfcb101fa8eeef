"""Which language a person is spoken to in (gateway.i18n): the environment as gettext reads it."""

import pytest

from gateway.i18n import CHINESE, ENGLISH, language_from_env


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
