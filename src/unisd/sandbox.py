"""Run untrusted (model-written) Python in a separate, resource-limited process and report pass/fail.

Covers: a fresh `python -I` process in its own session and process group, in a new temporary
working directory deleted afterwards; a scrubbed environment; rlimits on address space, CPU time,
processes, file size and core dumps; a wall-clock timeout that SIGKILLs the whole group (and the
child dies if the evaluator does); bounded stdout/stderr capture; its own network namespace when
the kernel allows one; and an in-child guard (an audit hook plus human-eval-style monkeypatches)
that refuses fork/exec/subprocess, kill, setsid, ctypes library loading and calls, socket connects
and name lookups, rlimit changes, and writes, deletes, renames or chmods outside the working
directory. A run passes only if the program exits 0 *and* then prints a random completion token
the runner writes after the code finished, so `os._exit(0)` or `sys.exit(0)` mid-test fail.

Does NOT cover: it is not a security boundary against a determined attacker. No seccomp, chroot,
container or privilege drop: the code runs as the evaluator's user (for root, RLIMIT_NPROC is not
enforced, so only the guard stops fork). The guard is Python-level; C extensions, memory tricks,
`gc`/frame introspection (which can also forge the completion token) or re-created modules can
get around it. Files anywhere can be read; disk use in the working directory is bounded only by
per-file size and time; without the namespace a raw syscall could still reach the network. Linux
only; elsewhere some limits are missing.
"""

from __future__ import annotations

import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

__all__ = ["ExecResult", "ExecutionDisabledError", "run_python", "require_execution", "EXECUTE_HINT"]

EXECUTE_HINT = ("pass --execute-code on the command line (config field eval.execute_code: true) to allow "
                "running model-written code in the unisd sandbox; read unisd.sandbox's docstring for "
                "what it does and does not protect against")


class ExecutionDisabledError(RuntimeError):
    """Scoring needs to execute model-written code, and the user has not opted in."""


def require_execution(execute: bool, task: str) -> None:
    """Raise ExecutionDisabledError unless the caller opted in to running model code."""
    if not execute:
        raise ExecutionDisabledError(f"scoring task {task!r} executes model-written code, which is off by "
                                     f"default; {EXECUTE_HINT}")


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one sandboxed run.

    status: "passed" (exit 0 and the completion token seen), "failed" (non-zero exit, e.g. an
    exception or failed assert), "incomplete" (exit 0 before the code finished: os._exit, sys.exit),
    "timeout" (wall clock; the group was killed), "killed" (ended by a signal: CPU or file-size
    limit, segfault, ...), "error" (the sandbox itself could not run the code).
    """

    passed: bool
    status: str
    stdout_tail: str
    stderr_tail: str
    returncode: int | None
    duration_s: float
    output_truncated: bool = False
    network_isolated: bool | None = None
    """True when the child ran in its own network namespace; None when unknown (it did not finish)."""


_RUNNER_ERROR = 121  # exit status of the runner when it cannot set up the guard (status "error")

# The child-side runner. It reads the completion token from stdin, isolates the network if it can,
# sets the rlimits (here rather than in a preexec_fn, which is unsafe when the evaluator has
# threads, as torch and vLLM do), installs the guard, then execs solution.py in a fresh namespace.
_RUNNER = r'''
import json, os, sys

def _native_setup(parent_pid):
    """The native calls the guard refuses later: die with the evaluator, and isolate the network.
    Returns whether the network namespace was created."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
    except Exception:
        return False
    try:
        libc.prctl(1, 9)  # PR_SET_PDEATHSIG = SIGKILL: no orphan if the evaluator is killed
    except Exception:
        pass
    if os.getppid() != parent_pid:  # the evaluator died before prctl took effect
        os._exit(__RUNNER_ERROR__)
    return _isolate_network(libc)

