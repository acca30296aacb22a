import sys

from ttc.report.cli import main

sys.exit(main())
