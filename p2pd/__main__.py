import sys

from p2pd.cli.main import main

sys.exit(main())
