import sys

from promptroute.cli import main

sys.exit(main())
