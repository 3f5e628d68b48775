"""Parsing Dockerfiles: instructions, flags, heredocs, directives, and errors that name FILE:LINE."""

import pytest

from rootless.build.dockerfile import parse
from rootless.errors import BuildError, DockerfileError

pytestmark = pytest.mark.both_modes


def one(text, kw=None):
    ins = parse("FROM a\n" + text).instructions[1]
    assert kw is None or ins.keyword == kw
    return ins


def err(text, filename="Dockerfile"):
    with pytest.raises(DockerfileError) as e:
        parse(text, filename)
    return str(e.value)


def test_every_instruction_parses():
    text = """\
ARG BASE=alpine
FROM $BASE AS build
RUN echo hi
RUN ["echo", "hi"]
CMD ["a", "b"]
ENTRYPOINT /bin/x
ENV A=1 B="2 3"
ENV C d e
LABEL "a b"="c d" e=f
ARG X Y=1
EXPOSE 80 443/udp
VOLUME ["/a", "/b"]
VOLUME /c /d
SHELL ["/bin/bash", "-c"]
STOPSIGNAL SIGKILL
HEALTHCHECK --interval=5s CMD curl x
WORKDIR /x y
USER a:b
COPY --from=build --chown=1:2 --chmod=644 --link a b
ADD --checksum=sha256:00 http://x/y /z
ONBUILD RUN echo trig
MAINTAINER me
"""
    df = parse(text)
    kws = [i.keyword for i in df.instructions]
    assert kws == ["ARG", "FROM", "RUN", "RUN", "CMD", "ENTRYPOINT", "ENV", "ENV", "LABEL", "ARG", "EXPOSE",
                   "VOLUME", "VOLUME", "SHELL", "STOPSIGNAL", "HEALTHCHECK", "WORKDIR", "USER", "COPY", "ADD",
                   "ONBUILD", "MAINTAINER"]
    ins = {i.line: i for i in df.instructions}
    assert ins[2].args == ("$BASE", "AS", "build")
    assert ins[3].args == ("echo hi",) and not ins[3].json
    assert ins[4].args == ("echo", "hi") and ins[4].json
    assert ins[7].args == ("A", "1", "B", '"2 3"')
    assert ins[8].args == ("C", "d e")
    assert ins[16].flag("interval") == "5s"
    assert ins[19].flag("from") == "build" and ins[19].bool_flag("link") and ins[19].args == ("a", "b")
    assert ins[21].trigger.keyword == "RUN" and ins[21].trigger.args == ("echo trig",)
    assert ins[21].args == ("RUN echo trig",)


def test_lower_case_keywords_and_crlf():
    df = parse("from a as B\r\nrun echo \\\r\n  b\r\n")
    assert [i.keyword for i in df.instructions] == ["FROM", "RUN"]
    assert df.instructions[1].args == ("echo   b",)
    assert (df.instructions[1].line, df.instructions[1].end_line) == (2, 3)


def test_continuations_comments_and_empty_lines():
    df = parse("FROM a\nRUN a \\\n# a comment inside\n\n  b \\  \n  c\nRUN d\n")
    run = df.instructions[1]
    assert run.args == ("a   b   c",)
    assert (run.line, run.end_line) == (2, 6)
    assert df.instructions[2].line == 7


def test_escape_directive_and_syntax_note():
    df = parse("# escape=`\n# syntax=docker/dockerfile:1\nFROM a\nRUN echo a `\n  && echo b\nCOPY x c:\\dir\\\n")
    assert df.escape == "`"
    assert df.directives == {"escape": "`", "syntax": "docker/dockerfile:1"}
    assert df.instructions[1].args == ("echo a   && echo b",)
    assert df.instructions[2].args == ("x", "c:\\dir\\")
    assert any("syntax" in n and "ignored" in n for n in df.notes)


def test_directives_stop_at_the_first_other_line():
    df = parse("# hello\n# escape=`\nFROM a\n")
    assert df.directives == {} and df.escape == "\\"


def test_bad_escape_directive():
    assert "Dockerfile:1:" in err("# escape=x\nFROM a\n")


