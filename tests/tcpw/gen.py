"""Random hosts.allow/hosts.deny pairs and queries aimed at libwrap's edges.

Everything is drawn from one ``random.Random(seed)``, so a failing case is
reproduced from its seed.  Addresses cluster around the networks the rules
name, with queries on both sides of every mask boundary.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass, field

# A private /etc/hosts for both sides.  Every name queried resolves to one
# address (tcpdmatch answers once per address).
HOSTS = """127.0.0.1 localhost
::1 ip6-localhost
10.0.0.1 good.example.com good
10.0.0.2 www.example.com
10.0.0.3 example.com
10.0.0.4 Mixed.Example.COM
10.0.0.9 1.2.3.4
10.0.0.9 numrev.example.com
10.0.0.10 plainhost
10.0.0.30 first.example.com dup.example.com
10.0.0.31 dup.example.com ydup.example.com
127.0.0.7 localhost lhseven
192.168.1.5 host5.lan.example.org
192.168.10.5 host10.lan.example.org
172.16.5.4 web.corp.example.net web
10.0.0.11 1.2.3.4.5 digits.example.com
10.0.0.12 300.1.1.1 digits2.example.com
2001:db8::10 six.example.com
2001:db8:1::1 six1.example.com
"""

#: names a query may give as the client (each has exactly one address)
NAMES = ["good.example.com", "good", "www.example.com", "example.com", "Mixed.Example.COM",
         "mixed.example.com", "numrev.example.com", "plainhost", "ydup.example.com", "lhseven",
         "host5.lan.example.org", "host10.lan.example.org", "web.corp.example.net", "web",
         "six.example.com", "six1.example.com", "nosuch.example.com",
         # their verified names are digits and dots, yet no address: a pattern
         # of digits and dots is never compared with a name (spec D.1.12)
         "digits.example.com", "digits2.example.com"]

NETS4 = ["10.0.0.0/8", "10.0.0.0/24", "10.1.0.0/16", "192.168.1.0/24", "192.168.10.0/24",
         "172.16.0.0/12", "1.2.3.0/24", "127.0.0.0/8", "192.168.0.0/16", "10.0.3.0/28"]
NETS6 = ["2001:db8::/32", "2001:db8::/48", "2001:db8:1::/48", "fe80::/10", "::1/128",
         "2001:db8::/64"]

DAEMONS = ["sshd", "ftpd", "in.telnetd", "SSHD", "in.ftpd", "x"]

OPTIONS_OK = ["allow", "deny", "ALLOW", "twist /bin/echo %a", "spawn /bin/true",
              "spawn echo a\\:b", "severity auth.notice", "severity=info", "severity local0.debug",
              "umask 022", "umask 0777", "nice", "nice 5", "nice -3", "linger 10", "keepalive",
              "rfc931", "rfc931 5", "setenv FOO bar baz", "setenv X %d", "banners /nonexistent/dir",
              "aclexec /bin/false", "user root", "user nobody", "group nogroup",
              "user nobody.nogroup", "group root"]
OPTIONS_BAD = ["bogus", "allow yes", "umask 999", "umask 0x1", "severity bogus",
               "severity auth.bogus", "nice x", "linger -1", "rfc931 0", "twist",
               "user nosuchuser", "group nosuchgroup", "setenv a=b c",
               "(/usr/sbin/safe_finger -l @%h | mail root) &", "keepalive 1", "spawn",
               # an octal umask past 0777; a facility that is not one
               "umask 01777", "umask 1000", "severity bogus.info",
               # names syslog knows that libwrap's own tables may not
               "severity authpriv.info", "severity syslog.err", "severity warn",
               "severity mail.none", "severity MAIL.WARNING"]


def _address_only(client: str) -> bool:
    """tcpdmatch sets no client socket address for this client argument: a
    dotted quad (not 255.255.255.255, inet_addr's error value), an IPv6
    literal, or unknown/paranoid."""
    if client.lower() in ("unknown", "paranoid"):
        return True
    try:
        return ipaddress.ip_address(client) != ipaddress.ip_address("255.255.255.255")
    except ValueError:
        return False


@dataclass
class Case:
    seed: int
    allow: bytes | None
    deny: bytes | None
    files: dict[str, str] = field(default_factory=dict)   # /file patterns
    queries: list[tuple[str, str]] = field(default_factory=list)


class Gen:
    def __init__(self, seed: int, file_dir: str):
        self.r = random.Random(seed)
        self.seed = seed
        self.file_dir = file_dir
        self.nets4: list[ipaddress.IPv4Network] = []
        self.nets6: list[ipaddress.IPv6Network] = []
        self.files: dict[str, str] = {}

    # -- addresses -------------------------------------------------------
    def net4(self) -> ipaddress.IPv4Network:
        r = self.r
        base = ipaddress.ip_network(r.choice(NETS4))
        length = r.choice([base.prefixlen, base.prefixlen, r.randint(max(base.prefixlen, 1), 32)])
        addr = int(base.network_address) + r.randrange(base.num_addresses)
        net = ipaddress.ip_network((addr >> (32 - length) << (32 - length), length))
        self.nets4.append(net)
        return net

    def net6(self) -> ipaddress.IPv6Network:
        r = self.r
        base = ipaddress.ip_network(r.choice(NETS6))
        length = r.choice([base.prefixlen, r.randint(base.prefixlen, 128)])
        addr = int(base.network_address) + r.randrange(min(base.num_addresses, 2**64))
        net = ipaddress.ip_network((addr >> (128 - length) << (128 - length), length))
        self.nets6.append(net)
        return net

    def addr4(self) -> str:
        return str(self.net4().network_address + self.r.randrange(4))

    # -- tokens ----------------------------------------------------------
    def v4_prefix_token(self) -> str:
        """``a.``, ``a.b.``, ``a.b.c.`` (now and then without the dot)."""
        r = self.r
        net = self.net4()
        octets = str(net.network_address).split(".")
        n = r.choice([1, 2, 3, max(1, min(3, net.prefixlen // 8))])
        return ".".join(octets[:n]) + r.choice([".", ".", ".", ""])

    def net_mask_token(self, odd: float = 0.2) -> str:
        """``net/mask``, ``net/N``: host bits, octal nets and, with
        probability ``odd``, a mask libwrap reads its own way."""
        r = self.r
        net = self.net4()
        text = str(net.network_address)
        if r.random() < 0.15:
            text = str(net.network_address + r.randrange(1, 4))      # host bits
        if r.random() < 0.1:
            text = ".".join(f"0{int(o):o}" if r.random() < 0.5 else o for o in text.split("."))
        if r.random() < odd:
            mask = r.choice(["0", "33", "8junk", "255.255.255.255", "0.0.0.0",
                             "255.0.0.255", "255.255.0.255", "+16", "-8", "32", "00", "1"])
        elif r.random() < 0.5:
            mask = str(net.netmask)
        else:
            mask = str(net.prefixlen)
        return f"{text}/{mask}"

    def plain_v4_list(self) -> str:
        """A client list of plain IPv4 patterns only: the shape the sidecar's
        fast lane (acl.core.hosts_scan) reads without the full parser."""
        r = self.r
        toks = []
        for _ in range(r.choice([1, 1, 2, 3, 5])):
            k = r.randrange(3)
            toks.append(self.addr4() if k == 0 else self.v4_prefix_token() if k == 1
                        else self.net_mask_token(odd=0.35))
        return "".join(t + r.choice([" ", ", ", ",", "\t"]) for t in toks[:-1]) + toks[-1]

    def host_token(self, depth: int = 0) -> str:
        r = self.r
        k = r.randrange(40)
        if k < 6:
            return self.addr4()
        if k < 10:
            return self.v4_prefix_token()
        if k < 16:
            return self.net_mask_token()
        if k < 19:
            return r.choice([".1", ".5", ".0.1", ".example.com", ".lan.example.org", ".com",
                             ".EXAMPLE.COM", ".", ".corp.example.net", "10.0.0.1."])
        if k < 23:
            return r.choice(["10.0.?.1", "192.168.1.*", "*.example.com", "*", "?*", "192.168.?.5",
                             "10.*.1", "*example*", ".exam*", "2001?db8??10", "[2001:db8::*]",
                             "WWW.*", "h*t5.*", "1?.0.0.*"])
        if k < 27:
            return r.choice(["good.example.com", "GOOD.example.COM", "www.", "plainhost",
                             "example.com", "numrev.example.com", "mixed.example.com", "web",
                             "dup.example.com", "ydup.example.com", "localhost", "lhseven",
                             "host5.lan.example.org", "six.example.com", "web.corp.example.net",
                             "1.2.3.4.5", "300.1.1.1", "300.", "digits.example.com"])
        if k < 31:
            return r.choice(["ALL", "KNOWN", "LOCAL", "UNKNOWN", "PARANOID", "all", "known",
                             "unknown", "paranoid", "Local"])
        if k < 35:
            r6 = r.randrange(6)
            if r6 == 0:
                net = self.net6()
                return f"[{net.network_address}]"
            if r6 == 1:
                net = self.net6()
                text = net.network_address.exploded if r.random() < 0.3 else str(net.network_address)
                return f"[{text.upper() if r.random() < 0.3 else text}]/{net.prefixlen}"
            if r6 == 2:
                return r.choice(["[::1]", "[2001:DB8:0::10]", "[::ffff:10.0.0.1]",
                                 "[::ffff:0.0.0.0]/96", "[::]/0", "[2001:db8::]/129"])
            return f"[{self.net6().network_address + r.randrange(3)}]"
        if k < 37 and depth == 0:
            user = r.choice(["root", "ALL", "KNOWN", "UNKNOWN", "r*t", "bob", "ROOT"])
            return f"{user}@{self.host_token(1)}"
        if k < 39 and depth < 2:
            path = f"{self.file_dir}/list{len(self.files)}"
            self.files[path] = ""
            if r.random() < 0.15:
                return path + ".missing"
            body = " ".join(self.host_token(depth + 1) for _ in range(r.randint(1, 4)))
            if r.random() < 0.3:
                body = "# EXCEPT " + body + "\n2001:db8::10\n"
            if r.random() < 0.15:
                # a NUL byte ends fscanf's token as a C string
                cut = r.randrange(len(body) + 1)
                body = body[:cut] + "\0" + r.choice(["junk", "", "*", "10.0.0.1"]) + body[cut:]
            self.files[path] = body + "\n"
            return path
        return r.choice(["@nosuchgroup", "192.168.1", "012.0.0.1", "10.0.0.01", "1.2.3.4.5"])

    def daemon_token(self) -> str:
        r = self.r
        k = r.randrange(20)
        if k < 8:
            return r.choice(DAEMONS)
        if k < 11:
            return "ALL"
        return r.choice(["ssh*", "?tpd", ".telnetd", "in.", "KNOWN", "0", "22", "sshd@127.0.0.1",
                         "ALL@127.", "ftpd@[::1]", "sshd@localhost", "ALL@LOCAL", "ALL@KNOWN",
                         "sshd@UNKNOWN", "in.*", "SSHD@127.0.0.1", "all", "unknown", "+0",
                         "in.telnetd@[::1]/128"])

    def plist(self, make) -> str:
        r = self.r
        seps = [" ", ", ", ",", "\t", " , "]
        toks = [make() for _ in range(r.choice([1, 1, 1, 2, 3]))]
        if r.random() < 0.25:
            toks.append(r.choice(["EXCEPT", "except", "Except"]))
            toks += [make() for _ in range(r.choice([0, 1, 1, 2]))]
            if r.random() < 0.3:
                toks.append("EXCEPT")
                toks.append(make())
        if r.random() < 0.03:
            toks.insert(0, "EXCEPT")
        out = toks[0]
        for t in toks[1:]:
            out += r.choice(seps) + t
        return out

    def options(self, bad: float = 0.2) -> str:
        r = self.r
        n = r.choice([1, 1, 2, 3])
        opts = [r.choice(OPTIONS_BAD if r.random() < bad else OPTIONS_OK) for _ in range(n)]
        text = ": ".join(opts)
        if r.random() < 0.05:
            text += ":"
        return text

    def rule(self) -> str:
        r = self.r
        d = self.plist(self.daemon_token)
        c = self.plist(self.host_token) if r.random() < 0.85 else self.plain_v4_list()
        sp = r.choice([": ", ":", " : ", "\t:\t"])
        line = d + sp + c
        if r.random() < 0.25:
            line += r.choice([": ", " : ", ":"]) + self.options()
        k = r.random()
        if k < 0.08 and len(line) > 3:
            cut = r.randrange(1, len(line))
            line = line[:cut] + "\\\n" + line[cut:]
        if r.random() < 0.03:
            line = "   " + line
        return line

    def file_text(self, nrules: int) -> bytes | None:
        r = self.r
        if r.random() < 0.04:
            return None
        lines = []
        for _ in range(nrules):
            k = r.random()
            if k < 0.05:
                lines.append(r.choice(["# comment", "#ALL: ALL", "# comment \\", "", "   ",
                                       "  # ALL: ALL", "sshd ALL", "ALL: ::1", "\t"]))
            lines.append(self.rule())
        eol = "\r\n" if r.random() < 0.05 else "\n"
        text = eol.join(lines) + eol
        k = r.random()
        if k < 0.03:
            text = text.rstrip("\r\n")           # no final newline
        elif k < 0.04:
            text = "sshd: " + ", ".join(["10.0.0.99"] * 200) + "\n" + text   # too long
        return text.encode("latin-1")

    def queries(self, n: int) -> list[tuple[str, str]]:
        out = []
        for _ in range(n):
            out.append((self.query_daemon(), self.query_client()))
        return out

    def query_daemon(self) -> str:
        r = self.r
        k = r.random()
        if k < 0.85:
            return r.choice(DAEMONS + ["telnetd", "in.telnetd"])
        return r.choice(["sshd@127.0.0.1", "ftpd@::1", "sshd@127.0.0.7", "in.telnetd@127.0.0.1",
                         "sshd@unknown", "/usr/sbin/sshd", "sshd@localhost"])

    def near(self) -> str:
        """An address at, just inside or just outside a rule's network."""
        r = self.r
        if self.nets6 and r.random() < 0.2:
            net = r.choice(self.nets6)
            pick = r.choice([0, 1, -1, net.num_addresses - 1, net.num_addresses])
            v = (int(net.network_address) + pick) % 2**128
            return str(ipaddress.IPv6Address(v))
        net = r.choice(self.nets4) if self.nets4 else self.net4()
        pick = r.choice([0, 1, -1, net.num_addresses - 1, net.num_addresses,
                         r.randrange(net.num_addresses)])
        v = (int(net.network_address) + pick) % 2**32
        return str(ipaddress.IPv4Address(v))

    def query_client(self) -> str:
        r = self.r
        k = r.random()
        if k < 0.62:
            c = self.near()
        elif k < 0.70:
            c = self.near()
            if ":" not in c:
                c = ("::ffff:" if r.random() < 0.8 else "::FFFF:") + c
        elif k < 0.84:
            c = r.choice(NAMES)
        elif k < 0.88:
            c = r.choice(["unknown", "paranoid", "UNKNOWN", "Paranoid"])
        elif k < 0.92:
            c = r.choice(["010.0.0.1", "10.0.0.01", "192.168.001.5", "255.255.255.255",
                          "0.0.0.0", "::1", "::", "2001:DB8::10", "10.0.3.11", "10.0.3.1"])
        else:
            c = self.near()
        if r.random() < 0.08:
            user = r.choice(["root", "bob", "ROOT", "unknown", ""])
            if not user and not _address_only(c):
                # an empty user is looked up (ident, RFC 931) when tcpdmatch
                # has both socket addresses: never ask that of the network
                user = "unknown"
            c = user + "@" + c
        return c

    def options_case(self, nrules: int) -> Case:
        """One rule per client address, each with a generated option list
        (half of its options bad), in both files: every rule decides
        exactly one query, so each option list is asked of tcpdmatch."""
        addrs = [f"198.18.{i // 200}.{i % 200}" for i in range(nrules)]
        lines = [f"sshd: {a}: {self.options(bad=0.5)}\n" for a in addrs]
        half = nrules // 2
        return Case(self.seed, "".join(lines[:half]).encode(), "".join(lines[half:]).encode(),
                    {}, [("sshd", a) for a in addrs])

    def case(self, nrules_allow: int, nrules_deny: int, nqueries: int) -> Case:
        allow = self.file_text(nrules_allow)
        deny = self.file_text(nrules_deny)
        return Case(self.seed, allow, deny, dict(self.files), self.queries(nqueries))
