"""A mistake in the policy TOML is reported at its ``line:column``.

tomllib keeps no positions, so acl/toml_positions.py finds them again in
the text.  These tests generate policy files -- tables and
``[[source]]`` entries in random order, with comments, blank lines and
indentation between them -- plant one mistake in one of them, and check
that the message points at the planted key or value: an unknown key (at the
key), a value of the wrong kind, an unknown source type (at the value), a
source without a type (at its ``[[source]]`` header), an unknown section
(at its header).  Every case is generated from a seed printed on failure.
"""

from __future__ import annotations

import random

import pytest

from acl.errors import PolicyError
from acl.policy import load_policy

SEEDS = range(60)

# (table, key, a good value, a value of the wrong kind, what the error says)
TABLE_VALUES = [
    ("limits", "sources", "1024", "0", "limits.sources"),
    ("limits", "rate", "0", '"fast"', "limits.rate"),
    ("sockets", "mode", '"0660"', "600", "sockets.mode"),
    ("run", "watch", "false", '"no"', "run.watch"),
    ("run", "keep_leases", "0", "-1", "run.keep_leases"),
]
SOURCES = {
    "hosts_access": ['allow = "hosts.allow"', 'deny = "hosts.deny"'],
    "tcprules": ['file = "tcp.rules"', "mapped_as_v4 = true"],
}


def _filler(rng: random.Random) -> list[str]:
    # U+2028 and U+0085 end a line for str.splitlines, not for TOML
    return rng.choice([[], [""], ["# a comment"], ["", "# [[source]] in a comment", ""],
                       ["# a line\u2028separator and a next-line\x85mark"]])


def _indent(rng: random.Random) -> str:
    return rng.choice(["", "", "  ", "\t"])


def _generate(seed: int, tmp_path, *, with_mistake: bool = True):
    """(policy text, (expected line, expected column, expected text)) with
    one planted mistake; ``with_mistake=False``: the same file with the good
    line (or none) in its place, and None for what is expected."""
    rng = random.Random(seed)
    (tmp_path / "hosts.allow").write_text("ALL: 127.0.0.1\n")
    (tmp_path / "hosts.deny").write_text("ALL: ALL\n")
    (tmp_path / "tcp.rules").write_text("127.:allow\n:deny\n")
    kinds = [rng.choice(list(SOURCES)) for _ in range(rng.randint(1, 4))]
    tables = sorted({t for t, *_ in TABLE_VALUES}, key=lambda _: rng.random())
    blocks: list[tuple[str, object]] = [("table", t) for t in tables]
    blocks += [("source", i) for i in range(len(kinds))]
    # sources keep their order (messages count them), tables go anywhere
    order = [b for b in blocks if b[0] == "source"]
    for b in (b for b in blocks if b[0] == "table"):
        order.insert(rng.randint(0, len(order)), b)

    mistake = rng.choice(["unknown key", "bad value", "unknown type", "no type",
                          "unknown section", "unknown source key"])
    target_source = rng.randrange(len(kinds))
    target_table = rng.choice(TABLE_VALUES)
    lines: list[str] = _filler(rng)
    expected = None

    def plant(line: str, column: int, says: str, good: str | None = None) -> None:
        nonlocal expected
        if not with_mistake:
            lines.extend([good] if good is not None else [])
            expected = ()
            return
        lines.append(line)
        expected = (len(lines), column, says)

    for kind, what in order:
        lines += _filler(rng)
        if kind == "table":
            lines.append(f"{_indent(rng)}[{what}]" if what != "sockets" else "[sockets]")
            if what == "sockets":
                lines += ['query = "query.sock"', 'admin = "admin.sock"']
            for table, key, good, bad, says in TABLE_VALUES:
                if table != what:
                    continue
                pad = _indent(rng)
                if mistake == "bad value" and (table, key) == target_table[:2]:
                    plant(f"{pad}{key} = {bad}", len(f"{pad}{key} = ") + 1, says,
                          f"{pad}{key} = {good}")
                else:
                    lines.append(f"{pad}{key} = {good}")
                lines += _filler(rng)
            if mistake == "unknown key" and what == target_table[0]:
                pad = _indent(rng)
                plant(f"{pad}servise = 1", len(pad) + 1, "unknown key 'servise'")
            continue
        src_kind = kinds[what]
        pad = _indent(rng)
        header = f"{pad}[[source]]" + rng.choice(["", "   # entry"])
        if mistake == "no type" and what == target_source:
            plant(header, len(pad) + 1, f"source[{what}]: no type", header)
            if not with_mistake:
                lines.append(f'type = "{src_kind}"')
        else:
            lines.append(header)
            type_pad = _indent(rng)
            if mistake == "unknown type" and what == target_source:
                plant(f'{type_pad}type = "tcpwrappers"', len(f"{type_pad}type = ") + 1,
                      f"source[{what}].type: unknown source type 'tcpwrappers'",
                      f'{type_pad}type = "{src_kind}"')
            else:
                lines.append(f'{type_pad}type = "{src_kind}"')
        for item in SOURCES[src_kind]:
            lines += _filler(rng)
            lines.append(_indent(rng) + item)
        if mistake == "unknown source key" and what == target_source:
            pad = _indent(rng)
            plant(f'{pad}service = ["x"]', len(pad) + 1,
                  f"source[{what}] ({src_kind}): unknown key 'service'")
        lines.append(f"{_indent(rng)}services = [\"svc{what}\"]")
    if mistake == "unknown section":
        lines += _filler(rng)
        plant("[limit]", 1, "limit: unknown section")
        if with_mistake:
            lines.append("sources = 1")
    assert expected is not None, (seed, mistake)
    return "\n".join(lines) + "\n", expected


