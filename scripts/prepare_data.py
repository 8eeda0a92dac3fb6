"""Same as `llmkit prepare`: see `python scripts/prepare_data.py --help`."""

import sys

from llmkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
