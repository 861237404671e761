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
from acl.nfqueue_config import TABLE_KEYS as NFQUEUE_KEYS
from acl.policy import SOURCE_KEYS, TABLE_KEYS, load_policy
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


def load_block(text: str, tmp_path: Path):
    """A whole-policy block loaded as acl serve loads it (module rules)."""
    data = tomllib.loads(text)
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
    return load_policy(tmp_path / "policy.toml")


@pytest.mark.parametrize("text", BLOCKS)
def test_block_is_toml_acl_accepts(text, tmp_path):
    data = tomllib.loads(text)
    if "nfqueue" in data:
        NfqueueConfig.from_table(data["nfqueue"], "doc")
    if not ("sockets" in data and "source" in data):
        return
    assert load_block(text, tmp_path).sources


# -- docs/configuration.md's policy: every key, and the defaults ----------------

def block_with(doc: str, marker: str) -> str:
    """The one TOML block of ``doc`` that holds ``marker``."""
    (text,) = [b.values[0] for b in BLOCKS if b.id.startswith(f"{doc}:") and marker in b.values[0]]
    return text


def reference_block() -> str:
    """The policy docs/configuration.md opens with: the first whole one there."""
    return next(b.values[0] for b in BLOCKS if b.id.startswith("configuration.md:")
                and "[sockets]" in b.values[0])


def keys_missing(text: str) -> list[str]:
    """The keys acl reads that the block does not show ("Every table takes
    only the keys shown above"); [nfqueue]'s are docs/nfqueue.md's."""
    shown: dict[str, set[str]] = {}       # table, or "source:TYPE" -> keys
    table = ""
    for line in text.splitlines():
        header = re.match(r"^\[+([\w.]+)\]+", line)
        if header:
            table = header.group(1)
            continue
        kind = re.match(r'^type = "(\w+)"', line)
        if kind and table == "source":
            table = f"source:{kind.group(1)}"
        key = re.match(r"^#? *(\w+) *=", line)        # a key written commented out counts
        if key:
            shown.setdefault(table, set()).add(key.group(1))
    missing = [f"[{table}] {key}" for table, keys in TABLE_KEYS.items()
               for key in keys if key not in shown.get(table, ())]
    missing += [f"[[source]] type = {kind!r}: {key}" for kind, keys in SOURCE_KEYS.items()
                for key in keys if key not in shown.get(f"source:{kind}", ())]
    return missing


def test_the_reference_policy_shows_every_key():
    assert keys_missing(reference_block()) == []


def test_a_key_left_out_of_the_reference_policy_is_found():
    planted = reference_block().replace("negative_ttl =", "negative-ttl =")
    planted = re.sub(r"^mapped_as_v4 = .*$", "", planted, flags=re.M)
    assert keys_missing(planted) == ["[names] negative_ttl",
                                     "[[source]] type = 'tcprules': mapped_as_v4"]


#: Keys whose values in the reference policy are examples, not the defaults
#: (docs/configuration.md says which, right above it).
EXAMPLE_VALUES = {"sockets": {"query", "policy", "admin", "group"}, "metrics": {"listen"},
                  "run": {"user", "group"}}


def defaults_differing(text: str, tmp_path: Path) -> list[str]:
    """Keys of the block's [sockets], [limits], [names] and [run] whose
    value is not what a policy without them loads to (the examples apart)."""
    policy = load_block(text, tmp_path)
    data = tomllib.loads(text)
    bare_dir = tmp_path / "bare"
    bare_dir.mkdir()
    for name in ("hosts.allow", "hosts.deny"):
        (bare_dir / name).write_text("")
    (bare_dir / "policy.toml").write_text('[[source]]\ntype = "hosts_access"\n'
                                          'allow = "hosts.allow"\ndeny = "hosts.deny"\n')
    bare = load_policy(bare_dir / "policy.toml")
    wrong = []
    for table in ("sockets", "limits", "names", "run"):
        read, default = getattr(policy, table), getattr(bare, table)
        for key in data.get(table, {}):
            if key in EXAMPLE_VALUES.get(table, ()):
                continue
            if getattr(read, key) != getattr(default, key):
                wrong.append(f"[{table}] {key}: shown {getattr(read, key)!r}, "
                             f"default {getattr(default, key)!r}")
    return wrong


def test_the_reference_policy_shows_the_defaults(tmp_path):
    doc = (ROOT / "docs" / "configuration.md").read_text()
    said = doc[:doc.index("```toml")]
    for table, keys in EXAMPLE_VALUES.items():
        for key in keys:
            assert f"`[{table}] {key}`" in said or f"`{key}`" in said, (table, key)
    assert defaults_differing(reference_block(), tmp_path) == []


def test_a_value_that_is_not_the_default_is_found(tmp_path):
    planted = reference_block().replace("ttl = 300 ", "ttl = 30 ")
    assert defaults_differing(planted, tmp_path) == ["[names] ttl: shown 30.0, default 300.0"]


def nfqueue_defaults_differing(text: str) -> list[str]:
    """docs/nfqueue.md's keys under "Optional, with their defaults" against
    the reader's defaults, and every key the reader takes shown."""
    shown = tomllib.loads(text)["nfqueue"]
    after = text.split("# Optional, with their defaults:", 1)[1]
    optional = tomllib.loads(re.split(r"^\[", after, maxsplit=1, flags=re.M)[0])
    default = NfqueueConfig()
    wrong = [f"{key}: shown {value!r}, default {getattr(default, key)!r}"
             for key, value in optional.items() if getattr(default, key) != value]
    wrong += [f"{key}: not shown" for key in NFQUEUE_KEYS if key not in shown]
    return wrong


def test_nfqueue_md_shows_every_key_and_the_defaults():
    assert nfqueue_defaults_differing(block_with("nfqueue.md", "# Optional, with their defaults:")) == []


def test_a_wrong_nfqueue_default_is_found():
    planted = block_with("nfqueue.md", "# Optional, with their defaults:").replace("batch = 256 ", "batch = 64 ")
    assert nfqueue_defaults_differing(planted) == ["batch: shown 64, default 256"]
