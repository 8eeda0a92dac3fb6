"""Same as `llmkit push`: see `python scripts/push.py --help`."""

import sys

from llmkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["push", *sys.argv[1:]]))
