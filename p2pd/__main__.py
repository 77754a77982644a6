import sys

from p2pd.cli import main

sys.exit(main())
