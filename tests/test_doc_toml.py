"""Every ```toml block in README.md and docs/*.md is TOML 1.0 that acl accepts.

Each block parses with tomllib (a reader copying an example must not meet a
syntax error).  A block that is a whole policy (``[sockets]`` and
``[[source]]``) loads with ``acl.policy.load_policy``, its rule files stood
in by empty files in a temp dir (absolute paths moved there too) and a user
or group this machine lacks (the guides' ``acl``) by root.  An
``[nfqueue]`` table, whole policy or not, passes ``NfqueueConfig.from_table``
(the check ``acl serve`` makes when it starts the door).
"""

from __future__ import annotations

import re
import textwrap
import tomllib
from pathlib import Path

import pytest

from acl.cdb import make_cdb
from acl.policy import load_policy
from acl.serve.nfqueue import NfqueueConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PATH_KEYS = ("file", "allow", "deny", "hosts_file")


def toml_blocks():
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        i = 0
        while i < len(lines):
            m = re.match(r"^( *)```toml\s*$", lines[i])
            if m is None:
                i += 1
                continue
            start = i + 1
            i = start
            while not re.match(r"^ *```\s*$", lines[i]):
                i += 1
            yield pytest.param(textwrap.dedent("\n".join(lines[start:i])) + "\n",
                               id=f"{doc.name}:{start}")
            i += 1


BLOCKS = list(toml_blocks())


def test_there_are_blocks_to_check():
    assert len(BLOCKS) >= 6
    assert any("[nfqueue]" in b.values[0] for b in BLOCKS)


def _exists(kind: str, name: str) -> bool:
    import grp
    import pwd

    try:
        (pwd.getpwnam if kind == "user" else grp.getgrnam)(name)
        return True
    except KeyError:
        return False


@pytest.mark.parametrize("text", BLOCKS)
def test_block_is_toml_acl_accepts(text, tmp_path):
    data = tomllib.loads(text)
    if "nfqueue" in data:
        NfqueueConfig.from_table(data["nfqueue"], "doc")
    if not ("sockets" in data and "source" in data):
        return
    for source in data["source"]:
        for key in PATH_KEYS:
            if key in source:
                name = Path(source[key]).name
                text = text.replace(f'"{source[key]}"', f'"{name}"')
                # an empty rules file; a ".cdb" must be a cdb (of no rules)
                (tmp_path / name).write_bytes(make_cdb([]) if name.endswith(".cdb") else b"")
    # The guides' "acl" user and group may not exist here: stand in root.
    for key, value in re.findall(r'^(user|group) = "([^"]+)"', text, re.M):
        if not _exists(key, value):
            text = re.sub(rf'^{key} = "{re.escape(value)}"', f'{key} = "root"', text,
                          flags=re.M)
    (tmp_path / "policy.toml").write_text(text)
    policy = load_policy(tmp_path / "policy.toml")
    assert policy.sources
