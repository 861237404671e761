"""The admin socket's protocol (docs/protocol.md "Admin socket"): one command
per line, a single word in any case; one JSON object per line back.

Only its vocabulary lives here, so that both ends -- acl/serve/server.py,
which answers it, and ``acl query --admin``, which checks a command before
sending it without loading the server -- read the same list.
"""

#: the admin socket's commands, each a line of one word
ADMIN_COMMANDS = ("reload", "stats", "dump")
