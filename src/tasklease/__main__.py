"""``python -m tasklease`` is the ``tasklease`` command."""

import sys

from tasklease.cli import main

sys.exit(main())