@pytest.mark.parametrize("seed", SEEDS)
def test_a_planted_mistake_is_reported_where_it_is(seed, tmp_path):
    text, (line, column, says) = _generate(seed, tmp_path)
    p = tmp_path / "policy.toml"
    # odd seeds end their lines as Windows editors do: a column never counts the \r
    p.write_text(text, encoding="utf-8", newline="\r\n" if seed % 2 else "\n")
    with pytest.raises(PolicyError) as exc:
        load_policy(p)
    message = str(exc.value)
    numbered = "\n".join(f"{n:3} {t}" for n, t in enumerate(text.splitlines(), 1))
    assert message.startswith(f"{p}:{line}:{column}: "), \
        f"seed {seed}: {message}\nexpected {line}:{column}\n{numbered}"
    assert says in message, f"seed {seed}: {message}"


@pytest.mark.parametrize("seed", SEEDS[:20])
def test_the_same_policy_without_its_mistake_loads(seed, tmp_path):
    """The generator's files less their mistake load: the planted line, not
    the rest of the file, is what the test above sees refused."""
    text, expected = _generate(seed, tmp_path, with_mistake=False)
    assert expected == ()
    p = tmp_path / "policy.toml"
    p.write_text(text, encoding="utf-8", newline="\r\n" if seed % 2 else "\n")
    load_policy(p)


@pytest.mark.parametrize("before", ["", "# é ", "# 𝄞\t"])
def test_a_byte_that_is_not_utf8_is_reported_where_it_is(before, tmp_path):
    """TOML is UTF-8: a stray byte gives its line and column (characters, as
    tomllib counts them), not a UnicodeDecodeError's traceback."""
    path = tmp_path / "policy.toml"
    path.write_bytes(b"[run]\nwatch = false\n" + before.encode() + b"\xff\n")
    with pytest.raises(PolicyError) as got:
        load_policy(path)
    assert str(got.value) == (f"{path}:3:{len(before) + 1}: not UTF-8 (byte 0xff): "
                              "TOML files are UTF-8")


@pytest.mark.parametrize("depth", [330, 493, 2000])
def test_values_nested_too_deeply_are_an_error_not_a_crash(depth, tmp_path):
    """tomllib and the position finder read nesting by recursion: at a depth
    tomllib takes and the finder does not (493 arrays), the message keeps its
    position without one; past tomllib's, the file is refused by name."""
    path = tmp_path / "policy.toml"
    for opening, closing in (("[", "]"), ("{a = ", "}")):
        path.write_text(f"[limits]\nsources = 0\nzz = {opening * depth}{closing * depth}\n")
        with pytest.raises(PolicyError) as got:
            load_policy(path)
        said = str(got.value)
        assert said.startswith(str(path)) and (
            "unknown key 'zz'" in said or "nested too deeply" in said), said


def test_a_file_changed_under_the_finder_gives_no_position_and_no_crash(tmp_path):
    """The finder reads the file again, after tomllib: what it reads then may
    be no TOML at all (a \\U escape past U+10FFFF: OverflowError in chr)."""
    from acl import toml_positions

    path = tmp_path / "policy.toml"
    path.write_text('[limits]\n"\\Ua0001F600" = 1\n')
    assert toml_positions.position(path, "limits.x") == str(path)
    assert toml_positions.value_text(path, "limits.x") is None


@pytest.mark.parametrize(("text", "said"), [
    ('[[source]]\ntype = []\nfile = "x"\n', ":2:8: source[0].type: expected a string"),
    ('[[source]]\ntype = {}\nfile = "x"\n', ":2:8: source[0].type: expected a string"),
    ("[limits]\nsources = " + "1" * 5000 + "\n", ": a number too long to read"),
    ("[limits]\nrate = 0x" + "f" * 4000 + "\n", ":2:1: limits.rate: an integer out of range"),
    ("[sockets]\nquery = 0x" + "f" * 4000 + "\n", ":2:1: sockets.query: an integer out of range"),
    ("[sockets]\nadmin_uids = [1, -" + "9" * 40 + "]\n",
     ":2:18: sockets.admin_uids[1]: an integer out of range"),
    ('[names]\nhosts_file = "a\\u0000b"\n', ":2:14: names.hosts_file: not a file name"),
    ('[[source]]\ntype = "tcprules"\nfile = "a\\u0000b"\n', ":3:8: source[0].file: not a file"),
])
def test_values_python_cannot_take_are_errors_at_their_key(text, said, tmp_path):
    """A source type that is no string, an integer past 2**63 (or past the
    4,300 digits Python reads at all), a NUL in a file name: each was a
    TypeError, ValueError or OverflowError's traceback."""
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(PolicyError) as got:
        load_policy(path)
    assert str(got.value).startswith(f"{path}{said}"), str(got.value)


@pytest.mark.parametrize("value", ["-1", "4294967295", "4294967296"])
def test_an_id_out_of_uid_t_is_refused(value, tmp_path):
    """uid_t is 32 bits and (uid_t) -1 means "no change": such an admin id
    could never be a peer's (it loaded, and said nothing)."""
    path = tmp_path / "policy.toml"
    path.write_text(f"[sockets]\nadmin_uids = [0, {value}]\n")
    with pytest.raises(PolicyError, match=rf":2:14: sockets.admin_uids: not an id: {value} "):
        load_policy(path)
