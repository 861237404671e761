"""The systemd units in deploy/systemd: they verify and acl.service is hardened.

There is no running systemd here (PID 1 is not systemd), so both checks use
``systemd-analyze`` on unit *files*: ``verify`` loads them in a private
manager, and ``security --offline=true`` rates a unit file without a
running manager (systemd >= 250).  ``verify`` insists that ExecStart's
program exists, so the units are checked as copies whose
``/usr/local/bin/acl`` is replaced by the ``acl`` entry point installed
here; nothing else in them is changed.  The acl-wrap pair is verified so
too, its ``/usr/local/bin/acl-wrap`` replaced by ``true`` (verify checks
that a program is there, not what it is).  ``verify --man=yes`` runs
``man`` on each ``Documentation=man:`` page, with MANPATH at the pages
deploy/install.sh installs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import DEPLOY, ROOT, acl_entry_point, guide_commands, install_man_pages

UNITS = ("acl.socket", "acl-admin.socket", "acl-metrics.socket", "acl-policy.socket",
         "acl-nfqueue-policy.socket", "acl.service", "acl-nfqueue.service")
SHIPPED_EXEC = "/usr/local/bin/acl"
WRAP_UNITS = ("acl-wrap.socket", "acl-wrap@.service")
SHIPPED_WRAP = "/usr/local/bin/acl-wrap"

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze not installed")


def analyze(*args, cwd, env=None):
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env=env)


@pytest.fixture
def units(tmp_path) -> Path:
    exe = acl_entry_point()
    for name in UNITS:
        text = (DEPLOY / "systemd" / name).read_text()
        (tmp_path / name).write_text(text.replace(SHIPPED_EXEC, exe))
    return tmp_path


def test_units_name_the_shipped_entry_point():
    for name in ("acl.service", "acl-nfqueue.service"):
        text = (DEPLOY / "systemd" / name).read_text()
        assert f"ExecStart={SHIPPED_EXEC} serve --config /etc/acl/policy.toml" in text


def test_verify_passes(units):
    out = analyze("verify", "--man=no", *[f"./{u}" for u in UNITS], cwd=units)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stderr.strip() == "", out.stderr


def test_verify_can_fail(units):
    """The same check on a unit with a broken directive fails: it is not a no-op."""
    bad = units / "acl.service"
    bad.write_text(bad.read_text().replace("Type=notify", "Type=notifyy"))
    out = analyze("verify", "--man=no", "./acl.service", cwd=units)
    assert out.returncode != 0 or "notifyy" in out.stderr


def exposure(unit: Path) -> tuple[float, str]:
    out = analyze("security", "--offline=true", f"./{unit.name}", cwd=unit.parent)
    assert out.returncode == 0, out.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d) (\w+)", out.stdout)
    assert m, out.stdout[-500:]
    return float(m.group(1)), m.group(2)


def test_security_score_is_ok_or_better_and_documented(units):
    score, word = exposure(units / "acl.service")
    assert score <= 2.0 and word in ("SAFE", "OK"), (score, word)
    # --threshold is in tenths: the gate an operator's CI would use.
    gate = analyze("security", "--offline=true", "--threshold=20", "./acl.service", cwd=units)
    assert gate.returncode == 0
    guide = (ROOT / "docs" / "operator-guide.md").read_text()
    assert f"{score:.1f} {word}" in guide, "record the measured score in the guide"
    assert f"{score:.1f} {word}" in (DEPLOY / "systemd" / "acl.service").read_text()


def test_every_row_of_the_guide_s_score_table_is_measured(units):
    """docs/operator-guide.md, "The sandbox, and its score": each unit's row
    is what systemd-analyze says of the shipped file, and the score given
    for the variant that resolves host names (PrivateNetwork= and
    IPAddressDeny= removed, AF_INET AF_INET6 added) is that variant's."""
    guide = " ".join((ROOT / "docs" / "operator-guide.md").read_text().split())
    rows = re.findall(r"\| `([\w-]+\.service)` \| \**(\d\.\d \w+)\** \|", guide)
    assert {unit for unit, _ in rows} == {"acl.service", "acl-nfqueue.service"}, rows
    for unit, said in rows:
        score, word = exposure(units / unit)
        assert f"{score:.1f} {word}" == said, (unit, said)

    said = re.search(r"remove `PrivateNetwork=` and `IPAddressDeny=` and add `AF_INET "
                     r"AF_INET6` to `RestrictAddressFamilies=` \(measured: (\d\.\d \w+)\)",
                     guide)
    assert said, "the guide gives the score of the variant that resolves names"
    unit = units / "acl.service"
    text = unit.read_text()
    variant = re.sub(r"^(PrivateNetwork|IPAddressDeny)=.*\n", "", text, flags=re.M)
    variant = variant.replace("RestrictAddressFamilies=AF_UNIX\n",
                              "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n")
    assert not re.search(r"^PrivateNetwork=", variant, re.M) and "AF_INET6\n" in variant
    unit.write_text(variant)
    score, word = exposure(unit)
    assert f"{score:.1f} {word}" == said.group(1)


