"""The sandbox under attack, one property per test: every hostile program is contained, the
evaluator survives, and the run scores as a failure. Timeouts are 1-2 s so the file runs fast."""

from __future__ import annotations

import os
import socket
import sys
import textwrap
import threading
import time

import pytest

from unisd.evaluation.passk import pass_at_k
from unisd.sandbox import ExecutionDisabledError, require_execution, run_python

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox's limits are Linux-specific")


def run(code: str, **kw):
    kw.setdefault("timeout_s", 2.0)
    return run_python(textwrap.dedent(code), **kw)


def test_passing_program():
    r = run("""
        def add(a, b):
            return a + b
        print("hello")
        assert add(2, 3) == 5
    """)
    assert r.passed and r.status == "passed" and r.returncode == 0
    assert r.stdout_tail.strip() == "hello"  # the completion token is stripped from the output
    assert r.network_isolated in (True, False)  # known once the program completed


def test_failing_assert():
    r = run("assert 1 + 1 == 3, 'arithmetic is broken'")
    assert not r.passed and r.status == "failed" and r.returncode == 1
    assert "AssertionError: arithmetic is broken" in r.stderr_tail


def test_syntax_error_fails():
    r = run("def f(:\n    pass")
    assert r.status == "failed" and "SyntaxError" in r.stderr_tail


def test_infinite_loop_is_killed_at_the_timeout():
    start = time.monotonic()
    r = run("while True:\n    pass", timeout_s=1.0)
    assert r.status == "timeout" and not r.passed
    assert time.monotonic() - start < 3.0


def test_ignored_signals_do_not_save_a_loop():
    # SIGKILL cannot be caught, so ignoring SIGTERM, SIGALRM, SIGINT and SIGXCPU changes nothing.
    r = run("""
        import signal
        for s in (signal.SIGTERM, signal.SIGALRM, signal.SIGINT, signal.SIGXCPU, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        while True:
            pass
    """, timeout_s=1.0)
    assert r.status in ("timeout", "killed") and not r.passed


def test_sleeping_child_cannot_outlive_the_timeout():
    start = time.monotonic()
    r = run("import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(30)", timeout_s=1.0)
    assert r.status == "timeout" and time.monotonic() - start < 3.0
    pid = int(r.stdout_tail.split()[0])
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left running
        os.kill(pid, 0)


@pytest.mark.parametrize("code", [
    "import os\nwhile True:\n    os.fork()",
    "import subprocess\nwhile True:\n    subprocess.Popen(['sleep', '30'])",
    "import multiprocessing\nps = [multiprocessing.Process(target=lambda: None) for _ in range(100)]\n"
    "[p.start() for p in ps]",
    "import ctypes\nlibc = ctypes.CDLL(None)\nwhile True:\n    libc.fork()",
    "import _posixsubprocess\n_posixsubprocess.fork_exec()",
    "import os\nos.system('sleep 30')",
])
def test_fork_bombs_are_refused(code):
    start = time.monotonic()
    r = run(code, timeout_s=2.0)
    assert not r.passed and r.status == "failed"
    assert "not allowed" in r.stderr_tail
    assert time.monotonic() - start < 3.0


def test_memory_bomb_raises_memory_error():
    r = run("""
        blocks = []
        while True:
            blocks.append(bytearray(50 * 1024 * 1024))
    """, memory_mb=256)
    assert not r.passed and r.status in ("failed", "killed")
    assert "MemoryError" in r.stderr_tail or r.status == "killed"


def test_cannot_write_or_delete_outside_the_work_dir(tmp_path):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("original")
    attacks = [
        f"open({str(sentinel)!r}, 'w').write('owned')",
        f"open({str(sentinel)!r}, 'a').write('owned')",
        f"import os\nos.remove({str(sentinel)!r})",
        f"import os\nos.unlink({str(sentinel)!r})",
        f"import pathlib\npathlib.Path({str(sentinel)!r}).unlink()",
        f"import posix\nposix.unlink({str(sentinel)!r})",
        f"import shutil\nshutil.rmtree({str(tmp_path)!r})",
        f"import os\nos.rename({str(sentinel)!r}, 'stolen.txt')",
        f"import os\nos.truncate({str(sentinel)!r}, 0)",
        f"import os\nos.chmod({str(sentinel)!r}, 0)",
        f"import os\nos.symlink({str(sentinel)!r}, 'link')\nopen('link', 'w').write('owned')",
        f"import os\nos.link({str(sentinel)!r}, 'hard')\nopen('hard', 'w').write('owned')",
        f"import os\nfd = os.open({str(tmp_path)!r}, os.O_RDONLY)\nos.unlink('sentinel.txt', dir_fd=fd)",
        f"import os\nos.close(os.open({str(tmp_path / 'new.txt')!r}, os.O_CREAT | os.O_WRONLY))",
    ]
    for code in attacks:
        r = run(code)
        assert not r.passed, code
        assert "not allowed" in r.stderr_tail, (code, r.stderr_tail)
    assert sentinel.read_text() == "original"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sentinel.txt"]
    assert os.stat(sentinel).st_mode & 0o777 != 0


