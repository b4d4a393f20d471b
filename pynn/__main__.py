"""Command line: python -m pynn info."""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pynn", description="pynn command line")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="version, compiler, kernel paths and threads")
    args = parser.parse_args(argv)
    import pynn

    if args.command == "info":
        pynn.show_config()
    return 0


if __name__ == "__main__":
    sys.exit(main())
