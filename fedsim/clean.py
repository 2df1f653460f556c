"""``python -m fedsim.clean``: remove what a killed fedsim run left behind.

A run killed with ``kill -9`` cannot stop the processes it started: the local Ray (GCS, raylet,
dashboard and runtime-env agents, workers) or the deployment engine's SuperLink and SuperNodes
live on, and Ray's temporary folder keeps one ``session_*`` folder per start. A fedsim run on the
ray or deployment engine registers its pid in :func:`registry` while it runs, and every process
it starts inherits ``FEDSIM_OWNER=<pid of the run>`` (:func:`fedsim.runner.run` sets both); Ray's
agents get a filtered environment, but they keep files open in the run's Ray session folder,
whose name ends in the pid of the process that started Ray. So this command finds exactly the
processes of runs that are gone — a Ray cluster or Flower processes the user started by hand are
never touched — sends them SIGTERM, then SIGKILL to any still alive after ``--grace`` seconds,
and deletes the Ray session folders no live process uses. ``--dry-run`` lists without acting.
Linux (reads ``/proc``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

OWNER = "FEDSIM_OWNER"


def _pids() -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def _read(pid: int, name: str) -> bytes:
    try:
        return (Path("/proc") / str(pid) / name).read_bytes()
    except OSError:  # gone, or another user's
        return b""


def owner_of(pid: int) -> int | None:
    """The ``FEDSIM_OWNER`` in a process's environment, or None."""
    for item in _read(pid, "environ").split(b"\0"):
        if item.startswith(OWNER.encode() + b"="):
            value = item.split(b"=", 1)[1]
            return int(value) if value.isdigit() else None
    return None


def alive(pid: int) -> bool:
    stat = _read(pid, "stat")
    return bool(stat) and stat.rsplit(b")", 1)[-1].split()[0] != b"Z"  # a zombie is gone


def started_by(owner: int) -> list[int]:
    """The live processes that run ``owner`` started (directly or not), ``owner`` excluded."""
    return [p for p in _pids() if p != owner and owner_of(p) == owner and alive(p)]


def registry() -> Path:
    """The folder where running ray/deployment runs leave a file named by their pid."""
    return Path(tempfile.gettempdir()) / "fedsim-runs"


def register(pid: int, note: str = "") -> Path:
    path = registry() / str(pid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(note + "\n")
    return path


def _session_names(pid: int) -> set[str]:
    """The Ray session folders (names) that ``pid`` holds files open in."""
    out: set[str] = set()
    try:
        fds = list((Path("/proc") / str(pid) / "fd").iterdir())
    except OSError:
        return out
    for fd in fds:
        try:
            match = _SESSION.search(os.readlink(fd))
        except OSError:
            continue
        if match:
            out.add(match.group(0).strip("/"))
    return out


def _session_pids(pid: int) -> set[int]:
    """The pids in the names of the Ray session folders ``pid`` holds files open in (Ray names
    a session after the process that started it)."""
    return {int(name.rsplit("_", 1)[1]) for name in _session_names(pid)}


_SESSION = re.compile(r"/session_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d+_\d+/")


def orphans() -> dict[int, list[int]]:
    """Dead run pid → the live processes it started (marked by ``FEDSIM_OWNER``, or holding
    files in a Ray session that the dead run started)."""
    me = os.getpid()
    dead = {int(p.name) for p in registry().glob("[0-9]*") if not alive(int(p.name))}
    found: dict[int, list[int]] = {}
    for pid in _pids():
        if pid == me or not alive(pid):
            continue
        owner = owner_of(pid)
        if owner is not None and owner != pid and not alive(owner):
            found.setdefault(owner, []).append(pid)
            continue
        for session_owner in _session_pids(pid) & dead:
            found.setdefault(session_owner, []).append(pid)
            break
    return found


def stop(pids: Sequence[int], grace: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL after ``grace`` seconds; the pids that survived both."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.1)
    return [p for p in pids if alive(p)]


def ray_temp_dir() -> Path:
    """Ray's temporary folder (``RAY_TMPDIR`` or the system temp dir, then ``ray``)."""
    return Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray"


def stale_sessions(root: Path | None = None) -> list[Path]:
    """Ray session folders that no live process names on its command line or holds open."""
    root = ray_temp_dir() if root is None else root
    if not root.is_dir():
        return []
    sessions = [p for p in root.glob("session_*") if p.is_dir() and not p.is_symlink()]
    used: set[str] = set()
    for pid in _pids():
        text = _read(pid, "cmdline").replace(b"\0", b" ").decode(errors="replace")
        used.update(s.name for s in sessions if s.name in text)
        used.update(_session_names(pid))
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        used.update(s.name for s in sessions if s.name in cwd)
    return sorted(s for s in sessions if s.name not in used)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedsim.clean", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--dry-run", action="store_true", help="list, do not stop or delete")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds between TERM and KILL")
    parser.add_argument("--ray-tmp", type=Path, default=None, help="Ray's temp folder")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends the listing, not a traceback
    left = orphans()
    for owner, pids in sorted(left.items()):
        print(f"run {owner} (gone) left {len(pids)} process(es): {' '.join(map(str, pids))}")
    survivors = [] if args.dry_run else stop([p for ps in left.values() for p in ps], args.grace)
    if not args.dry_run:
        for entry in registry().glob("[0-9]*"):
            if not alive(int(entry.name)):
                entry.unlink(missing_ok=True)
    sessions = stale_sessions(args.ray_tmp)
    latest = (args.ray_tmp or ray_temp_dir()) / "session_latest"
    if latest.is_symlink() and not latest.exists() and not args.dry_run:
        latest.unlink()  # it pointed at a removed session
    for folder in sessions:
        print(f"{'would remove' if args.dry_run else 'removing'} {folder}")
        if not args.dry_run:
            shutil.rmtree(folder, ignore_errors=True)
    if not left and not sessions:
        print("nothing to clean")
    if survivors:
        print(f"still alive (not ours to kill?): {' '.join(map(str, survivors))}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
