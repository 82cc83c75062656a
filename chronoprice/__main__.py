import sys

from chronoprice.cli.main import main

sys.exit(main())
