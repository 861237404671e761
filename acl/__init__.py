"""acl: an access-control sidecar that compiles hosts.allow/hosts.deny, tcprules
and xinetd access controls into one fast core."""

__version__ = "0.1.0"
