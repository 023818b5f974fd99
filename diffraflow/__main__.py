"""``python -m diffraflow``: the command line (the same as the ``diffraflow`` command)."""

from diffraflow.flow.cli import console_main

if __name__ == "__main__":
    console_main()
