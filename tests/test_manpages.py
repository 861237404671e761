"""The manual pages in man/: they render cleanly, and say what the code does.

Rendering: each page goes through groff with every warning on, mandoc's
linter, and ``man -l`` as lintian runs it (``man --warnings``), and its
NAME line is read by lexgrog (what mandb indexes for ``whatis``).

Completeness is read from the code, never from a list kept here:

* acl(8): each command of ``acl.cli.COMMANDS`` has its ``.SS``, whose
  ``.TP`` tags name exactly the options of the argparse parser ``acl
  COMMAND --help`` prints (``acl match``: one ``.SS`` per rule language of
  ``acl.cli.match``); EXIT STATUS lists the ``EXIT_*`` values of acl.cli and
  its modules; ENVIRONMENT the variables the package reads; SIGNALS the
  ones ``acl serve`` handles.
* acl-wrap(8): the letters of main.c's getopt string, the variables
  ext/wrap/*.c reads and sets, the ``EXIT_*`` of wrap.h.
* acl-policy.toml(5): every table and key acl/policy.py and
  acl/nfqueue_config.py accept, each with a default that, written into a
  policy, loads to what leaving the key out loads to (or "required", and
  leaving it out stops the load).

The pages are read as roff source (``.SH``/``.SS``/``.TP``): a tag is the
text line after ``.TP`` or ``.TQ``; :func:`plain` turns its escapes into
text and refuses one it does not know, so a tag it cannot read fails.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

import acl.cli
from acl import nfqueue_config, policy
from acl.cli import match as cli_match
from acl.errors import PolicyError
from acl.nfqueue_config import NfqueueConfig

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man"
PAGES = sorted(p for p in MAN.iterdir() if re.fullmatch(r".+\.[1-9]", p.name))
ACL_8, WRAP_8, POLICY_5 = MAN / "acl.8", MAN / "acl-wrap.8", MAN / "acl-policy.toml.5"
WRAP_SRC = ROOT / "ext" / "wrap"


def require(tool: str) -> str:
    """The tool's path; a skip where it is missing -- a failure where the
    suite must be whole (tests/run installs tests/debian-packages.txt)."""
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("ACL_REQUIRE_COMPILED"):
            pytest.fail(f"{tool} is not installed (tests/debian-packages.txt)")
        pytest.skip(f"{tool} is not installed")
    return path


def run(*argv, env=None, cwd=None):
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, cwd=cwd)


# -- reading roff ------------------------------------------------------------
_ESCAPES = {r"\-": "-", r"\(dq": '"', r"\(aq": "'", r"\(em": "--", r"\(bv": "|", r"\e": "\\",
            r"\&": "", r"\ ": " ", r"\|": "", r"\%": ""}
_FONT_MACROS = (".B", ".I", ".BR", ".IR", ".RB", ".RI", ".BI", ".IB")
_FONT = re.compile(r"\\f(?:[BIRP]|\(..|\[[^]]*\])")
_MACRO_ARG = re.compile(r'"((?:[^"]|"")*)"|(\S+)')


def plain(roff: str) -> str:
    """A roff text or macro line as the reader sees it (fonts dropped)."""
    if roff.startswith("."):
        name, _, rest = roff.partition(" ")
        if name not in _FONT_MACROS:
            raise ValueError(f"a tag made by {name}: write it as a text line")
        args = [q.replace('""', '"') if q or not w else w for q, w in _MACRO_ARG.findall(rest)]
        # .B and .I set their words apart; .BR and the others alternate fonts
        roff = (" " if name in (".B", ".I") else "").join(args)
    text = _FONT.sub("", roff)
    for escape, char in _ESCAPES.items():
        text = text.replace(escape, char)
    if "\\" in text.replace(_ESCAPES[r"\e"], ""):
        raise ValueError(f"an escape plain() does not know in {roff!r}")
    return text


def text_of(lines: list[str]) -> str:
    """The words of a run of lines: text and font-macro lines as
    :func:`plain` reads them; other requests (.PP, .TP, .nf ...) dropped."""
    return " ".join(plain(ln) for ln in lines
                    if not ln.startswith(".") or ln.split(" ", 1)[0] in _FONT_MACROS)


def sections(page: Path) -> dict[str, list[str]]:
    """``.SH`` heading -> its lines (comments dropped)."""
    out: dict[str, list[str]] = {}
    lines: list[str] = []
    for line in page.read_text().splitlines():
        if line.startswith('.\\"'):
            continue
        if line.startswith(".SH"):
            lines = out.setdefault(line[3:].strip().strip('"'), [])
        else:
            lines.append(line)
    return out


def subsections(lines: list[str]) -> dict[str, list[str]]:
    """``.SS`` heading (as text) -> its lines."""
    out: dict[str, list[str]] = {}
    current: list[str] = []
    for line in lines:
        if line.startswith(".SS"):
            heading = line[3:].strip()
            heading = heading[1:-1].replace('""', '"') if heading.startswith('"') else heading
            current = out.setdefault(plain(heading), [])
        else:
            current.append(line)
    return out


def raw_tags(lines: list[str]) -> list[str]:
    """The roff line after each ``.TP`` or ``.TQ``."""
    return [lines[i + 1] for i, line in enumerate(lines[:-1]) if line in (".TP", ".TQ")]


def tags(lines: list[str]) -> list[str]:
    return [plain(t) for t in raw_tags(lines)]


def options_in(texts: list[str]) -> set[str]:
    """The option words (``-c``, ``--config``, ``-6``) in tag texts."""
    return {m for t in texts for m in re.findall(r"(?<![\w-])(--?[A-Za-z0-9][\w-]*)", t)}


def names_in(texts: list[str]) -> set[str]:
    """The variable or signal names (``ACL_SOCKET``, ``SIGHUP``) in tag texts."""
    return {m for t in texts for m in re.findall(r"\b[A-Z][A-Z0-9_]{2,}\b", t)}


def statuses_in(texts: list[str]) -> set[int]:
    assert all(re.fullmatch(r"\d+", t) for t in texts), texts
    return {int(t) for t in texts}


# -- rendering ---------------------------------------------------------------
def test_there_are_the_pages_the_tests_read():
    assert {ACL_8, WRAP_8, POLICY_5} <= set(PAGES)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_groff_renders_without_a_warning(page):
    out = run(require("groff"), "-man", "-ww", "-z", "-Tutf8", str(page))
    assert out.returncode == 0 and out.stderr == "", out.stderr


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_mandoc_lint_is_clean(page):
    out = run(require("mandoc"), "-Tlint", str(page))
    assert out.returncode == 0 and out.stdout + out.stderr == "", out.stdout + out.stderr


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_man_renders_it_as_lintian_checks_it(page):
    """lintian's check (groff-message), then the page as ``man -l`` shows
    it: under its name and section, the NAME line first."""
    man = require("man")
    env = dict(os.environ, LC_ALL="C.UTF-8", MANROFFSEQ="", MANWIDTH="80")
    out = run(man, "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(page), env=env)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    out = run(man, "-l", str(page), env=env)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    name, section = page.name.rsplit(".", 1)
    assert out.stdout.startswith(f"{name.upper()}({section})"), out.stdout[:200]
    assert re.search(rf"^NAME\n +{re.escape(name)} - \S", out.stdout, re.M), out.stdout[:400]
    # .nh: an option, key or path cut by a hyphen would be copied wrong
    broken = [ln for ln in out.stdout.splitlines() if ln.endswith("\u2010")]
    assert not broken, broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_whatis_can_index_it(page):
    """lexgrog reads the NAME line as mandb does for whatis/apropos, and the
    .TH names the page as its file does."""
    out = run(require("lexgrog"), str(page))
    name, section = page.name.rsplit(".", 1)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith(f'{page}: "{name} - '), out.stdout
    th = next(ln for ln in page.read_text().splitlines() if ln.startswith(".TH "))
    assert th.split()[1:3] == [name.upper().replace("-", r"\-"), section], th


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_option_hyphens_are_escaped(page):
    r"""A word starting with ``-`` is written ``\-``: groff 1.23 prints a
    plain ``-`` as a hyphen (U+2010), and an option copied from the page
    would not work."""
    bad = [(n, line) for n, line in enumerate(page.read_text().splitlines(), 1)
           if not line.startswith('.\\"')
           and re.search(r'(?:^|[\s\[(|"]|\\f[BIRP])(?<!\\)-', line)]
    assert not bad, bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_see_also_names_pages_that_exist(page):
    """Every page referred to is in man/ or installed with the Debian
    packages the suite uses (tcpd, ucspi-tcp, xinetd, systemd, man-db)."""
    refs = set(re.findall(r"^\.BR ([\w.\\-]+) \((\d)\)", page.read_text(), re.M))
    assert refs
    man = require("man")
    if run(man, "-w", "8", "tcpd").returncode != 0:
        pytest.skip("this system keeps no manual pages of its packages")
    ours = {p.name for p in PAGES}
    missing = [f"{name}({sec})" for name, sec in sorted(refs)
               if f"{plain(name)}.{sec}" not in ours
               and run(man, "-w", sec, plain(name)).returncode != 0]
    assert not missing, missing


# -- acl(8) --------------------------------------------------------------------
def command_parsers(name: str) -> list[argparse.ArgumentParser]:
    """The parsers whose help ``acl NAME --help`` prints."""
    module = importlib.import_module(f"acl.cli.{name}")
    if hasattr(module, "parsers"):
        return module.parsers()
    return [module.parser()] if hasattr(module, "parser") else []


def parser_options(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string the parser takes and shows (help=SUPPRESS: a
    test hook, such as acl audit --proc), but -h/--help, which DESCRIPTION
    says every command takes."""
    return {o for a in parser._actions if a.help != argparse.SUPPRESS
            for o in a.option_strings} - {"-h", "--help"}


