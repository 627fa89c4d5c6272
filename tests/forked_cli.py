"""Run a stage's command line in a forked child of an interpreter that has imported torch once.

Bad-input tests run many command lines; a fresh `python x.py` per case spends seconds importing
torch each time. A child forked from one warm interpreter starts in milliseconds and still behaves
like the command line: `run_cli(main, argv)`, its stdout and stderr captured, its exit code kept
(an uncaught exception prints its traceback and exits 1, as Python would).
"""

import os
import sys
import tempfile
import traceback

from common.cli import run_cli


def run_forked(main, argv, before=None) -> dict:
    """{"rc", "stdout", "stderr"} of `run_cli(main, argv)` in a forked child; `before()` runs first
    in the child (to inject a fault)."""
    streams = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
    sys.stdout.flush(), sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.dup2(streams[0].fileno(), 1)
        os.dup2(streams[1].fileno(), 2)
        code = 0
        try:
            if before:
                before()
            run_cli(main, argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    out, err = (f.seek(0) or f.read().decode() for f in streams)
    return {"rc": os.waitstatus_to_exitcode(status), "stdout": out, "stderr": err}
