"""`python -m gatewayz_metrics inspect URL`: see `gatewayz_metrics._inspect`."""

import sys

from gatewayz_metrics._inspect import main

if __name__ == "__main__":
    sys.exit(main())