def help_options(name: str, capsys) -> set[str]:
    """The options ``acl NAME --help`` prints, for a command without an
    argparse parser (acl compile)."""
    assert acl.cli.main([name, "--help"]) == 0
    return options_in([capsys.readouterr().out]) - {"-h", "--help"}


def acl_subsections() -> dict[str, list[str]]:
    return subsections(sections(ACL_8)["COMMANDS"])


def subsection_of(command: str, language_flag: str | None = None) -> list[str]:
    found = [lines for heading, lines in acl_subsections().items()
             if heading.split()[:2] == ["acl", command]
             and (language_flag is None or language_flag in heading.replace(",", " ").split())]
    assert len(found) == 1, (command, language_flag, list(acl_subsections()))
    return found[0]


def test_every_command_has_its_subsection():
    headings = [h.split()[:2] for h in acl_subsections()]
    assert {h[1] for h in headings if h[0] == "acl"} == set(acl.cli.COMMANDS)
    assert headings.count(["acl", "match"]) == len(cli_match._LANGUAGES)


@pytest.mark.parametrize("command", [c for c in acl.cli.COMMANDS if c != "match"])
def test_command_options_are_the_parsers(command, capsys):
    parsers = command_parsers(command)
    want = (set().union(*map(parser_options, parsers)) if parsers
            else help_options(command, capsys))
    assert options_in(tags(subsection_of(command))) == want