def test_nfqueue_variant_keeps_only_cap_net_admin(units):
    score, _ = exposure(units / "acl-nfqueue.service")
    assert score <= 2.0
    text = (units / "acl-nfqueue.service").read_text()
    assert re.search(r"^CapabilityBoundingSet=CAP_NET_ADMIN$", text, re.M)
    assert "AF_NETLINK" in text
    plain = (units / "acl.service").read_text()
    assert re.search(r"^CapabilityBoundingSet=$", plain, re.M)
    assert re.search(r"^RestrictAddressFamilies=AF_UNIX$", plain, re.M)


def test_sockets_are_passed_by_the_names_acl_serve_reads(units):
    """acl.serve.systemd.listen_fds keys inherited fds by LISTEN_FDNAMES."""
    from acl.serve import systemd as sd

    service = (units / "acl.service").read_text()
    listed = re.search(r"^Sockets=(.*)$", service, re.M).group(1).split()
    assert sorted(listed) == ["acl-admin.socket", "acl-metrics.socket", "acl.socket"]
    # Every socket unit naming Service=acl.service is passed to it (systemd
    # passes the sockets that trigger a service); acl-policy.socket is one,
    # kept out of Sockets= (which would pull it in) because it is optional.
    passed = sorted(u for u in UNITS if u.endswith(".socket") and re.search(
        r"^Service=acl.service$", (units / u).read_text(), re.M))
    assert passed == sorted([*listed, "acl-policy.socket"])
    names = set()
    for sock in passed:
        text = (units / sock).read_text()
        names.add(re.search(r"^FileDescriptorName=(\w+)$", text, re.M).group(1))
    assert names == {"query", "policy", "admin", "metrics"} and names <= set(sd.ORDER)


def test_security_rating_reacts_to_the_sandbox(units):
    """Strip the sandbox and the score gets worse: the rating is really read."""
    unit = units / "acl.service"
    hardened, _ = exposure(unit)
    text = unit.read_text()
    sandbox = text[text.index("# --- Sandbox"):text.index("[Install]")]
    unit.write_text(text.replace(sandbox, ""))
    bare, _ = exposure(unit)
    assert bare > hardened + 3.0


def test_documentation_lines_name_installed_guides():
    """Every ``Documentation=file:/usr/share/doc/acl/X`` is a guide in docs/
    that deploy/install.sh installs there."""
    install = (DEPLOY / "install.sh").read_text()
    assert "install -m 0644 docs/*.md /usr/share/doc/acl/" in install
    seen = 0
    for unit in sorted((DEPLOY / "systemd").iterdir()):
        for m in re.finditer(r"^Documentation=file:/usr/share/doc/acl/(\S+)$",
                             unit.read_text(), re.M):
            assert (ROOT / "docs" / m.group(1)).is_file(), (unit.name, m.group(1))
            seen += 1
    assert seen >= 6


