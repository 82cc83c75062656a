import sys

from chronoprice.cli import main

sys.exit(main())
