"""`python -m services.auth` runs the auth service."""

import sys

from services.auth.main import main

sys.exit(main())