@pytest.mark.parametrize("flags,module", cli_match._LANGUAGES, ids=lambda v: str(v))
def test_match_options_are_each_languages_parsers(flags, module):
    parser = importlib.import_module(module).parser()
    assert options_in(tags(subsection_of("match", flags[0]))) == parser_options(parser)


def test_subsections_name_no_option_their_command_lacks():
    """Synopsis, prose and tags alike: a stale option anywhere in a
    command's .SS fails (the tags are checked both ways above)."""
    languages = {flags[0]: module for flags, module in cli_match._LANGUAGES}
    for heading, lines in acl_subsections().items():
        command = heading.split()[1]
        if command == "match":
            (flag,) = set(heading.replace(",", " ").split()) & set(languages)
            parsers = [importlib.import_module(languages[flag]).parser()]
        else:
            parsers = command_parsers(command)
        known = set().union(*map(parser_options, parsers)) | {"-h", "--help"}
        assert options_in([text_of(lines)]) <= known, (heading, options_in([text_of(lines)]) - known)


def test_examples_run_commands_with_their_own_options():
    """Each ``acl COMMAND ...`` line of EXAMPLES (a ``\\`` continuation
    joined) names a command and only options it has."""
    text = "\n".join(plain(ln) for ln in sections(ACL_8)["EXAMPLES"]
                     if not ln.startswith(".")).replace("\\\n", " ")
    commands = re.findall(r"^acl (\w+)(.*)$", text, re.M)
    assert len(commands) >= 5
    for command, rest in commands:
        assert command in acl.cli.COMMANDS, command
        known = set().union(*map(parser_options, command_parsers(command)))
        assert options_in([rest]) <= known, (command, rest)