def test_files_inside_the_work_dir_are_fine_and_removed_afterwards():
    r = run("""
        import os, tempfile, shutil
        open('scratch.txt', 'w').write('x')
        d = tempfile.mkdtemp()
        open(os.path.join(d, 'a'), 'w').write('y')
        shutil.rmtree(d)
        os.remove('scratch.txt')
        print(os.getcwd())
    """)
    assert r.passed, r.stderr_tail
    workdir = r.stdout_tail.strip()
    assert os.path.basename(workdir).startswith("unisd-sandbox-") and not os.path.exists(workdir)


def test_file_size_limit():
    r = run("open('big.bin', 'wb').write(b'x' * (4 * 1024 * 1024))", max_file_mb=1)
    assert not r.passed and r.status in ("failed", "killed")


def test_network_connection_to_a_local_listener_is_refused():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.1)
    port = server.getsockname()[1]
    accepted = []

    def accept():
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not accepted:
            try:
                accepted.append(server.accept()[0])
            except (socket.timeout, OSError):
                pass

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        for code in (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)",
                     f"import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))",
                     f"import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/', timeout=1)"):
            r = run(code)
            assert not r.passed, code
    finally:
        thread.join()
        server.close()
    assert not accepted, "the sandboxed program reached the listener"


@pytest.mark.parametrize("code", [
    "import os\nos._exit(0)",
    "import sys\nsys.exit(0)",
    "raise SystemExit",
    "exit()",
    "import sys\nsys.stdout.close()",
])
def test_early_exit_with_status_zero_is_not_a_pass(code):
    # The completion token is printed only after the whole program ran.
    r = run(code + "\nassert False, 'never reached'")
    assert not r.passed and r.status in ("incomplete", "failed")


def test_keyboard_interrupt_and_system_exit_do_not_escape():
    for code in ("raise KeyboardInterrupt", "raise SystemExit(3)",
                 "import os, signal\nos.kill(os.getpid(), signal.SIGINT)"):
        r = run(code)
        assert not r.passed and r.status in ("failed", "killed")


def test_output_flood_is_capped():
    r = run("""
        import sys
        while True:
            sys.stdout.write('x' * 65536)
            sys.stderr.write('y' * 65536)
    """, timeout_s=1.0, max_output_bytes=4096)
    assert r.status == "timeout" and not r.passed
    assert len(r.stdout_tail) <= 4096 and len(r.stderr_tail) <= 4096 and r.output_truncated


def test_finite_flood_still_finds_the_completion_token():
    r = run("print('z' * 2_000_000)", max_output_bytes=1024)
    assert r.passed and r.output_truncated and len(r.stdout_tail) <= 1024


def test_cannot_raise_own_limits_or_kill_the_evaluator():
    for code in ("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
                 f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)",
                 f"import os, signal\nos.killpg({os.getpgid(0)}, signal.SIGKILL)",
                 "import os\nos.setsid()"):
        r = run(code)
        assert not r.passed and "not allowed" in r.stderr_tail, code


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("UNISD_SECRET_TOKEN", "hunter2")
    r = run("import os\nprint(sorted(os.environ))\nassert 'UNISD_SECRET_TOKEN' not in os.environ")
    assert r.passed, r.stderr_tail


def test_require_execution_names_the_flag():
    require_execution(True, "mbpp")
    with pytest.raises(ExecutionDisabledError, match="--execute-code"):
        require_execution(False, "mbpp")


def test_pass_at_k():
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - (3 * 2) / (5 * 4))  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(4, 2, 3) == 1.0  # n - c < k
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
