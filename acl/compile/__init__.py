"""Model -> flat tables for the core; one module per rule language.

ARCHITECTURE.md names a single ``acl/compile.py``; it is a package instead so
each language's compiler sits beside its own rules (tcpw, tcprules, xinetd)
and stays small.  Compilers are deterministic and do no I/O.
"""