def test_top_level_usage_and_help_are_in_the_synopsis():
    synopsis = text_of(sections(ACL_8)["SYNOPSIS"])
    for word in options_in([acl.cli.usage().splitlines()[0]]) | {"--help"}:
        assert word in synopsis.split(), word
    description = text_of(sections(ACL_8)["DESCRIPTION"])
    assert "-h" in description.split() and "--help" in description.split()


def test_query_lists_the_admin_commands():
    from acl.wire.admin import ADMIN_COMMANDS

    text = text_of(subsection_of("query"))
    assert all(re.search(rf"\b{c}\b", text) for c in ADMIN_COMMANDS)


def code_exit_statuses() -> set[int]:
    """The EXIT_* constants of acl.cli and of every module in it."""
    modules = [acl.cli] + [importlib.import_module(f"acl.cli.{m.name}")
                           for m in pkgutil.iter_modules(acl.cli.__path__)]
    return {v for m in modules for k, v in vars(m).items()
            if k.startswith("EXIT_") and isinstance(v, int)}


def test_exit_statuses_are_the_codes():
    assert statuses_in(tags(sections(ACL_8)["EXIT STATUS"])) == code_exit_statuses()


def test_each_command_says_its_exit_statuses():
    known = code_exit_statuses()
    for heading, lines in acl_subsections().items():
        text = text_of(lines)
        said = re.search(r"Exit status: (.*)", text)
        assert said, heading
        assert {int(n) for n in re.findall(r"\b(\d+)\b", said.group(1))} <= known, heading


def package_environment() -> set[str]:
    """The variables acl/ reads: ``os.environ.get("X")``, ``environ["X"]``,
    ``env.get("X")`` (systemd's, from a passed-in environment)."""
    found = set()
    for path in (ROOT / "acl").rglob("*.py"):
        found |= set(re.findall(r'\b(?:environ|env)(?:\.get\(|\[)\s*"([A-Z][A-Z0-9_]+)"',
                                path.read_text()))
    return found


def test_environment_is_what_the_package_reads():
    assert names_in(tags(sections(ACL_8)["ENVIRONMENT"])) == package_environment()


def test_signals_are_what_acl_serve_handles():
    handled = set()
    for path in (ROOT / "acl" / "serve" / "server.py", ROOT / "acl" / "cli" / "serve.py"):
        handled |= set(re.findall(r"signal\.(SIG[A-Z]+)", path.read_text()))
    assert handled and names_in(tags(sections(ACL_8)["SIGNALS"])) == handled


# -- acl-wrap(8) -----------------------------------------------------------------
def wrap_options() -> set[str]:
    """The options of main.c's getopt string ("+s:n:t:och")."""
    (letters,) = re.findall(r'getopt\(argc, argv, "\+?([^"]+)"\)',
                            (WRAP_SRC / "main.c").read_text())
    return {f"-{c}" for c in letters.replace(":", "")}


def test_wrap_options_are_its_getopt_letters():
    assert options_in(tags(sections(WRAP_8)["OPTIONS"])) == wrap_options()


def test_wrap_synopsis_names_only_its_options():
    said = options_in([text_of(sections(WRAP_8)["SYNOPSIS"])])
    assert said and said <= wrap_options(), said


def test_wrap_environment_names_what_it_reads_and_sets():
    source = "".join(p.read_text() for p in sorted(WRAP_SRC.glob("*.c")))
    literal = set(re.findall(r'\b(?:getenv|copy_env|setenv|unsetenv)\("([A-Z][A-Z0-9_]+)"',
                             source))
    # the UCSPI names are built from PROTO's prefix: "%sREMOTEIP", "%s%sLOCALPORT"
    ucspi = {"TCP" + s for s in re.findall(r'"%s(?:%s)?([A-Z]+)"', source)}
    assert literal and len(ucspi) >= 6
    documented = names_in(tags(sections(WRAP_8)["ENVIRONMENT"]))
    assert literal | ucspi <= documented, (literal | ucspi) - documented


