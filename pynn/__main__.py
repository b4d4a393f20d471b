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
    demo = commands.add_parser("demo", help="train a baseline, an MLP and a CNN on the bundled digits")
    demo.add_argument("--epochs", type=_positive_int, default=30)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=_positive_int, default=None)
    demo.add_argument("--out", default="pynn-demo", help="folder for the model and plots")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    bench = commands.add_parser("bench", help="time pynn beside numpy, PyTorch and ONNX Runtime")
    bench.add_argument("suites", nargs="*", default=["all"],
                       help="suites to run: all (default), gemm, ops, train, infer, conv, graph, text, onnx")
    bench.add_argument("--threads", type=_positive_int, default=None,
                       help="run at this thread count only (default: 1 and all cores)")
    bench.add_argument("--quick", action="store_true", help="small shapes, short timings")
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    import pynn

    if args.command == "info":
        pynn.show_config()
        return 0
    if args.command == "demo":
        from pynn import demo

        try:
            demo.run(epochs=args.epochs, seed=args.seed, threads=args.threads,
                     out_dir=args.out, quiet=args.quiet)
        except Exception as error:
            print(f"pynn demo failed: {type(error).__name__}: {error}", file=sys.stderr)
            return 1
        return 0
    from pynn import bench as harness

    try:
        return harness.main(args.suites, threads=args.threads, quick=args.quick,
                            json_path=args.json)
    except ValueError as error:
        parser.error(str(error))


if __name__ == "__main__":
    sys.exit(main())
