"""acl-wrap's TCPREMOTEIP/TCP6REMOTEIP text against the project's model of
ucspi-tcp's ip6_fmt (acl/ucspi_addr.py, itself checked against the real
tcpserver, spec B.4), on generated addresses.

Only ::1 and mapped addresses can reach acl-wrap over loopback, so a tiny
driver links ext/wrap/peer.c and formats addresses read from stdin.
"""

from __future__ import annotations

import random
import subprocess

from acl.ucspi_addr import ip4_fmt, ip6_fmt
from tests.wrap import harness

DRIVER = r"""
#include <stdio.h>
#include <string.h>
#include "wrap.h"
int main(void)
{
    char hex[64], out[128];
    while (scanf("%63s", hex) == 1) {
        struct endpoint e;
        unsigned i, v;
        memset(&e, 0, sizeof e);
        e.known = 1;
        e.family = strlen(hex) == 8 ? AF_INET : AF_INET6;
        for (i = 0; i < strlen(hex) / 2; i++) {
            sscanf(hex + 2 * i, "%2x", &v);
            e.addr[i] = (unsigned char)v;
        }
        ucspi_ip(&e, 0, out, sizeof out);
        printf("%s ", out);
        ucspi_ip(&e, 1, out, sizeof out);
        printf("%s\n", out);
    }
    return 0;
}
"""


def addresses(seed: int, n: int) -> list[bytes]:
    rnd = random.Random(seed)
    out = [bytes(16), bytes(15) + b"\x01", bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 2]),
           bytes(12) + bytes([1, 2, 3, 4]), b"\x20\x01\x0d\xb8" + bytes(12)]
    for _ in range(n):
        if rnd.random() < 0.1:
            out.append(bytes(rnd.randrange(256) for _ in range(4)))
            continue
        groups = [0 if rnd.random() < 0.45 else rnd.choice([rnd.randrange(1, 16),
                                                            rnd.randrange(1, 65536)])
                  for _ in range(8)]
        out.append(b"".join(g.to_bytes(2, "big") for g in groups))
    return out


def test_ucspi_text_matches_the_model(tmp_path):
    (tmp_path / "driver.c").write_text(DRIVER)
    src = [str(p) for p in harness.WRAP_SOURCES if p.name == "peer.c"]
    exe = tmp_path / "driver"
    subprocess.run(["cc", "-O1", "-I", str(harness.ROOT / "ext" / "wrap"), "-o", str(exe),
                    str(tmp_path / "driver.c"), *src], check=True, timeout=120)
    addrs = addresses(seed=11, n=4000)
    res = subprocess.run([str(exe)], input="\n".join(a.hex() for a in addrs), text=True,
                         capture_output=True, check=True, timeout=60)
    lines = res.stdout.splitlines()
    assert len(lines) == len(addrs)
    mapped = bytes(10) + b"\xff\xff"
    for a, line in zip(addrs, lines, strict=True):
        plain, six = line.split(" ")
        if len(a) == 4:
            assert (plain, six) == (ip4_fmt(a), ip6_fmt(mapped + a)), a.hex()
        elif a.startswith(mapped):
            assert (plain, six) == (ip4_fmt(a[12:]), ip6_fmt(a)), a.hex()
        else:
            assert plain == six == ip6_fmt(a), a.hex()
