"""How long a lab ran, from its log of starts, pauses and resumes (docs/results/*.times): the sum of the intervals
from each `start` or `resumed` to the next `paused` or `end`. A session's end killed the run without a line of its
own; there the interval ends at the last `alive` line before the next `start` (the last time the run was seen
running, or the time of the last file it wrote), so the minutes between that and the kill are left out.

    python3 docs/results/wall_time.py docs/results/results-workers.times [UNTIL]   # UNTIL: e.g. 2026-11-26T20:27:27Z
"""
import re
import sys
from datetime import datetime


def active_seconds(lines, until: str | None = None) -> float:
    """Up to the end of the log, or up to `until` (a time the run was running or paused at)."""
    total, running_since, last_alive = 0.0, None, None
    for line in [*lines, *([f"end {until}"] if until else [])]:
        found = re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", line)
        if not found:
            continue
        when, word = datetime.strptime(found.group(), "%Y-%m-%dT%H:%M:%SZ"), line.split()[0]
        if until and when > datetime.strptime(until, "%Y-%m-%dT%H:%M:%SZ"):
            continue
        if word in ("start", "resumed"):
            if running_since is not None and last_alive is not None:  # killed at a session's end
                total += (last_alive - running_since).total_seconds()
            running_since, last_alive = when, None
        elif word in ("paused", "end") and running_since is not None:
            total += (when - running_since).total_seconds()
            running_since = None
        elif word == "alive":
            last_alive = when
    if running_since is not None:
        raise SystemExit(f"the run is still going since {running_since:%H:%M:%SZ}")
    return total


if __name__ == "__main__":
    seconds = active_seconds(open(sys.argv[1]).readlines(), *sys.argv[2:3])
    print(f"active: {seconds / 3600:.2f} h ({seconds / 60:.0f} min)")
