import sys

from multillmn.cli import main

sys.exit(main())
