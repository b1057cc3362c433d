"""``python -m app.cli``, as the ``llmtap`` script."""

import sys

from app.cli import main

sys.exit(main())
