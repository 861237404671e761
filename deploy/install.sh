#!/bin/sh
# Install acl on a Debian 12 machine, as root:  sh deploy/install.sh
#
# * Debian packages needed to build the native parts (Cython core, the
#   acl-wrap program, the libnetfilter_queue binding) come from apt.
# * acl itself goes into the running python3 when its pip may install there;
#   under Debian's own python3 (PEP 668 "externally managed") it goes into a
#   virtual environment at /opt/acl and the commands are linked into
#   /usr/local/bin.  Either way `acl` and `acl-wrap` end up on PATH.
# * docs/*.md go to /usr/share/doc/acl, and the manual pages in man/ to
#   /usr/local/share/man (`man acl`; the units' Documentation= lines name
#   both); mandb indexes the pages for whatis/apropos when it is there.
# * deploy/nfqueue/acl-nfqueue-rules goes to /usr/local/sbin, the path
#   docs/operator-guide.md (section 6) and docs/nfqueue.md call it by.
set -eu
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
if command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends \
        build-essential python3-dev python3-venv pkg-config libnetfilter-queue-dev >/dev/null
fi

# pip's own rule (PEP 668): outside a virtual environment, a marker file
# beside the standard library says "externally managed" (Debian's python3
# has it); pip refuses such a python, and so does this script, without
# asking pip to build anything first.  A python3 with no pip takes a venv too.
externally_managed() {
    python3 -c 'import os, sys, sysconfig
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if sys.prefix == sys.base_prefix and os.path.isfile(marker) else 1)'
}
if python3 -m pip --version >/dev/null 2>&1 && ! externally_managed; then
    python3 -m pip install -q --disable-pip-version-check '.[fast]'
else
    python3 -m venv /opt/acl
    /opt/acl/bin/pip install -q --disable-pip-version-check '.[fast]'
    for cmd in acl acl-wrap; do
        [ -e "/opt/acl/bin/$cmd" ] && ln -sf "/opt/acl/bin/$cmd" "/usr/local/bin/$cmd"
    done
fi
hash -r 2>/dev/null || true
# the guides the systemd units' Documentation= lines point at
install -d /usr/share/doc/acl
install -m 0644 docs/*.md /usr/share/doc/acl/
# the manual pages: man acl, man acl-wrap, man acl-policy.toml
install -d /usr/local/share/man/man5 /usr/local/share/man/man8
install -m 0644 man/*.5 /usr/local/share/man/man5/
install -m 0644 man/*.8 /usr/local/share/man/man8/
if command -v mandb >/dev/null 2>&1; then        # whatis and apropos, now
    # whatis reads a directory's index by the name root's manpath gives it
    # (manpath.config's MANDB_MAP), the first name only: on Debian the pages'
    # directory is first /usr/local/man (base-files' link to share/man), whose
    # index is not share/man's.  So index it under every name man knows it by.
    indexed=no
    for dir in $(manpath -q 2>/dev/null | tr : ' '); do
        if [ "$dir" -ef /usr/local/share/man ]; then
            mandb -q "$dir" && indexed=yes
        fi
    done
    [ "$indexed" = yes ] \
        || echo "install.sh: mandb indexed nothing: whatis knows acl after man-db's daily run" >&2
fi
# the NFQUEUE firewall rules (root's tool: sbin)
install -m 0755 deploy/nfqueue/acl-nfqueue-rules /usr/local/sbin/acl-nfqueue-rules
acl --version
