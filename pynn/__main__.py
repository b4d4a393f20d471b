"""Command line: python -m pynn info | bench."""
import argparse
import sys


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m pynn", description="pynn command line")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="version, compiler, kernel paths and threads")
    bench = commands.add_parser("bench", help="time pynn beside numpy, PyTorch and ONNX Runtime")
    bench.add_argument("suites", nargs="*", default=["all"],
                       help="suites to run: all (default), gemm, ops, train, infer, conv")
    bench.add_argument("--threads", type=_positive_int, default=None,
                       help="run at this thread count only (default: 1 and all cores)")
    bench.add_argument("--quick", action="store_true", help="small shapes, short timings")
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    import pynn

    if args.command == "info":
        pynn.show_config()
        return 0
    from pynn import bench as harness

    try:
        return harness.main(args.suites, threads=args.threads, quick=args.quick,
                            json_path=args.json)
    except ValueError as error:
        parser.error(str(error))


if __name__ == "__main__":
    sys.exit(main())
