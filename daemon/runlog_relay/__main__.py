"""``python -m runlog_relay`` is ``runlog-relay``."""

import sys

from runlog_relay.cli import main

sys.exit(main())
