"""Variable expansion: the table of Docker's documented forms, quoting and escapes."""

import pytest

from rootless.build.expand import ExpandError, expand_heredoc, expand_word, expand_words

pytestmark = pytest.mark.both_modes

ENV = {"A": "a", "E": "", "S": "x y", "P": "/usr/local/bin:/usr/bin", "F": "file.tar.gz"}


@pytest.mark.parametrize("word,expected", [
    ("$A", "a"), ("${A}", "a"), ("${A}b", "ab"), ("$Ab", ""), ("$U", ""), ("${U}", ""),
    ("${E:-d}", "d"), ("${E-d}", ""), ("${U:-d}", "d"), ("${U-d}", "d"), ("${A:-d}", "a"),
    ("${A:+alt}", "alt"), ("${E:+alt}", ""), ("${E+alt}", "alt"), ("${U+alt}", ""),
    ("${U:-$A}", "a"), ("${U:-${E:-deep}}", "deep"),
    ('"$A b"', "a b"), ("'$A'", "$A"), ("\\$A", "$A"), ('"\\$A"', "$A"), ('"\\x"', "\\x"), ("a\\ b", "a b"),
    ("a$", "a$"), ("$", "$"), ('"it'"'"'s"', "it's"), ("'a\"b'", 'a"b'),
    ("${F%.gz}", "file.tar"), ("${F%%.*}", "file"), ("${F#*.}", "tar.gz"), ("${F##*.}", "gz"),
    ("${P/bin/BIN}", "/usr/local/BIN:/usr/bin"), ("${P//bin/BIN}", "/usr/local/BIN:/usr/BIN"),
])
def test_expand_word(word, expected):
    assert expand_word(word, ENV) == expected


def test_spaces_are_kept_in_one_word_and_split_in_words():
    assert expand_word("$S", ENV) == "x y"
    assert expand_words("$S '1 2' z", ENV) == ["x", "y", "1 2", "z"]
    assert expand_words('""', ENV) == [""]


def test_the_escape_character_of_the_directive():
    assert expand_word("`$A", ENV, "`") == "$A"
    assert expand_word("c:\\dir", ENV, "`") == "c:\\dir"


@pytest.mark.parametrize("word,message", [
    ("${A", "missing '}'"), ("${}", "bad substitution"), ("${:-x}", "bad substitution"),
    ("'abc", "single-quote"), ('"abc', "double-quote"), ("${U?must be set}", "U: must be set"),
    ("${E:?}", "E: is not allowed to be empty"), ("${A!x}", "unsupported modifier"),
])
def test_errors(word, message):
    with pytest.raises(ExpandError, match=message):
        expand_word(word, ENV)


def test_heredoc_bodies_keep_quotes():
    assert expand_heredoc('echo "$A" \'$A\' \\$A ${U:-z}\n', ENV) == "echo \"a\" 'a' $A z\n"
