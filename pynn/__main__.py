"""Command line: python -m pynn info | demo | bench | config."""
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
                       help="suites to run: all (default), gemm, ops, train, infer, conv, graph, text, onnx, capi")
    bench.add_argument("--threads", type=_positive_int, default=None,
                       help="run at this thread count only (default: 1 and all cores)")
    bench.add_argument("--quick", action="store_true", help="small shapes, short timings")
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    bench.add_argument("--isa", metavar="PATHS",
                       help="kernel paths to time pynn on, side by side: a comma-separated list "
                            "(the first is the run's path) or all (default: the chosen path)")
    config = commands.add_parser("config", help="compiler and linker flags of the C API (pynn.h, libpynn)")
    config.add_argument("--cflags", action="store_true", help="print -I for pynn.h")
    config.add_argument("--libs", action="store_true", help="print -L, -lpynn and an rpath")
    args = parser.parse_args(argv)
    if args.command == "config":
        return _config(args.cflags, args.libs, parser)
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
                            json_path=args.json, isa=args.isa)
    except ValueError as error:
        parser.error(str(error))


def _config(cflags, libs, parser):
    """The flags of the C library inside the installed package (beside this file)."""
    import os

    package = os.path.dirname(os.path.abspath(__file__))
    include, lib = os.path.join(package, "include"), os.path.join(package, "lib")
    if not (cflags or libs):
        parser.error("config: pass --cflags, --libs or both")
    if not os.path.isfile(os.path.join(include, "pynn.h")) or not os.path.isdir(lib):
        print(f"pynn config: the C API is not built in {package} (pynn/include/pynn.h, "
              "pynn/lib/libpynn.*); build the package, or the library from the source tree "
              "with make -C csrc", file=sys.stderr)
        return 1
    flags = ([f"-I{include}"] if cflags else []) + (
        [f"-L{lib}", "-lpynn", f"-Wl,-rpath,{lib}"] if libs else [])
    print(" ".join(flags))
    return 0


if __name__ == "__main__":
    sys.exit(main())
