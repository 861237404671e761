"""``python -m acl`` is the ``acl`` command."""

import sys

from acl.cli import main

sys.exit(main())
