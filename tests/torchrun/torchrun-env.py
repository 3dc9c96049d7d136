#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""torchrun's variables reach the tcp backend (issue 18, item 4).

usage: torchrun-env.py MODE TMPDIR TP_MLP NPY_COMPARE
  MODE hand:     RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT set by hand
                 (no TP_ forms, no TP_BACKEND): 4 processes of tp_mlp agree with
                 loopback; TP_ and torchrun forms that disagree fail naming both;
                 equal ones are accepted.
  MODE torchrun: the same run under `torchrun --nproc-per-node 4 --no-python`
                 (exit 77 when torchrun or torch is missing).
The reference is tp_mlp on loopback (4 threads); npy-compare checks y.npy
within 1e-5 (see tests/tcp/examples-agree.sh for why that bound).
"""
import os
import shutil
import signal
import socket
import subprocess
import sys

TIMEOUT_S = 120
mode, tmp, mlp, compare = sys.argv[1:5]
failures = []
# Every variable a rank could inherit from the test's own environment.
CLEAN = {k: v for k, v in os.environ.items()
         if k not in ("TP_BACKEND", "TP_RANK", "TP_WORLD_SIZE", "TP_MASTER_ADDR",
                      "TP_MASTER_PORT", "TP_MASTER_FD", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                      "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE")}
CLEAN["TP_TCP_SECRET"] = os.urandom(32).hex()


def check(name, ok, detail=""):
    print("%s: %s%s" % ("ok  " if ok else "FAIL", name, "" if ok else " -- " + detail))
    if not ok:
        failures.append(name)


def free_port():
    """Two free consecutive ports on 127.0.0.1 (torchrun's store + tp's master)."""
    for _ in range(50):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        s.close()
        if p < 65535:
            t = socket.socket()
            try:
                t.bind(("127.0.0.1", p + 1))
                return p
            except OSError:
                pass
            finally:
                t.close()
    raise RuntimeError("no two free consecutive ports")


def wait_all(procs):
    """(rc list, stderr list); kills only our own process groups on timeout."""
    rcs, errs = [], []
    for p in procs:
        try:
            _, err = p.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            _, err = p.communicate()
        rcs.append(p.returncode)
        errs.append(err.decode(errors="replace"))
    return rcs, errs


def spawn(argv, env):
    return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def reference(out):
    env = dict(CLEAN, TP_BACKEND="loopback")
    rcs, errs = wait_all([spawn([mlp, "--tp", "4", "--iters", "1", "--save-npy", out], env)])
    if rcs[0] != 0:
        sys.exit("loopback reference failed: " + errs[0])


def agrees(name, out, ref):
    r = subprocess.run([compare, os.path.join(ref, "y.npy"), os.path.join(out, "y.npy"), "1e-5"],
                       capture_output=True, text=True, timeout=TIMEOUT_S)
    check(name + ": y.npy agrees with loopback", r.returncode == 0, r.stdout + r.stderr)


def by_hand(ref):
    port = free_port()
    out = os.path.join(tmp, "hand")
    os.mkdir(out)
    procs = []
    for r in range(4):
        env = dict(CLEAN, RANK=str(r), WORLD_SIZE="4", LOCAL_RANK=str(r),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), TP_DEBUG="launch")
        procs.append(spawn([mlp, "--iters", "1", "--save-npy", out], env))
    rcs, errs = wait_all(procs)
    check("hand: 4 ranks from RANK/WORLD_SIZE/MASTER_*", rcs == [0] * 4, repr(rcs) + errs[0])
    # Without TP_BACKEND, torchrun's variables choose tcp: one job of 4, not 4 jobs.
    for r in range(4):
        want = "backend tcp, device cpu, world 4, local 1 from rank %d" % r
        check("hand: rank %d joined one tcp job of 4" % r, want in errs[r], errs[r][-2000:])
    if rcs == [0] * 4:
        agrees("hand", out, ref)
    # Equal TP_ and torchrun forms are fine: rank 0 alone, world 1.
    env = dict(CLEAN, TP_RANK="0", RANK="0", TP_WORLD_SIZE="1", WORLD_SIZE="1")
    rcs, errs = wait_all([spawn([mlp, "--iters", "1"], env)])
    check("hand: equal TP_RANK and RANK accepted", rcs == [0], errs[0])
    # Disagreeing forms: a named error with both names, non-zero exit.
    for tp_name, alias, a, b in [("TP_RANK", "RANK", "0", "1"),
                                 ("TP_WORLD_SIZE", "WORLD_SIZE", "2", "3"),
                                 ("TP_MASTER_PORT", "MASTER_PORT", "1234", "1235"),
                                 ("TP_MASTER_ADDR", "MASTER_ADDR", "127.0.0.1", "localhost")]:
        env = dict(CLEAN, TP_BACKEND="tcp", **{tp_name: a, alias: b})
        rcs, errs = wait_all([spawn([mlp, "--iters", "1"], env)])
        want = ['%s="%s"' % (tp_name, a), '%s="%s"' % (alias, b), "disagree"]
        check("hand: %s vs %s is an error naming both" % (tp_name, alias),
              0 < rcs[0] < 128 and all(w in errs[0] for w in want), "rc %r: %s" % (rcs[0], errs[0]))


def under_torchrun(ref):
    torchrun = shutil.which("torchrun")
    probe = subprocess.run([torchrun, "--help"], capture_output=True) if torchrun else None
    if not torchrun or probe.returncode != 0:  # its own python must have torch
        print("torchrun or python3-torch is not installed: skipped")
        sys.exit(77)
    for rdzv in (["--master_addr", "127.0.0.1"], ["--rdzv_backend", "c10d"]):
        port = free_port()
        name = "torchrun " + rdzv[1]
        out = os.path.join(tmp, rdzv[1].replace(".", "_"))
        os.mkdir(out)
        if rdzv[1] == "c10d":
            rdzv = rdzv + ["--rdzv_endpoint", "127.0.0.1:%d" % port]
        else:
            rdzv = rdzv + ["--master_port", str(port)]
        # Debian 12's torchrun (torch 1.13 on Python 3.11) fails in to_map()
        # with its default --redirects 0 / --tee 0: Python 3.11 no longer
        # lists the 0 flag Std.NONE, so Std.from_str("0") is None. Any other
        # value works; 2 tees stderr to the console and to log_dir.
        logs = ["--redirects", "2", "--tee", "2", "--log_dir", out + "-logs"]
        argv = [torchrun, "--nproc_per_node", "4", "--no_python"] + rdzv + logs + \
            [mlp, "--iters", "1", "--save-npy", out]
        rcs, errs = wait_all([spawn(argv, dict(CLEAN, TP_DEBUG="launch"))])
        check(name + ": runs", rcs == [0], "rc %r: %s" % (rcs[0], errs[0][-3000:]))
        for r in range(4):  # one tcp job of 4, not 4 jobs of 1
            want = "backend tcp, device cpu, world 4, local 1 from rank %d" % r
            check("%s: rank %d joined one tcp job of 4" % (name, r), want in errs[0], "")
        if rcs == [0]:
            agrees(name, out, ref)


os.makedirs(tmp, exist_ok=True)
shutil.rmtree(tmp)
os.makedirs(tmp)
ref = os.path.join(tmp, "loopback")
os.mkdir(ref)
reference(ref)
(by_hand if mode == "hand" else under_torchrun)(ref)
sys.exit(1 if failures else 0)
