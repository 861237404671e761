"""The ``acl`` command line as a whole: help that names every option the
parsers have and no other, ``--help`` anywhere, usage lines that are true,
docs that name only options that exist, and quiet exits when stdout's
reader goes away early.

The option lists come from the commands' own argparse parsers, so adding an
option without it reaching the help (or the docs naming one that is gone)
fails here.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from acl.cli import COMMANDS, EXIT_PIPE
from tests.xinetd.helpers import svc

ROOT = Path(__file__).resolve().parent.parent
OPTION = re.compile(r"(?<![\w.=-])(--?[A-Za-z0-9][\w-]*)")


def acl(*args, stdin="", env=None):
    return subprocess.run([sys.executable, "-m", "acl", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


def parsers_of(command: str) -> list[argparse.ArgumentParser]:
    module = importlib.import_module(f"acl.cli.{command}")
    if command == "match":
        return module.parsers()
    if command == "compile":            # tcprules' manners: two paths, no options
        return []
    return [module.parser()]


def options_of(p: argparse.ArgumentParser) -> list[list[str]]:
    return [a.option_strings for a in p._actions
            if a.option_strings and a.help is not argparse.SUPPRESS]


def known_options(command: str) -> set[str]:
    return {o for p in parsers_of(command) for a in p._actions for o in a.option_strings}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_names_every_option_and_no_other(command):
    out = acl(command, "--help")
    assert out.returncode == 0, out.stderr
    for p in parsers_of(command):
        for strings in options_of(p):
            for s in strings:
                assert re.search(rf"(?<![\w-]){re.escape(s)}(?![\w-])", out.stdout), \
                    f"acl {command} --help does not name {s}"
    named = set(OPTION.findall(out.stdout))
    assert named <= known_options(command) | {"-h", "--help"}, named - known_options(command)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_usage_lines_name_every_option(command):
    """A hand-written usage (query's, match's) must keep up with its parser."""
    for p in parsers_of(command):
        usage = p.format_usage()
        for strings in options_of(p):
            assert any(re.search(rf"(?<![\w-]){re.escape(s)}(?![\w-])", usage)
                       for s in strings), f"{usage!r} lacks {strings}"


def test_usage_lines_do_not_promise_repeated_queries():
    """Each of these takes one query (or --batch); argparse's own rendering
    of their words ends in '...', which says the opposite."""
    for command in ("query", "match"):
        for p in parsers_of(command):
            assert "..." not in p.format_usage(), p.format_usage()
    two = acl("query", "--socket", "/nonexistent/q.sock", "sshd", "192.0.2.1",
              "sshd", "192.0.2.2")
    assert two.returncode == 100 and "usage: acl query" in two.stderr, two.stderr


@pytest.mark.parametrize("argv", [
    ["match", "--tcprules", "rules.txt", "--help"],
    ["match", "--xinetd", "xinetd.conf", "--help"],
    ["match", "--hosts-allow", "hosts.allow", "--help"],
    ["match", "--batch", "-h"],
    ["match", "--help", "--tcprules", "rules.txt", "1.2.3.4"],
    ["compile", "rules.cdb", "rules.tmp", "--help"],
    ["check", "-v", "--help"],
    ["audit", "--json", "--help"],
    ["query", "sshd", "192.0.2.1", "--help"],
    ["serve", "--check", "--help"],
])
def test_help_anywhere_on_the_line_is_help(argv):
    out = acl(*argv)
    assert (out.returncode, out.stderr) == (0, ""), out.stderr
    assert out.stdout.startswith(("usage: ", "acl match: explain")), out.stdout


#: Command lines that are wrong before any file is read or socket asked:
#: each is exit 100 ("bad input", man/acl.8), never argparse's 2 or a run.
BAD_LINES = [
    [],                                                        # no command
    ["audit", "--no-such-option"],
    ["audit", "--service", "0=ssh"],
    ["check", "--no-such-option"],
    ["check", "--names-timeout", "0"],
    ["check", "--names-timeout", "3601"],
    ["compile", "rules.cdb"],
    ["compile", "rules.cdb", "rules.tmp", "rules.txt"],       # a forgotten '<'
    ["match", "--hosts-allow", "hosts.allow", "--no-such-option"],
    ["match", "--tcprules", "rules.txt", "--no-such-option", "1.2.3.4"],
    ["match", "--xinetd", "xinetd.conf", "--no-such-option", "a", "1.2.3.4"],
    ["match", "--tcprules", "rules.txt", "--xinetd", "xinetd.conf", "1.2.3.4"],
    ["match", "--", "-h"],                                     # '-h' after '--' is no help
    ["match", "--xinetd", "xinetd.conf", "--limits", "--now", "nan", "a", "1.2.3.4"],
    ["match", "--xinetd", "xinetd.conf", "--now", "5", "a", "1.2.3.4"],
    ["query", "--no-such-option", "sshd", "192.0.2.1"],
    ["query", "--timeout", "0", "sshd", "192.0.2.1"],
    ["query", "--port", "65536", "sshd", "192.0.2.1"],
    ["query", "--admin", "/nonexistent/admin.sock", "shutdown"],
    ["reload", "--no-such-option"],
    ["reload", "--config", "policy.toml", "--pid", "1"],
    ["reload", "--timeout", "0"],
    ["serve", "--no-such-option"],
]


@pytest.mark.parametrize("argv", BAD_LINES, ids=" ".join)
def test_a_wrong_command_line_is_exit_100(argv, capsys):
    """In this process (acl.cli.main, as ``python -m acl`` runs it): the
    commands whose parser ends the program raise SystemExit with it."""
    from acl.cli import main

    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 100, (code, err)
    assert "Traceback" not in err


def test_a_language_flag_with_its_value_after_equals_picks_the_language():
    out = acl("match", "--tcprules=rules.txt", "--help")
    assert out.returncode == 0 and out.stdout.startswith("usage: acl match [-h] --tcprules")


def test_match_help_without_a_language_shows_all_three():
    out = acl("match", "--help")
    assert out.returncode == 0, out.stderr
    for p in parsers_of("match"):
        assert p.format_help() in out.stdout


# -- docs ---------------------------------------------------------------------

def _doc_texts():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        yield path.name, path.read_text()
    for path in sorted((ROOT / "acl" / "cli").glob("*.py")):
        yield path.name, ast.get_docstring(ast.parse(path.read_text())) or ""


def documented_commands():
    """Every ``acl COMMAND ...`` written in README.md, docs/*.md and the CLI's
    docstrings: in backquotes, or a line of a fenced block."""
    found = []
    for name, text in _doc_texts():
        # a synopsis continued on an indented line of options ("acl query [...]\n
        #       [--port N] ... SERVICE CLIENT") is one line
        text = re.sub(r"\n[ \t]+(?=\[)", " ", text)
        fenced = re.findall(r"^```.*?\n(.*?)^```", text, re.S | re.M)
        prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
        pieces = re.findall(r"`+([^`]+)`+", prose) + [ln for b in fenced for ln in b.splitlines()]
        pieces += [ln for ln in text.splitlines() if ln.strip().startswith("acl ")]
        for piece in pieces:
            piece = " ".join(piece.split())
            for m in re.finditer(r"(?:^|[;&|(] *)acl (\w+)((?: [^;&|#]*)?)", piece):
                if m.group(1) in COMMANDS:
                    found.append((name, m.group(1), m.group(0)))
    return found


def test_docs_name_only_options_that_exist():
    found = documented_commands()
    assert any(cmd == "query" for _n, cmd, _t in found)     # the scan sees the docs
    wrong = [(name, text, opt) for name, cmd, text in found
             for opt in OPTION.findall(text) if opt not in known_options(cmd)]
    assert not wrong, wrong


def documented_argv(text: str) -> list[str] | None:
    """The arguments of a documented ``acl COMMAND ...`` (documented_commands'
    text), a synopsis' brackets taken away so that every part it shows is
    given; None when the text only mentions the command or one of its options
    (``acl query``, ``acl match --hosts-file``, ``--query/--admin``)."""
    rest = re.sub(r"^.*?\bacl \w+", "", text).split(" <")[0]
    rest = rest.replace("[", "").replace("]", "").replace("...", " ").rstrip(" \\")
    if "/--" in rest:
        return None
    try:
        argv = shlex.split(rest)
    except ValueError:
        return ["<unbalanced quotes>"]
    return argv or None


def _takes_a_value(parsers: list[argparse.ArgumentParser], word: str) -> bool:
    return any(word in a.option_strings and a.nargs != 0
               for p in parsers for a in p._actions)


def argv_problem(command: str, argv: list[str]) -> str | None:
    """Why the real parsers of ``command`` refuse ``argv`` (None: they take it)."""
    from acl.cli import UsageError
    from acl.cli import match as match_cli
    from acl.cli.query import ADMIN_COMMANDS

    parsers = parsers_of(command)
    if _takes_a_value(parsers, argv[-1]):
        return None                       # "acl match --tcprules": an option named
    if command == "compile":
        return None if len(argv) == 2 else "acl compile takes two paths"
    if "-h" in argv or "--help" in argv:
        return None
    if command == "match":
        chosen = [p for (flags, _mod), p in zip(match_cli._LANGUAGES, parsers, strict=True)
                  if match_cli._names_flag(argv, flags)]
        if len(chosen) != 1:
            return "no one rule language (--hosts-allow/--hosts-deny, --tcprules, --xinetd)"
        parsers = chosen
    # A synopsis' placeholder for a number (--timeout S, --now T), or a
    # variable the shell or systemd expands (--pid $MAINPID), stands for one.
    typed = {o for a in parsers[0]._actions if a.type is not None for o in a.option_strings}
    argv = [("1" if re.fullmatch(r"[A-Z]+|\$[A-Z_]+", word) and before in typed else word)
            for before, word in zip(["", *argv[:-1]], argv, strict=True)]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = parsers[0].parse_args(argv)
    except (SystemExit, UsageError) as exc:
        return (err.getvalue().strip().splitlines() or [str(exc)])[-1]
    if command == "query":
        if args.admin:
            if len(args.words) != 1 or args.words[0].lower() not in ADMIN_COMMANDS:
                return f"--admin takes one of {ADMIN_COMMANDS}, not {args.words}"
        elif len(args.words) != 2:
            return f"SERVICE CLIENT are two words, not {args.words}"
    if command == "reload" and args.pid is not None and args.config is None:
        return "--pid needs --config"
    return None


def command_line_problems(found) -> list[tuple[str, str, str]]:
    problems = []
    for name, command, text in found:
        argv = documented_argv(text)
        if argv is not None:
            why = argv_problem(command, argv)
            if why:
                problems.append((name, text, why))
    return problems


def test_documented_command_lines_parse():
    """Every ``acl COMMAND ...`` line the docs show -- a synopsis with each
    optional part given -- is one the command's real parsers take: values
    where an option needs one, no two options argparse keeps apart, the
    positional words the command reads (query: SERVICE CLIENT, or one admin
    command), one rule language for match."""
    found = documented_commands()
    parsed = [f for f in found if documented_argv(f[2]) is not None]
    assert len(parsed) >= 30, parsed
    assert command_line_problems(found) == []


def test_a_documented_command_line_that_does_not_parse_is_found():
    planted = [("planted.md", "reload", "acl reload --admin /run/acl/admin.sock --config p.toml"),
               ("planted.md", "query", "acl query --timeout soon sshd 192.0.2.1"),
               ("planted.md", "query", "acl query sshd"),
               ("planted.md", "query", "acl query --admin /run/acl/admin.sock restart"),
               ("planted.md", "match", "acl match sshd 192.0.2.1"),
               ("planted.md", "check", "acl check --no-names --hosts-file h"),
               ("planted.md", "audit", "acl audit [--proto sctp]"),
               # mentions and good lines
               ("planted.md", "match", "acl match --hosts-file"),
               ("planted.md", "serve", "acl serve --query/--admin"),
               ("planted.md", "query", "acl query [--socket S] SERVICE CLIENT")]
    problems = command_line_problems(planted)
    assert [text for _n, text, _why in problems] == [text for _n, _c, text in planted[:7]]


def test_readme_says_xinetd_limits_need_the_flag():
    """`acl match --xinetd` answers only_from/no_access unless --limits is
    given (tests/xinetd/test_cli.py pins that); the README must say so."""
    row = next(line for line in (ROOT / "README.md").read_text().splitlines()
               if line.startswith("| `acl match --xinetd"))
    assert "--limits" in row, row


def test_acl_socket_is_documented_and_honoured():
    out = acl("query", "--help")
    assert "$ACL_SOCKET" in out.stdout
    assert "ACL_SOCKET" in (ROOT / "README.md").read_text()
    env = dict(os.environ, ACL_SOCKET="/nonexistent/acl-socket-test.sock")
    gone = acl("query", "sshd", "192.0.2.1", env=env)
    assert gone.returncode == 111 and "/nonexistent/acl-socket-test.sock" in gone.stderr


# -- a reader that goes away ----------------------------------------------------

@pytest.fixture
def rules(tmp_path):
    allow = tmp_path / "hosts.allow"
    allow.write_text("".join(f"sshd{i}: 10.{i % 250}.{i // 250}.1\n" for i in range(3000)))
    deny = tmp_path / "hosts.deny"
    deny.write_text("ALL: ALL\n")
    tcprules = tmp_path / "rules.txt"
    tcprules.write_text("10.:allow,X=\"1\"\n:deny\n")
    xinetd = tmp_path / "xinetd.conf"
    xinetd.write_text(svc("a", "only_from = 127.0.0.2"))
    return {"allow": str(allow), "deny": str(deny), "tcprules": str(tcprules),
            "xinetd": str(xinetd)}


PIPED = {
    "check -v": (["check", "-v", "--no-names", "--hosts-allow", "{allow}", "--hosts-deny",
                  "{deny}"], ""),
    "audit --json": (["audit", "--no-policy", "--json"], ""),
    "audit": (["audit", "--no-policy"], ""),
    "match tcpw": (["match", "--hosts-allow", "{allow}", "--hosts-deny", "{deny}",
                    "sshd7", "10.7.0.1"], ""),
    "match tcpw --batch": (["match", "--hosts-allow", "{allow}", "--hosts-deny", "{deny}",
                            "--batch"], "sshd 10.0.0.1\n" * 20000),
    "match tcprules": (["match", "--tcprules", "{tcprules}", "10.0.0.1"], ""),
    "match tcprules --batch": (["match", "--tcprules", "{tcprules}", "--batch"],
                               "10.0.0.1\n" * 20000),
    "match xinetd --batch": (["match", "--xinetd", "{xinetd}", "-q", "--batch"],
                             "a 127.0.0.2\n" * 20000),
    "serve --check": (["serve", "--check"], ""),
    "match --help": (["match", "--help"], ""),
    "--version": (["--version"], ""),
}


@pytest.mark.parametrize("name", sorted(PIPED))
def test_a_closed_stdout_ends_the_command_quietly(rules, name, tmp_path):
    """stdout is a pipe nobody reads any more: the first write fails, every
    time.  The command exits 141 and says nothing (no traceback, no
    'Exception ignored')."""
    argv, stdin = PIPED[name]
    argv = [a.format(**rules) for a in argv]
    r, w = os.pipe()
    os.close(r)
    err = tmp_path / "stderr"
    with open(err, "w") as ef:
        proc = subprocess.run([sys.executable, "-m", "acl", *argv], input=stdin.encode(),
                              stdout=w, stderr=ef, timeout=120, cwd=ROOT)
    os.close(w)
    stderr = err.read_text()
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    assert "Broken pipe" not in stderr and "BrokenPipe" not in stderr, stderr
    assert proc.returncode == EXIT_PIPE, (proc.returncode, stderr)


def test_head_closing_the_pipe_mid_output(rules):
    """The audit's own repro: `acl check -v | head -1` -- output larger than a
    pipe holds, the reader gone after one line."""
    cmd = (f"{sys.executable} -m acl check -v --no-names --hosts-allow {rules['allow']} "
           f"--hosts-deny {rules['deny']} | head -1; echo \"status ${{PIPESTATUS[0]}}\"")
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert out.stdout.splitlines() == [f">>> Rule {rules['allow']} line 1:", "status 141"], \
        out.stdout + out.stderr
    assert out.stderr == "", out.stderr