def test_wrap_exit_statuses_are_its_codes():
    codes = {int(v) for v in re.findall(r"^#define EXIT_\w+ (\d+)",
                                        (WRAP_SRC / "wrap.h").read_text(), re.M)}
    assert codes and statuses_in(tags(sections(WRAP_8)["EXIT STATUS"])) == codes


# -- acl-policy.toml(5) -----------------------------------------------------------
_TAG = re.compile(r"\\fB(?P<key>\w+)\\fR = \\fI(?P<type>[^\\]+)\\fR "
                  r"\((?:default: \\fB(?P<value>.*)\\fR|default: \\fI(?P<words>[^\\]+)\\fR"
                  r"|(?P<required>required))\)")


def table_keys() -> dict[str, tuple[str, ...]]:
    """``.SS`` heading -> the keys the code takes there."""
    want = {f"[{name}]": keys for name, keys in policy.TABLE_KEYS.items()}
    want["[nfqueue]"] = nfqueue_config.TABLE_KEYS
    want |= {f'[[source]] type = "{kind}"': keys for kind, keys in policy.SOURCE_KEYS.items()}
    assert {h.strip("[]").split("]")[0] for h in want} == policy.KNOWN_SECTIONS
    return want


def policy_tags() -> dict[str, dict[str, re.Match]]:
    out = {}
    for heading, lines in subsections(sections(POLICY_5)["DESCRIPTION"]).items():
        matches = {}
        for tag in raw_tags(lines):
            m = _TAG.fullmatch(tag)
            assert m, f"{heading}: not a key tag: {tag}"
            matches[m["key"]] = m
        out[heading] = matches
    return out


def test_every_table_and_key_and_no_other():
    documented = {h: set(keys) for h, keys in policy_tags().items()}
    assert documented == {h: set(keys) for h, keys in table_keys().items()}


#: The smallest table that loads, where a table has required keys.
MINIMAL = {
    '[[source]] type = "hosts_access"': {"type": '"hosts_access"', "allow": '"hosts.allow"',
                                         "deny": '"hosts.deny"'},
    '[[source]] type = "tcprules"': {"type": '"tcprules"', "file": '"rules"'},
    '[[source]] type = "xinetd"': {"type": '"xinetd"', "file": '"xinetd.conf"'},
    "[nfqueue]": {"ports": '{ 22 = "sshd" }'},
}


def load(tmp_path: Path, text: str) -> policy.Policy:
    """``text`` as a policy file beside empty rule files of MINIMAL's names."""
    for name in ("hosts.allow", "hosts.deny", "rules", "xinetd.conf"):
        (tmp_path / name).touch()
    (tmp_path / "policy.toml").write_text(text)
    return policy.load_policy(tmp_path / "policy.toml")


def loaded_value(tmp_path: Path, heading: str, key: str, value: str | None):
    """What the code holds for ``key`` of the table ``heading`` when the
    policy writes ``value`` (TOML) for it -- None: leaves the key out --
    in the table MINIMAL gives.  PolicyError when that does not load."""
    table = {k: v for k, v in MINIMAL.get(heading, {}).items() if k != key}
    if value is not None:
        table[key] = value
    body = "".join(f"{k} = {v}\n" for k, v in table.items())
    if heading == "[nfqueue]":      # its own reader, which load_policy calls
        return getattr(NfqueueConfig.from_table(tomllib.loads(body), "policy.toml"), key)
    loaded = load(tmp_path, f"{heading.split(' type')[0]}\n{body}")
    if heading.startswith("[[source]]"):
        (source,) = loaded.sources
        return source.services if key == "services" else getattr(source.layer, key)
    if heading == "[metrics]":
        return loaded.metrics_listen
    return getattr(getattr(loaded, heading.strip("[]")), key)


@pytest.mark.parametrize("heading,key", [(h, k) for h, keys in table_keys().items()
                                         for k in keys])
def test_default_is_what_the_code_defaults_to(heading, key, tmp_path):
    tag = policy_tags()[heading][key]
    if tag["required"]:
        with pytest.raises(PolicyError):
            loaded_value(tmp_path, heading, key, None)
        return
    if tag["words"]:            # no TOML value says it: see the test below
        assert (heading, key) == ('[[source]] type = "xinetd"', "services"), tag["words"]
        return
    written = plain(tag["value"])
    tomllib.loads(f"x = {written}")         # TOML, as a reader would copy it
    assert loaded_value(tmp_path, heading, key, written) == \
        loaded_value(tmp_path, heading, key, None), written


