""".dockerignore, with the cases of Docker's documentation."""

import pytest

from rootless.build.dockerignore import DockerIgnore, read_patterns

pytestmark = pytest.mark.both_modes


def ign(text):
    return DockerIgnore.from_text(text)


def test_reading_patterns():
    assert read_patterns("# comment\n\n  *.md \n/abs/x\n! keep.md\n./a/../b//c/\n/\n") == \
        ["*.md", "abs/x", "!keep.md", "b/c", "/"]


def test_docs_examples():
    d = ign("# comment\n*/temp*\n*/*/temp*\ntemp?\n")
    assert d.ignored("somedir/temporary.txt") and d.ignored("somedir/temp")
    assert d.ignored("somedir/subdir/temporary.txt")
    assert d.ignored("tempa") and not d.ignored("tempab")
    assert not d.ignored("temporary.txt")


def test_double_star():
    d = ign("**/*.go\n")
    assert d.ignored("a.go") and d.ignored("x/y/z.go") and not d.ignored("a.golang")
    assert ign("a/**/b\n").ignored("a/b") and ign("a/**/b\n").ignored("a/x/y/b")
    assert ign("a/**\n").ignored("a/x/y")


def test_exceptions_last_match_wins():
    d = ign("*.md\n!README*.md\nREADME-secret.md\n")
    assert d.ignored("CHANGES.md") and not d.ignored("README.md") and d.ignored("README-secret.md")
    d = ign("*.md\n!README.md\n")
    assert not d.ignored("README.md") and d.ignored("x.md")
    d = ign("!README.md\n*.md\n")
    assert d.ignored("README.md")


def test_leading_slash_and_dirs():
    d = ign("/build\n")
    assert d.ignored("build") and d.ignored("build/x/y") and not d.ignored("src/build")
    d = ign("node_modules\n")
    assert d.ignored("node_modules/a/b.js") and not d.ignored("src/node_modules")
    d = ign("dir\n!dir/keep\n")
    assert d.ignored("dir") and d.ignored("dir/other") and not d.ignored("dir/keep")
    assert d.may_include_below("dir") and not d.may_include_below("other")
    assert ign("*\n!**/keep\n").may_include_below("a/b") and ign("*\n!a\n").may_include_below("a/b")
    assert ign("*\n!s*/keep\n").may_include_below("src") and not ign("*\n!s*/keep\n").may_include_below("lib")
    assert not ign("*\n").may_include_below("a")


def test_escapes_and_classes():
    assert ign("\\*x\n").ignored("*x") and not ign("\\*x\n").ignored("ax")
    assert ign("[a-c].txt\n").ignored("b.txt") and not ign("[a-c].txt\n").ignored("d.txt")
    assert ign("[^a].txt\n").ignored("b.txt") and not ign("[^a].txt\n").ignored("a.txt")
    with pytest.raises(ValueError, match="bad pattern"):
        ign("[a\n")