def _isolate_network(libc):
    # unshare(CLONE_NEWNET): the new namespace has only a down loopback, so connect() fails.
    # Root (CAP_SYS_ADMIN) can do it directly; others need a user namespace too.
    try:
        if libc.unshare(0x40000000) == 0:
            return True
        if os.getuid() == 0:
            return False
        uid, gid = os.getuid(), os.getgid()
        if libc.unshare(0x10000000 | 0x40000000) != 0:
            return False
        # Map our own ids so files we create are still owned by us (an unmapped id gives EOVERFLOW).
        maps = (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1"))
        for name, text in maps:
            try:
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
            except OSError:
                pass
        return True
    except Exception:
        return False

def _count_user_tasks(uid):
    # RLIMIT_NPROC counts every process and thread of the real uid, not just our descendants.
    n = 0
    try:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/status") as f:
                    status = f.read()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if fields.get("Uid", "").split()[:1] == [str(uid)]:
                n += int(fields.get("Threads", "1").strip() or 1)
    except OSError:
        return 0
    return n

def _set_limits(cfg):
    import resource
    def lim(name, value, hard=None):
        r = getattr(resource, name, None)
        if r is None:
            return
        try:
            resource.setrlimit(r, (value, value if hard is None else hard))
        except (ValueError, OSError):
            if sys.platform == "linux":
                raise
    lim("RLIMIT_CORE", 0)
    lim("RLIMIT_FSIZE", cfg["max_file_bytes"])
    lim("RLIMIT_CPU", cfg["cpu_s"], cfg["cpu_s"] + 1)   # SIGXCPU at soft, SIGKILL at hard
    lim("RLIMIT_AS", cfg["memory_bytes"])
    if os.getuid() != 0:  # root ignores RLIMIT_NPROC
        lim("RLIMIT_NPROC", _count_user_tasks(os.getuid()) + cfg["max_processes"])

def _install_guard(workdir):
    import socket, shutil, _posixsubprocess
    root = workdir.rstrip(os.sep) + os.sep

    def deny(what):
        raise PermissionError(f"unisd sandbox: {what} is not allowed")

    def resolve(path, dir_fd=None):
        if isinstance(path, int):
            return os.path.realpath(os.readlink(f"/proc/self/fd/{path}"))
        path = os.fsdecode(os.fspath(path))
        if dir_fd not in (None, -1) and not os.path.isabs(path):
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        return os.path.realpath(path)

    def inside(path, dir_fd=None):
        try:
            p = resolve(path, dir_fd)
        except (OSError, TypeError, ValueError):
            return False
        return p == root[:-1] or p.startswith(root)

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    # event -> (positions of path arguments, positions of their dir_fd arguments)
    path_events = {
        "os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)), "os.mkdir": ((0,), (2,)),
        "os.rename": ((0, 1), (2, 3)), "os.link": ((0, 1), (2, 3)), "os.truncate": ((0,), ()),
        "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)), "os.utime": ((0,), (3,)),
        "os.chflags": ((0,), ()), "os.lchflags": ((0,), ()), "os.setxattr": ((0,), ()),
        "os.removexattr": ((0,), ()), "shutil.rmtree": ((0,), (1,)),
    }
    always_denied = {
        "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.symlink",
        "subprocess.Popen", "os.kill", "os.killpg", "resource.setrlimit", "resource.prlimit",
        "ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.call_function",
        "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
        "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr", "socket.getnameinfo",
    }

    def hook(event, args):
        if event == "open":
            path, flags = args[0], args[2]
            if isinstance(path, int) or path is None:
                return
            if isinstance(flags, int) and flags & write_flags:
                if not inside(path) and os.fsdecode(os.fspath(path)) != os.devnull:
                    deny(f"writing {path!r} (outside the work directory)")
            elif args[1] is None and not inside(path) and os.path.isdir(path):
                deny(f"opening directory {path!r}")  # a dir fd would let dir_fd= calls escape
        elif event in path_events:
            paths, fds = path_events[event]
            for i, p in enumerate(paths):
                fd = args[fds[i]] if i < len(fds) and fds[i] < len(args) else None
                if p < len(args) and args[p] is not None and not inside(args[p], fd):
                    deny(f"{event} on {args[p]!r} (outside the work directory)")
        elif event in always_denied:
            deny(event)
        elif event == "import" and args[0] == "_posixsubprocess" and "_posixsubprocess" not in sys.modules:
            deny("re-importing _posixsubprocess")

    def refuse(what):
        def refused(*a, **k):
            deny(what)
        return refused

    # The human-eval reliability_guard layer: clear errors for the common spellings. The audit hook
    # above is what also catches the C-level and aliased paths (posix.remove, _io.FileIO, ...).
    for name in ("fork", "forkpty", "system", "kill", "killpg", "setsid", "setpgid", "setpgrp",
                 "setuid", "setgid", "chroot", "execv", "execve", "execvp",
                 "execvpe", "execl", "execle", "execlp", "execlpe", "posix_spawn", "posix_spawnp",
                 "spawnv", "spawnve", "spawnl", "spawnle", "popen", "fchdir"):
        if hasattr(os, name):
            setattr(os, name, refuse("os." + name))
    _posixsubprocess.fork_exec = refuse("_posixsubprocess.fork_exec")
    socket.create_connection = refuse("socket.create_connection")
    sys.addaudithook(hook)

def _main():
    cfg = json.loads(sys.argv[1])
    token = sys.stdin.readline().strip()
    workdir = os.path.realpath(cfg["workdir"])
    try:
        os.chdir(workdir)
        # Limits first: a user namespace created afterwards inherits RLIMIT_NPROC as its cap.
        _set_limits(cfg)
        net = _native_setup(cfg["parent_pid"])
        with open(os.path.join(workdir, "solution.py"), encoding="utf-8") as f:
            source = f.read()
        _install_guard(workdir)
    except Exception as e:
        sys.stderr.write(f"unisd sandbox: setup failed: {type(e).__name__}: {e}\n")
        os._exit(__RUNNER_ERROR__)
    sys.argv = ["solution.py"]
    namespace = {"__name__": "__main__", "__file__": "solution.py", "__builtins__": __builtins__}
    exec(compile(source, "solution.py", "exec"), namespace)
    for stream in (sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:
            pass
    os.write(1, f"\n{token} net={int(net)}\n".encode())

_main()
'''.replace("__RUNNER_ERROR__", str(_RUNNER_ERROR))


class _Tail:
    """The last `cap` bytes of a stream, read incrementally so a flood never grows memory."""

    def __init__(self, cap: int):
        self.cap, self.buf, self.truncated = cap, bytearray(), False

    def add(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > self.cap:
            del self.buf[: len(self.buf) - self.cap]
            self.truncated = True


def _kill_group(proc: subprocess.Popen) -> None:
    # Only while the leader is unreaped (we peek with WNOWAIT): then its pid, and hence the group
    # id, cannot have been reused by an unrelated process.
    if proc.returncode is not None:
        return
    for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
        try:
            kill()
        except (ProcessLookupError, PermissionError, OSError):
            pass


def _exited(pid: int) -> bool:
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _scrubbed_env(workdir: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "MALLOC_ARENA_MAX": "2"}  # fewer per-thread malloc arenas: threads cost less address space


def run_python(code: str, *, timeout_s: float = 10.0, memory_mb: int = 1024, cpu_s: float | None = None,
               max_processes: int = 16, max_file_mb: int = 16, max_output_bytes: int = 65536) -> ExecResult:
    """Run `code` as a Python program in the sandbox and report how it ended.

    Args:
        code: the whole program (solution plus tests); it should raise or exit non-zero to fail.
        timeout_s: wall-clock limit; on expiry the process group is SIGKILLed (status "timeout").
        memory_mb: address-space limit (RLIMIT_AS); large allocations raise MemoryError.
        cpu_s: CPU-time limit (RLIMIT_CPU); default ceil(timeout_s) + 1.
        max_processes: extra processes/threads the user may have (RLIMIT_NPROC counts per user;
            not enforced for root). Forking is refused by the guard in any case.
        max_file_mb: largest file the program may write (RLIMIT_FSIZE).
        max_output_bytes: bytes kept from the end of each of stdout and stderr.

    Returns:
        ExecResult; `passed` is True only for exit status 0 with the completion token printed.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    if os.name != "posix":
        raise RuntimeError("unisd.sandbox needs a POSIX system (Linux for all its limits)")
    cpu = int(math.ceil(timeout_s)) + 1 if cpu_s is None else max(1, int(math.ceil(cpu_s)))
    start = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="unisd-sandbox-")
    try:
        with open(os.path.join(workdir, "solution.py"), "w", encoding="utf-8") as f:
            f.write(code)
        runner = os.path.join(workdir, "_unisd_runner.py")
        with open(runner, "w", encoding="utf-8") as f:
            f.write(_RUNNER)
        import json  # local: keeps the module's import surface tiny

        cfg = json.dumps({"workdir": workdir, "parent_pid": os.getpid(), "memory_bytes": int(memory_mb) << 20, "cpu_s": cpu,
                          "max_processes": int(max_processes), "max_file_bytes": int(max_file_mb) << 20})
        token = secrets.token_hex(16)
        try:
            proc = subprocess.Popen([sys.executable, "-I", "-B", "-X", "utf8", "-u", runner, cfg],
                                    cwd=workdir,
                                    env=_scrubbed_env(workdir), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
        except OSError as e:
            return ExecResult(False, "error", "", f"could not start the sandbox: {e}", None,
                              time.monotonic() - start)
        try:
            return _supervise(proc, token, start, timeout_s, max_output_bytes)
        finally:
            _kill_group(proc)
            proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
    finally:
        _remove_tree(workdir)


def _supervise(proc: subprocess.Popen, token: str, start: float, timeout_s: float, cap: int) -> ExecResult:
    try:
        proc.stdin.write((token + "\n").encode())
        proc.stdin.close()
    except (BrokenPipeError, OSError):
        pass
    tails = {proc.stdout.fileno(): _Tail(cap), proc.stderr.fileno(): _Tail(cap)}
    out_tail, err_tail = tails[proc.stdout.fileno()], tails[proc.stderr.fileno()]
    sel = selectors.DefaultSelector()
    for fd in tails:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    deadline = start + timeout_s
    timed_out = exited = False
    drain_until = None
    try:
        while True:
            now = time.monotonic()
            if not exited and _exited(proc.pid):
                exited = True
                _kill_group(proc)  # stray group members must not outlive the program
                drain_until = now + 0.5
            if not sel.get_map():
                if exited:
                    break
                # Both pipes closed but still running: just wait for the exit or the deadline.
                if now >= deadline:
                    timed_out = True
                    break
                time.sleep(min(0.005, max(0.0, deadline - now)))
                continue
            if not exited and now >= deadline:
                timed_out = True
                _kill_group(proc)
                drain_until = now + 0.5
                exited = True
            if drain_until is not None and now >= drain_until:
                break
            limit = (drain_until if drain_until is not None else deadline) - now
            for key, _ in sel.select(timeout=max(0.0, min(limit, 0.05))):
                try:
                    data = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    tails[key.fd].add(data)
                else:
                    sel.unregister(key.fd)
    finally:
        sel.close()
    _kill_group(proc)
    returncode = proc.wait()
    duration = time.monotonic() - start
    stdout = out_tail.buf.decode("utf-8", "replace")
    marker = f"\n{token} net="
    completed = marker in stdout
    network = None
    if completed:
        head, _, rest = stdout.rpartition(marker)
        network = rest[:1] == "1"
        stdout = head + rest[1:].lstrip("\n")
    stderr = err_tail.buf.decode("utf-8", "replace")
    if timed_out:
        status = "timeout"
    elif returncode == _RUNNER_ERROR and "unisd sandbox: setup failed" in stderr:
        status = "error"
    elif returncode == 0:
        status = "passed" if completed else "incomplete"
    elif returncode < 0:
        status = "killed"
    else:
        status = "failed"
    return ExecResult(status == "passed", status, stdout, stderr, returncode, duration,
                      out_tail.truncated or err_tail.truncated, network)


def _remove_tree(path: str) -> None:
    def fix_and_retry(func, p, _exc):
        # The program may have made files or folders read-only; restore write access and retry.
        try:
            os.chmod(os.path.dirname(p) or p, 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=fix_and_retry)
    else:
        shutil.rmtree(path, onerror=fix_and_retry)
