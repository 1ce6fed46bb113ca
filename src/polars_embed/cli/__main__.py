"""``python -m polars_embed.cli``: the ``polars-embed`` command."""

import sys

from .main import main

sys.exit(main())
