"""What every command shares: exit codes for errors, one-line messages, --verbose."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from typing import Callable, Sequence

from .atomic import interrupt, reset_interrupt
from .errors import EXIT_INTERNAL, EXIT_INTERRUPTED, LiarError, UserError


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is a UserError: exit 2 and one line, not the whole usage text."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see `{self.prog} --help`)")


def run_main(prog: str, main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None) -> int:
    """Call `main(argv)` and turn every failure into one stderr line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in args or "-v" in args
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format=f"{prog}: %(message)s")
    reset_interrupt()
    signal.signal(signal.SIGTERM, interrupt)  # clean up temporaries as on Ctrl-C
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where SIGINT is ignored (nohup)
        signal.signal(signal.SIGINT, interrupt)
    try:
        return main(args)
    except LiarError as e:
        if verbose:
            traceback.print_exc()
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; no partial artifact was left", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # a bug: say so in one line, traceback on request
        if verbose:
            traceback.print_exc()
        print(f"{prog}: internal error: {type(e).__name__}: {e} (rerun with --verbose for the "
              "traceback)", file=sys.stderr)
        return EXIT_INTERNAL


def quiet_libraries() -> None:
    """transformers/HF hub chatter is noise on a CLI; real problems still raise."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
