"""`python -m services.metering` runs the metering service."""

import sys

from services.metering.main import main

sys.exit(main())