def test_documentation_names_the_manual_page_first():
    """Each unit's first Documentation= is its page in man/: acl(8), or
    acl-wrap(8) for the wrapper's units (systemctl status lists them)."""
    seen = 0
    for unit in sorted((DEPLOY / "systemd").iterdir()):
        docs = re.findall(r"^Documentation=(.*)$", unit.read_text(), re.M)
        page = "acl-wrap" if unit.name.startswith("acl-wrap") else "acl"
        assert docs and docs[0] == f"man:{page}(8)", (unit.name, docs)
        assert (ROOT / "man" / f"{page}.8").is_file()
        seen += 1
    assert seen == len(UNITS) + len(WRAP_UNITS)


def test_verify_finds_the_manual_pages(units, tmp_path):
    """``systemd-analyze verify --man=yes`` looks every ``man:`` page up
    with ``man``: it passes on the pages install.sh installs, and fails
    without them (the lookup is real)."""
    if shutil.which("man") is None:
        pytest.skip("man-db is not installed")
    true = shutil.which("true")
    for name in WRAP_UNITS:
        text = (DEPLOY / "systemd" / name).read_text()
        (units / name).write_text(text.replace(SHIPPED_WRAP, true))
    every = [f"./{u}" for u in (*UNITS, *WRAP_UNITS)]
    env = dict(os.environ, MANPATH=str(install_man_pages(tmp_path / "man")))
    out = analyze("verify", "--man=yes", *every, cwd=units, env=env)
    assert out.returncode == 0 and out.stderr.strip() == "", out.stdout + out.stderr
    env["MANPATH"] = str(tmp_path / "no-pages")
    out = analyze("verify", "--man=yes", *every, cwd=units, env=env)
    assert out.returncode != 0
    assert "man acl(8)" in out.stderr and "man acl-wrap(8)" in out.stderr, out.stderr


def test_the_nfqueue_policy_socket_is_the_policy_socket_passed_elsewhere():
    """acl-nfqueue-policy.socket makes the same socket as acl-policy.socket
    for acl-nfqueue.service, and the two can never run together, nor can
    acl-policy.socket run beside acl-nfqueue.service (it would start
    acl.service, which stops acl-nfqueue.service: tests/deploy/test_systemd_live.py)."""
    def socket_section(name):
        text = (DEPLOY / "systemd" / name).read_text()
        return dict(re.findall(r"^(\w+)=(.*)$", text[text.index("[Socket]"):], re.M))

    plain, twin = socket_section("acl-policy.socket"), socket_section("acl-nfqueue-policy.socket")
    assert (plain.pop("Service"), twin.pop("Service")) == ("acl.service", "acl-nfqueue.service")
    assert plain == twin
    conflicts = {name: re.search(r"^Conflicts=(.*)$", (DEPLOY / "systemd" / name).read_text(),
                                 re.M).group(1).split()
                 for name in ("acl-nfqueue-policy.socket", "acl-nfqueue.service")}
    assert "acl-policy.socket" in conflicts["acl-nfqueue-policy.socket"]
    assert "acl-policy.socket" in conflicts["acl-nfqueue.service"]


def test_the_guides_install_steps_are_the_unit_headers():
    """The commands tests/deploy/test_systemd_live.py runs from the guide
    (section 2) are the ones acl.service's header lists under "Install:"."""
    header = (DEPLOY / "systemd" / "acl.service").read_text()
    steps = [ln[1:].split("  #")[0].strip() for ln in header.splitlines()
             if ln.startswith("#   ")]
    commands = guide_commands()
    assert [c.split()[0] for c in commands] == ["useradd", "install", "cp", "systemctl",
                                                "systemctl"]
    for line in commands:
        if not line.startswith("cp "):            # the header says that one in words
            assert line in steps, line
