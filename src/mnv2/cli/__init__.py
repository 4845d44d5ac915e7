"""The ``mnv2`` command line: ``mnv2 <verb>``, one module a verb (``mnv2.cli.<verb>``), each parsing its
arguments (from its typed config where it has one) and calling the library.

Every failure is one line on stderr. Exit status 2: a user-caused failure (``mnv2: error: ...``: a bad argument,
file or data; an I/O failure such as a full or read-only disk, named as such); 70 (``EX_SOFTWARE``): a bug in mnv2,
one line asking for a report (the traceback only with ``MNV2_DEBUG=1``); 130: interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mnv2.cli.common import Parser, dumps
from mnv2.errors import Mnv2Error

# The verbs in `mnv2 --help`'s order; each is the module mnv2.cli.<name> with add_parser(sub, verb) and run(args).
VERBS = ("models", "summary", "train", "eval", "predict", "convert", "export", "quantize", "bench", "serve")

# Exit statuses: 0 success, 2 a user-caused failure (bad argument, file or data; an I/O failure such as a full or
# read-only disk), 70 (EX_SOFTWARE) a bug in mnv2, 130 interrupted.
EXIT_USER, EXIT_BUG = 2, 70

_dumps = dumps  # the name tests and scripts import


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The whole parser. With ``verb`` (the command line's), flags that come from a config whose module imports
    torch (``train``'s ``TrainConfig``, ``export``'s ``ExportOptions``) are made only for that verb."""
    from mnv2._version import __version__

    parser = Parser(prog="mnv2", description="MobileNetV2 (arXiv:1801.04381) as practical software.")
    parser.add_argument("--version", action="version", version=f"mnv2 {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="<verb>")
    for name in VERBS:
        importlib.import_module(f"mnv2.cli.{name}").add_parser(sub, verb)
    return parser


def _io_message(e: OSError) -> str:
    import errno
    import os

    what = {
        errno.ENOSPC: "no space left on device",
        errno.EROFS: "read-only file system",
        errno.ENOTDIR: "not a directory",
        errno.EISDIR: "is a directory",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.ENOENT: "no such file or directory",
        errno.EEXIST: "file exists",
        errno.EDQUOT: "disk quota exceeded",
    }.get(e.errno, e.strerror or (os.strerror(e.errno) if e.errno else str(e)))
    names = " -> ".join(repr(str(f)) for f in (e.filename, e.filename2) if f is not None)
    return f"{names}: {what}" if names else f"{what} ({e})"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> int:
    """Run ``mnv2`` with ``argv`` (default: the process's arguments); returns the exit status."""
    import os

    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(next((w for w in words if not w.startswith("-")), None))
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args.func, "accepts_any", False):
        args = parser.parse_args(argv)  # the one-line error for unknown flags
    try:
        return args.func(args)
    except Mnv2Error as e:
        print(f"mnv2: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USER
    except BrokenPipeError:  # e.g. `mnv2 summary | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("mnv2: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("mnv2: error: out of memory (try a smaller --batch-size or --resolution)", file=sys.stderr)
        return EXIT_USER
    except OSError as e:
        print(f"mnv2: error: {_one_line(_io_message(e))}", file=sys.stderr)
        return EXIT_USER
    except Exception as e:  # a bug: one line, the traceback only on request
        from mnv2.extras import missing_extra

        advice = missing_extra(e) if isinstance(e, ModuleNotFoundError) else None
        if advice:  # an optional extra not installed (the runtime install has no torch): a user's fix, not a bug
            print(f"mnv2: error: `mnv2 {args.verb}`: {advice}", file=sys.stderr)
            return EXIT_USER
        if os.environ.get("MNV2_DEBUG") == "1":
            import traceback

            traceback.print_exc()
        print(
            f"mnv2: internal error: {type(e).__name__}: {_one_line(e)[:300]} -- this is a bug in mnv2; please report "
            "it with the command line (set MNV2_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return EXIT_BUG
