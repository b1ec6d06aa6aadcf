"""The local backend's array parallelism: wait for one of a sweep's N run slots, then become the job.

    python -m vitolaunch.backends.local_slots SLOTS_DIR N TICKET -- COMMAND...

A slot is an flock on `SLOTS_DIR/slot-<k>.lock`, held through a file descriptor that survives `exec`: the job
holds its slot for exactly as long as it runs, and the kernel releases it however the job ends (exit, crash,
SIGKILL), so no slot leaks and no bookkeeping can go stale. Waiters take slots in submission order: `start`
registers `waiting/<TICKET>.<pid>` before it returns (so a job started later always sees it), and a waiter does
not compete while an older ticket's process is still alive.

Standard library only: this runs once per queued trial and must start fast.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time

POLL_S = 0.25
MAX_BACKOFF = 20  # polls of a waiter far back in the queue: at most every POLL_S * MAX_BACKOFF seconds
WAITING = "waiting"
# A waiter whose starter died before registering it registers itself after this long.
REGISTER_TIMEOUT_S = 10.0


def start(slots_dir: str, parallelism: int, command: list[str], ticket: str | None = None, **popen) -> subprocess.Popen:
    """Start COMMAND once one of the `parallelism` slots in `slots_dir` is free; returns at once.

    Tickets default to the time in nanoseconds, zero-padded, so they sort in submission order across sweeps
    and resumes.
    """
    ticket = ticket or f"{time.time_ns():020d}"
    waiting_dir = os.path.join(slots_dir, WAITING)
    os.makedirs(waiting_dir, exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", __name__, slots_dir, str(parallelism), ticket, "--", *command], **popen
    )
    open(_ticket_path(waiting_dir, ticket, process.pid), "w").close()
    return process


def forget(slots_dir: str, pid: int) -> None:
    """Drop the ticket of a waiter that was killed (harmless if left: tickets of dead processes are skipped)."""
    waiting_dir = os.path.join(slots_dir, WAITING)
    suffix = f".{pid}"
    for name in os.listdir(waiting_dir) if os.path.isdir(waiting_dir) else []:
        if name.endswith(suffix):
            try:
                os.unlink(os.path.join(waiting_dir, name))
            except FileNotFoundError:
                pass


def _ticket_path(waiting_dir: str, ticket: str, pid: int) -> str:
    return os.path.join(waiting_dir, f"{ticket}.{pid}")


def main(argv: list[str]) -> None:
    split = argv.index("--")
    slots_dir, parallelism, ticket = argv[0], int(argv[1]), argv[2]
    command = argv[split + 1 :]
    waiting_dir = os.path.join(slots_dir, WAITING)
    # `vitolaunch cancel` sends SIGTERM: leave through `finally` so the ticket goes with the waiter.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    ticket_path = _ticket_path(waiting_dir, ticket, os.getpid())
    # Compete only once registered: a slot taken (and the ticket removed) before `start` wrote the ticket
    # would leave a ticket behind for a live job, and younger waiters would wait for that job to end.
    deadline = time.monotonic() + REGISTER_TIMEOUT_S
    while not os.path.exists(ticket_path):
        if time.monotonic() > deadline:
            os.makedirs(waiting_dir, exist_ok=True)
            open(ticket_path, "w").close()
            break
        time.sleep(0.01)
    try:
        slot = wait_for_slot(slots_dir, parallelism, ticket)
    finally:
        os.unlink(ticket_path)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.set_inheritable(slot, True)
    # The job id is this pid, which the command (submitit's controller, given the log folder with its `%j`)
    # keeps across exec: spelled out here, the controller creates the job's own folder, not one named `%j`.
    job_id = str(os.getpid())
    os.execv(command[0], [arg.replace("%j", job_id) for arg in command])


def wait_for_slot(slots_dir: str, parallelism: int, ticket: str) -> int:
    """An open descriptor holding an exclusive flock on a free slot (blocks until one is free)."""
    waiting_dir = os.path.join(slots_dir, WAITING)
    while True:
        ahead = _waiters_ahead(waiting_dir, ticket)
        if not ahead:
            for index in range(parallelism):
                descriptor = os.open(os.path.join(slots_dir, f"slot-{index}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return descriptor
                except BlockingIOError:
                    os.close(descriptor)
        # Far back in a long queue, look less often: hundreds of waiters must not keep a core busy.
        time.sleep(POLL_S * min(MAX_BACKOFF, 1 + ahead // parallelism))


def _waiters_ahead(waiting_dir: str, ticket: str) -> int:
    """How many tickets are older than ours, or 0 when none of their waiters is alive any more."""
    older = sorted(name for name in os.listdir(waiting_dir) if name.partition(".")[0] < ticket)
    for name in older:  # the oldest is almost always alive: one check, then the count
        if _alive(int(name.partition(".")[2])):
            return len(older)
        try:  # a waiter killed with SIGKILL left its ticket behind
            os.unlink(os.path.join(waiting_dir, name))
        except FileNotFoundError:
            pass
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an exited waiter whose parent has not reaped it yet is a zombie: not waiting any more
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True


if __name__ == "__main__":
    main(sys.argv[1:])
