"""`python -m faultwatch` is the `faultwatch` command."""

import sys

from faultwatch.cli import main

sys.exit(main())
