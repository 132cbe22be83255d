"""``python -m otf_flows`` is the ``otf`` command."""

import sys

from otf_flows.cli import main

sys.exit(main())
