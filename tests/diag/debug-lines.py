#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""TP_DEBUG lines and TP_DEBUG_FILE (issue 18, item 6).

usage: debug-lines.py TMPDIR TP_MLP TP_LAUNCH
Every debug line reads "host:pid [rank] tp[topic]: ..." with this host's short
name, the pid of the process that wrote it, and the rank whose thread wrote it
(checked against the rank the cpu device names in its own "rank N opened"
line); TP_DEBUG_FILE=path.%h.%p writes one file per process and nothing to
stderr; a file that cannot be opened is a named error, not a silent loss.
"""
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

TIMEOUT_S = 120
tmp, mlp, launch = sys.argv[1:4]
HOST = socket.gethostname().split(".")[0]
LINE = re.compile(r"^(?P<host>[^:\s]+):(?P<pid>\d+) \[(?P<rank>\d+|-)\] tp\[(?P<topic>\w+)\]: "
                  r"(?P<msg>.*)$")
OPENED = re.compile(r"cpu device: rank (\d+) opened")
failures = []
base = {k: v for k, v in os.environ.items()
        if not k.startswith("TP_DEBUG") and k not in ("TP_BACKEND", "TP_WORLD_SIZE")}


def check(name, ok, detail=""):
    print("%s: %s%s" % ("ok  " if ok else "FAIL", name, "" if ok else " -- " + detail))
    if not ok:
        failures.append(name)


def run(argv, env):
    p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, err = p.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        _, err = p.communicate()
    return p.pid, p.returncode, err.decode(errors="replace")


def check_lines(name, text, pids, ranks_opened):
    """Every tp[...] line well-formed; pid in pids; 'rank N opened' on rank N."""
    lines = [l for l in text.splitlines() if "tp[" in l]
    bad = [l for l in lines if not LINE.match(l)]
    check(name + ": debug lines present", len(lines) > 0, text[-2000:])
    check(name + ": every line is 'host:pid [rank] tp[topic]: ...'", not bad, repr(bad[:3]))
    got = [LINE.match(l) for l in lines if LINE.match(l)]
    check(name + ": host is " + HOST, all(m["host"] == HOST for m in got),
          repr({m["host"] for m in got}))
    check(name + ": pid is the writer's", all(int(m["pid"]) in pids for m in got),
          "%r vs %r" % ({m["pid"] for m in got}, pids))
    opened = {}
    for m in got:
        o = OPENED.search(m["msg"])
        if o:
            opened[int(o.group(1))] = m["rank"]
    check(name + ": each rank's line carries its rank",
          sorted(opened) == ranks_opened and all(str(r) == v for r, v in opened.items()),
          repr(opened))
    return got


def loopback_stderr():
    env = dict(base, TP_BACKEND="loopback", TP_DEBUG="launch,device,comm")
    pid, rc, err = run([mlp, "--tp", "3", "--iters", "1"], env)
    check("loopback: exit 0", rc == 0, err[-2000:])
    got = check_lines("loopback", err, {pid}, [0, 1, 2])
    init = [m for m in got if m["topic"] == "launch"]
    check("loopback: init line (no rank thread yet) has rank '-'",
          init and all(m["rank"] == "-" for m in init), repr([m.group(0) for m in init]))


def tcp_files():
    d = os.path.join(tmp, "files")
    os.mkdir(d)
    env = dict(base, TP_BACKEND="tcp", TP_DEBUG="all",
               TP_DEBUG_FILE=os.path.join(d, "dbg.%h.%p.%%"))
    _, rc, err = run([launch, "-n", "2", mlp, "--iters", "1"], env)
    check("tcp files: exit 0", rc == 0, err[-2000:])
    check("tcp files: nothing on stderr", "tp[" not in err, err[-2000:])
    files = sorted(glob.glob(os.path.join(d, "*")))
    names = [os.path.basename(f) for f in files]
    check("tcp files: one file per process, named dbg.HOST.PID.%",
          len(files) == 2 and all(re.fullmatch(r"dbg\.%s\.\d+\.%%" % re.escape(HOST), n)
                                  for n in names), repr(names))
    ranks = []
    for f in files:
        pid = int(os.path.basename(f).split(".")[-2])
        with open(f) as fh:
            got = check_lines("tcp file " + os.path.basename(f), fh.read(), {pid},
                              sorted({int(m) for m in re.findall(r"cpu device: rank (\d+) opened",
                                                                   open(f).read())}))
        ranks += [m["rank"] for m in got if OPENED.search(m["msg"])]
    check("tcp files: ranks 0 and 1, one per file", sorted(ranks) == ["0", "1"], repr(ranks))


def unopenable():
    bad = os.path.join(tmp, "no-such-dir", "dbg.%p")
    env = dict(base, TP_BACKEND="loopback", TP_DEBUG="all", TP_DEBUG_FILE=bad)
    pid, rc, err = run([mlp, "--tp", "2", "--iters", "1"], env)
    want = ["TP_DEBUG_FILE", os.path.join(tmp, "no-such-dir", "dbg.%d" % pid),
            "No such file or directory"]
    check("unopenable file: non-zero exit, named error",
          rc not in (0, None) and 0 < rc < 128 and all(w in err for w in want),
          "rc %r: %s" % (rc, err[-2000:]))
    env.pop("TP_DEBUG")
    _, rc, err = run([mlp, "--tp", "2", "--iters", "1"], env)
    check("TP_DEBUG_FILE without TP_DEBUG is not opened", rc == 0, err[-2000:])


shutil.rmtree(tmp, ignore_errors=True)
os.makedirs(tmp)
loopback_stderr()
tcp_files()
unopenable()
sys.exit(1 if failures else 0)
