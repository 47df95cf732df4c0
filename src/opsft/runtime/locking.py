"""One run per output directory: a second opsft job writing into the same directory is refused.

The lock is an flock on `<out>/.opsft.lock`, which holds the owner's process id and command. The
operating system releases it when the process ends, however it ends (kill -9 included), so a lock
never outlives its run. Under `accelerate launch` only the main process (RANK 0) takes it; the other
processes of the same run write their own shards beside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

from .errors import OpsftError

LOCK_FILE = ".opsft.lock"


@contextlib.contextmanager
def output_lock(out: str | Path, command: str):
    """Hold the lock on `out` (created if missing) while the block runs."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / LOCK_FILE).open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            try:
                owner = json.loads(f.read())
                who = f"process {owner['pid']} ({owner['command']}, started {owner['started']})"
            except (ValueError, KeyError, TypeError):
                who = "another process"
            raise OpsftError(f"{out} is in use by another opsft run: {who}; wait for it to finish or use another "
                             f"output directory") from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "command": command,
                            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv}))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
