"""The HumanEval sandbox against hostile completions, each run in one batch next to correct ones.

Hostile code here goes around the Python-level guard on purpose (``posix``, ``_socket``) so that the OS-level
layers (user switch, namespaces, rlimits, process-group/namespace kill) are what is tested. The destructive
cases need the full sandbox, i.e. root (CI runs as root); elsewhere they are skipped, not weakened.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from pathlib import Path

import pytest

from eval.codex_humaneval import execution
from eval.codex_humaneval.evaluate import evaluate_samples, read_problems
from eval.codex_humaneval.execution import SandboxLimits, check_correctness, run_program

REPO = Path(__file__).resolve().parents[2]
PROBLEMS_FILE = REPO / "tests" / "fixtures" / "humaneval" / "problems.jsonl"
ADD_BODY = "    return a + b\n"
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the full sandbox (user switch) needs root; CI runs as root")


def body(code: str) -> str:
    """A completion of Toy/0 (``add``) that runs `code` first and would pass if `code` did no harm."""
    lines = "".join(f"    {line}\n" for line in code.strip("\n").splitlines())
    return lines + ADD_BODY


TEST_FIRST_UID = 64600  # this test's own uid range, apart from evaluations that may run at the same time


def owned_by_test_uids(paths) -> list[str]:
    found = []
    for path in paths:
        try:
            if TEST_FIRST_UID <= os.stat(path).st_uid < TEST_FIRST_UID + 100:
                found.append(str(path))
        except FileNotFoundError:
            pass
    return found


def run_bounded(fn, seconds: float):
    """Run `fn` in a thread; fail (instead of hanging the suite) if it does not return within `seconds`."""
    box = {}
    thread = threading.Thread(target=lambda: box.update(value=fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"evaluation still running after {seconds}s"
    return box["value"]


@pytest.fixture
def problems():
    return read_problems(PROBLEMS_FILE)


@pytest.fixture(scope="module")
def full_sandbox():
    """Skip (visibly) where the container forbids namespaces: there the OS-level layers under test are absent."""
    layers = run_program("x = 1\n", SandboxLimits(), uid=None).layers.split(",")
    missing = [ns for ns in ("network-namespace", "mount-namespace", "pid-namespace") if ns not in layers]
    if missing:
        pytest.skip(f"this machine does not allow {', '.join(missing)} (needs CAP_SYS_ADMIN / unshare)")


@root_only
def test_hostile_completions_cannot_harm_or_interfere(problems, tmp_path, full_sandbox, monkeypatch):
    monkeypatch.setattr(execution, "FIRST_SANDBOX_UID", TEST_FIRST_UID)
    token = uuid.uuid4().hex
    canary = tmp_path / "canary.txt"
    canary.write_text("alive")
    repo_canary = PROBLEMS_FILE.parent / f".canary-{token}"
    repo_canary.write_text("alive")
    escapes = [REPO / f"humaneval-escape-{token}.txt", Path("/tmp") / f"humaneval-escape-{token}.txt",
               tmp_path / f"humaneval-escape-{token}.txt"]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]

    hostile = {
        "infinite_loop": body("while True:\n    pass"),
        "fork_bomb": body("import posix\nwhile True:\n    try:\n        posix.fork()\n"
                          "    except OSError:\n        pass"),
        "escaping_child": body("import posix, time\nif posix.fork() == 0:\n    posix.setsid()\n    time.sleep(300)"),
        "memory_hog": body("blocks = []\nwhile True:\n    blocks.append(bytearray(256 * 1024 * 1024))"),
        "memory_grab": body("grab = bytearray(64 * 1024 ** 3)"),
        "file_size_hog": body("with open('big.bin', 'wb') as f:\n    f.write(b'x' * (200 * 1024 * 1024))"),
        "delete_canary_guarded": body(f"import os\nos.remove({str(canary)!r})"),
        "delete_canary_raw": body(f"import posix\nposix.unlink({str(canary)!r})"),
        "overwrite_canary": body(f"open({str(canary)!r}, 'w').write('dead')"),
        "delete_repo_canary": body(f"import posix\nposix.unlink({str(repo_canary)!r})"),
        "write_repo": body(f"open({str(escapes[0])!r}, 'w').write('escaped')"),
        "write_tmp": body(f"open({str(escapes[1])!r}, 'w').write('escaped')"),
        "unmount_private_tmp": body(f"import ctypes\nctypes.CDLL(None).umount2(b'/tmp', 2)\n"
                                    f"open({str(escapes[1])!r}, 'w').write('escaped')"),
        "write_test_dir": body(f"open({str(escapes[2])!r}, 'w').write('escaped')"),
        "socket_raw": body(f"import _socket\ns = _socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))"),
        "socket_guarded": body(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)"),
        "kill_parent": body("import os, posix\ntry:\n    os.kill(os.getppid(), 9)\nexcept PermissionError:\n    pass\n"
                            "posix.kill(posix.getppid(), 9)\nposix.killpg(posix.getpgid(0), 9)\nposix.kill(-1, 9)"),
        "endless_output": body("import posix\nwhile True:\n    posix.write(1, b'x' * 65536)"),
    }
    correct = {"Toy/0": ADD_BODY, "Toy/1": "    return ' '.join(text.split(' ')[::-1])\n",
               "Toy/2": "    return sum(ch in 'aeiou' for ch in word)\n"}
    samples, expect = [], []  # expect: True (must pass), False (must fail), None (its own result is free)
    for name, completion in hostile.items():
        for task_id, good in correct.items():  # correct samples interleaved with every hostile one
            samples.append({"task_id": task_id, "completion": good, "name": f"correct-{name}"})
            expect.append(True)
        samples.append({"task_id": "Toy/0", "completion": completion, "name": name})
        expect.append(None if name in ("escaping_child", "kill_parent", "write_tmp", "unmount_private_tmp") else False)
    samples.append({"task_id": "Toy/0", "completion": body("import sys\nfor _ in range(40):\n"
                                                           "    sys.stdout.write('y' * 500000)"), "name": "big_output"})
    expect.append(True)
    samples.append({"task_id": "Toy/1", "completion": "    return text\n", "name": "wrong"})
    expect.append(False)

    try:
        metrics, rows = run_bounded(lambda: evaluate_samples(problems, samples, [1], n_workers=4,
                                                             limits=SandboxLimits(timeout=3.0)), seconds=240)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected
    finally:
        listener.close()
        repo_canary_alive = repo_canary.exists() and repo_canary.read_text() == "alive"
        repo_canary.unlink(missing_ok=True)
        escaped = [str(p) for p in escapes if p.exists()]
        for path in escapes:
            path.unlink(missing_ok=True)

    verdicts = {row["name"]: row["result"] for row in rows if not row["name"].startswith("correct-")}
    for row, expected in zip(rows, expect):
        if expected is not None:
            assert row["passed"] is expected, (row["name"], row["task_id"], row["result"])
    assert verdicts["infinite_loop"] == "timed out"
    assert verdicts["fork_bomb"] == "timed out"
    assert verdicts["endless_output"] == "timed out"
    assert "MemoryError" in verdicts["memory_grab"]
    assert "MemoryError" in verdicts["memory_hog"] or verdicts["memory_hog"] == "timed out"  # 2 GiB cap or clock
    assert "File too large" in verdicts["file_size_hog"]  # Python ignores SIGXFSZ: the write fails
    assert "PermissionError" in verdicts["delete_canary_guarded"]
    # The repository is either not writable by the sandbox user (PermissionError) or, when it lies under /tmp as in a
    # CI clone, hidden behind the sandbox's private /tmp (FileNotFoundError); either way the canary below survives.
    for name in ("delete_repo_canary", "write_repo"):
        assert "PermissionError" in verdicts[name] or "FileNotFoundError" in verdicts[name], verdicts[name]
    assert "socket.create_connection is disabled" in verdicts["socket_guarded"]
    assert canary.read_text() == "alive"
    assert repo_canary_alive
    assert escaped == []
    assert owned_by_test_uids(Path("/tmp").glob("humaneval-sandbox-*")) == []  # sandbox folders removed
    assert owned_by_test_uids(p for p in Path("/proc").iterdir() if p.name.isdigit()) == []  # no process left
    fraction_passed = {task: [r["passed"] for r in rows if r["task_id"] == task] for task in correct}
    assert metrics["pass@1"] == pytest.approx(sum(sum(v) / len(v) for v in fraction_passed.values()) / 3)


def test_check_correctness_api(problems):
    good = check_correctness(problems["Toy/0"], ADD_BODY, timeout=3.0, completion_id=7)
    assert good == {"task_id": "Toy/0", "completion_id": 7, "passed": True, "result": "passed"}
    bad = check_correctness(problems["Toy/0"], "    return a - b\n", timeout=3.0, completion_id=8)
    assert bad["passed"] is False and bad["result"] == "failed: AssertionError"
    early_exit = check_correctness(problems["Toy/0"], "    import sys\n    sys.exit(0)\n", timeout=3.0)
    assert early_exit["passed"] is False and "SystemExit" in early_exit["result"]
    for garbage in ("    return a +\n", "    return a + b\x00\n", "    return a + b + '\ud800'\n", "\x17\x01"):
        result = check_correctness(problems["Toy/0"], garbage)  # model output that is not even Python
        assert result["passed"] is False and result["result"].startswith("failed: "), result
    slow = check_correctness(problems["Toy/0"], "    import time\n    time.sleep(30)\n", timeout=0.5)
    assert slow["result"] == "timed out"


def test_programs_see_stdlib_and_can_use_their_own_folder(problems):
    completion = body("import collections, fractions, hashlib, heapq, json, re, statistics\n"
                      "with open('scratch.txt', 'w') as f:\n    f.write('scratch space works')\n"
                      "assert open('scratch.txt').read() == 'scratch space works'")
    assert check_correctness(problems["Toy/0"], completion)["result"] == "passed"