def test_heredocs():
    df = parse("FROM a\nRUN <<EOF\necho hi\nEOF\nCOPY <<-EOT /x\n\thello\n\tEOT\n"
               "RUN <<'EOF' cat\n$x\nEOF\nRUN <<A <<\"B\"\n1\nA\n2\nB\nRUN 3<<F cat <&3\nx\nF\n")
    run, copy, quoted, two, fd = df.instructions[1:]
    assert run.heredocs[0].name == "EOF" and run.heredocs[0].body == "echo hi\n" and run.heredocs[0].expand
    assert copy.heredocs[0].chomp and copy.heredocs[0].body == "hello\n"
    assert copy.args == ("<<-EOT", "/x")
    assert not quoted.heredocs[0].expand and quoted.heredocs[0].content == "$x\n"
    assert [(h.name, h.content, h.expand) for h in two.heredocs] == [("A", "1\n", True), ("B", "2\n", False)]
    assert fd.heredocs[0].fd == 3
    assert (copy.line, copy.end_line) == (5, 7)


def test_from_with_a_colon_says_instructions_take_none():
    msg = err("FROM: ubuntu:latest\n", "Dockerfile.dev")
    assert msg.startswith("Dockerfile.dev:1: 'FROM:': instructions take no colon")
    assert "FROM ubuntu:latest" in msg


def test_unknown_instruction_suggests_the_nearest():
    msg = err("FROM a\n\nRUNN echo\n")
    assert msg == "Dockerfile:3: unknown instruction RUNN; did you mean RUN?"
    assert "did you mean COPY?" in err("FROM a\nCOPPY a b\n")


def test_unknown_flag_suggests_the_nearest():
    assert "Dockerfile:2: unknown flag --frm for COPY; did you mean --from?" == err("FROM a\nCOPY --frm=x a b\n")
    assert "ENV takes no flags" in err("FROM a\nENV --x=1 A=b\n")
    assert "given twice" in err("FROM a\nCOPY --from=a --from=b x y\n")
    assert "needs a value" in err("FROM a\nCOPY --from x y\n")


def test_run_may_repeat_mount():
    run = one("RUN --mount=type=cache,target=/a --mount=type=tmpfs,target=/b --network=none x\n")
    assert run.flag_all("mount") == ["type=cache,target=/a", "type=tmpfs,target=/b"]
    assert run.flag("network") == "none"


def test_argument_counts():
    assert err("FROM a b\n").startswith("Dockerfile:1: FROM takes an image")
    assert "stage name" in err("FROM a AS 1x\n")
    assert "RUN needs a command" in err("FROM a\nRUN\n")
    assert "at least one source and a destination" in err("FROM a\nCOPY x\n")
    assert "WORKDIR takes one argument" in err("FROM a\nWORKDIR\n")
    assert "SHELL takes a JSON array" in err("FROM a\nSHELL /bin/bash -c\n")
    assert "HEALTHCHECK NONE takes no other" in err("FROM a\nHEALTHCHECK NONE x\n")
    assert "HEALTHCHECK takes NONE or CMD" in err("FROM a\nHEALTHCHECK curl\n")
    assert "Dockerfile:2: ENV must have two arguments" == err("FROM a\nENV A\n")


def test_parser_errors_carry_the_line():
    assert err("FROM a\nRUN x\nRUN <<EOF\necho\n") == "Dockerfile:3: unterminated heredoc"
    assert err("# only a comment\n") == "Dockerfile: the file has no instructions; a Dockerfile starts with FROM IMAGE"


def test_onbuild_triggers():
    ins = one("ONBUILD COPY --from=x a b\n")
    assert ins.trigger.keyword == "COPY" and ins.trigger.flag("from") == "x" and ins.trigger.line == 2
    assert "not allowed as an ONBUILD trigger" in err("FROM a\nONBUILD ONBUILD RUN x\n")
    assert "not allowed as an ONBUILD trigger" in err("FROM a\nONBUILD FROM b\n")
    assert err("FROM a\nONBUILD ENV A\n") == "Dockerfile:2: ENV must have two arguments"


def test_dockerfile_error_is_a_build_error():
    with pytest.raises(BuildError) as e:
        parse("FROM a\nBOGUS x\n")
    assert e.value.exit_code == 1
