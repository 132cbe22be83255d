"""The ``otf`` command line.

Exit codes: 0 success, 1 runtime failure, 2 bad input (one line on stderr, no traceback;
``--debug`` shows it), 3 ``otf run`` stopped resumably (SIGTERM, ``--stop-after``; see
:mod:`otf_flows.managers.stopping`), 130 Ctrl-C. Commands live in :mod:`otf_flows.commands`.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import warnings

import click
import typer

import otf_flows.commands.cluster  # noqa: F401
import otf_flows.commands.data  # noqa: F401
import otf_flows.commands.report  # noqa: F401
import otf_flows.commands.runs  # noqa: F401 - registers the commands
from otf_flows.commands import app
from otf_flows.errors import InputError, OtfError
from otf_flows.settings import otf_settings

try:  # typer >= 0.20 vendors its own click
    from typer._click import exceptions as _typer_click
except ImportError:  # pragma: no cover - older typer uses click itself
    _typer_click = click.exceptions

_USAGE_ERRORS = (click.UsageError, _typer_click.UsageError)
_EXITS = (click.exceptions.Exit, getattr(typer, "Exit", click.exceptions.Exit))
_ABORTS = (click.Abort, getattr(typer, "Abort", click.Abort))


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors, exit 2 for bad input, 1 for failures."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    level = otf_settings().log_level or ("DEBUG" if debug else "WARNING")
    if not debug:  # third-party deprecation chatter is not for users; --debug shows it
        for category in (UserWarning, DeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    command = typer.main.get_command(app)
    _TERMINATED.clear()
    # SIGTERM (kill, a batch system's wall-time limit) stops like Ctrl-C: the running campaign
    # records its wall time and "stopped" status and can be resumed.
    if threading.current_thread() is not threading.main_thread():  # signals go to the main thread only
        return _run(command, args, debug)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _run(command, args, debug)
    finally:
        signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived."""


_TERMINATED: list[int] = []


def _terminate(signum, frame):
    _TERMINATED.append(signum)
    raise Terminated()


def _interrupted(err: KeyboardInterrupt) -> int:
    sys.stderr.write("otf: interrupted; continue with `otf run CONFIG --resume`\n")
    return 143 if isinstance(err, Terminated) else 130


def _run(command, args: list[str], debug: bool) -> int:
    try:
        code = command.main(args=args, prog_name="otf", standalone_mode=False)
        if code == 130:  # typer's answer to a KeyboardInterrupt (Ctrl-C, or SIGTERM via _terminate)
            return _interrupted(Terminated() if _TERMINATED else KeyboardInterrupt())
        if isinstance(code, int) and not isinstance(code, bool):
            return code
    except _EXITS as err:
        return getattr(err, "exit_code", 0)
    except _USAGE_ERRORS as err:
        if debug:
            raise
        if type(err).__name__ == "NoArgsIsHelpError":
            sys.stderr.write(err.format_message() + "\n")
            return 2
        where = f" (see `otf {err.ctx.info_name} --help`)" if err.ctx and err.ctx.info_name != "otf" else ""
        sys.stderr.write(f"otf: error: {err.format_message()}{where}\n")
        return 2
    except _ABORTS:
        sys.stderr.write("otf: aborted\n")
        return 130
    except InputError as err:
        if debug:
            raise
        sys.stderr.write(f"otf: error: {err}\n")
        return 2
    except OtfError as err:
        if debug:
            raise
        sys.stderr.write(f"otf: failed: {err}\n")
        return 1
    except KeyboardInterrupt as err:
        return _interrupted(err)
    except Exception as err:  # noqa: BLE001 - last resort: one line, not a traceback
        if debug:
            raise
        sys.stderr.write(f"otf: failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} "
                         "(rerun with --debug for the traceback)\n")
        return 1
    return 0


def entrypoint() -> None:
    """Console-script wrapper."""
    sys.exit(main())