def test_an_xinetd_source_without_services_binds_its_ids(tmp_path):
    """The one default written in words: the service ids the file
    defines, not every service."""
    (tmp_path / "xinetd.conf").write_text(
        "service echo\n{\n\ttype = INTERNAL\n\tsocket_type = stream\n\twait = no\n}\n")
    tag = policy_tags()['[[source]] type = "xinetd"']["services"]
    assert "service ids the file defines" in tag["words"]
    loaded = load(tmp_path, '[[source]]\ntype = "xinetd"\nfile = "xinetd.conf"\n')
    assert loaded.services() == ["echo"]


def test_the_example_is_a_policy_acl_loads(tmp_path):
    """The EXAMPLES block, copied as a reader copies it, loads -- with
    tests/test_doc_toml.py's stand-ins for its rule files and users."""
    from tests import test_doc_toml

    lines = sections(POLICY_5)["EXAMPLES"]
    block = lines[lines.index(".nf") + 1:lines.index(".fi")]
    text = "\n".join(plain(ln) for ln in block) + "\n"
    assert "[[source]]" in text
    test_doc_toml.test_block_is_toml_acl_accepts(text, tmp_path)


# -- the ranges acl-policy.toml(5) states ----------------------------------------
_RANGE = re.compile(r"(?<![\w.])(0x[0-9a-f]+|\d+) to (0x[0-9a-f]+|\d+)(?![\w])")


def stated_ranges() -> list[tuple[str, str, str, int, int]]:
    """``(heading, key, type, low, high)`` of each key whose paragraph says
    ``LOW to HIGH`` (the mode's are octal, as the page writes them)."""
    out = []
    for heading, lines in subsections(sections(POLICY_5)["DESCRIPTION"]).items():
        starts = [i for i, line in enumerate(lines) if line in (".TP", ".TQ")]
        for at, nxt in zip(starts, starts[1:] + [len(lines)], strict=True):
            m = _TAG.fullmatch(lines[at + 1])
            if m is None:
                continue
            para = text_of(lines[at + 2:nxt])
            for low, high in _RANGE.findall(para):
                base = 8 if m["key"] == "mode" else 0
                out.append((heading, m["key"], m["type"], int(low, base or 0),
                            int(high, base or 0)))
    return out


def test_the_page_states_ranges():
    got = {(h.strip("[]"), k) for h, k, *_ in stated_ranges()}
    assert {("limits", "sources"), ("limits", "ipv6_prefix"), ("sockets", "mode"),
            ("names", "deadline"), ("run", "keep_leases"), ("nfqueue", "queues")} <= got


def _written(key: str, kind: str, value: int) -> str:
    if key == "mode":
        return f"0o{value:o}" if value >= 0 else str(value)
    if kind.startswith("list"):
        return f"[{value}]"
    return str(value)


@pytest.mark.parametrize("heading,key,kind,low,high",
                         [pytest.param(*r, id=f"{r[0]} {r[1]}") for r in stated_ranges()])
def test_a_stated_range_is_the_code_s(heading, key, kind, low, high, tmp_path):
    """Both ends of the range load to themselves; one past either end stops
    the load, and -- the policy file's mistakes are reported there
    (docs/configuration.md) -- at the value, ``policy.toml:LINE:COLUMN``."""
    def read(value):
        got = loaded_value(tmp_path, heading, key, _written(key, kind, value))
        return list(got) if isinstance(got, (list, tuple)) else got

    for value in (low, high):
        assert read(value) == ([value] if kind.startswith("list") else value), value
    for value in (low - 1, high + 1):
        with pytest.raises(PolicyError) as err:
            read(value)
        if heading == "[nfqueue]":       # read by its own reader here: no file
            continue
        text = (tmp_path / "policy.toml").read_text().splitlines()
        line = next(n for n, t in enumerate(text, 1) if t.startswith(f"{key} = "))
        where = f"{tmp_path / 'policy.toml'}:{line}:{len(key) + 4}: "
        assert str(err.value).startswith(where), (value, str(err.value))
