#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""tp-launch --nodes: emulated nodes in network namespaces, end to end.

usage: test-nodes.py TP_LAUNCH TP_CONFORMANCE NODES_TOPO

Checks: bad --nodes/--link values exit 2 with a message; the tcp backend
across 2 nodes on a 1gbit link passes the conformance all_reduce cases
(checked against a serial reference); ranks on different nodes have
different host names and tp_topology() puts each TP group inside a node;
nothing of a job (namespaces, and with them its veths and bridge) is left
after a normal end, a failed rank, a failed setup, SIGINT, SIGTERM and
SIGKILL of tp-launch (its watcher cleans), and namespaces of dead jobs are
removed at the next start while those of live jobs and foreign names stay.
The root namespace's interfaces are the same before and after.

Exit 77 (skip) with the reason when namespaces cannot be created here.
"""
import os
import re
import signal
import subprocess
import sys
import time

LAUNCH, CONFORMANCE, TOPO = sys.argv[1:4]
NETNS = "/run/netns"
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def run(args, timeout=60, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([LAUNCH] + args, capture_output=True, text=True, timeout=timeout,
                          env=e)


def namespaces():
    try:
        return set(os.listdir(NETNS))
    except FileNotFoundError:
        return set()


def job_names(pid):
    pat = re.compile(r"^tpl%d-(br|n\d+)$" % pid)
    return sorted(n for n in namespaces() if pat.match(n))


def root_links():
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return sorted(re.sub(r"\s+", " ", l.split(":")[1]).strip() for l in out.splitlines())


def left_after(proc_pid, what):
    left = job_names(proc_pid)
    check(not left, "%s: nothing of the job left (found %s)" % (what, left))


def wait_for(cond, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def dead_pid():
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def skip_if_unprivileged():
    r = run(["--nodes", "1", "-n", "1", "true"])
    if r.returncode != 0 and re.search(r"cannot create network namespaces|needs the 'ip'",
                                       r.stderr):
        print("SKIP: tp-launch --nodes cannot run here: %s" % r.stderr.strip())
        sys.exit(77)
    check(r.returncode == 0, "tp-launch --nodes 1 -n 1 true: exit 0 (got %d: %s)" %
          (r.returncode, r.stderr.strip()[-200:]))


def test_bad_flags():
    cases = [["--nodes", "0"], ["--nodes", "abc"], ["--nodes", "-1"], ["--nodes", ""],
             ["--nodes", "99999999999999999999"], ["--nodes", "1.5"], ["--nodes", "3"],
             ["--link", "1gbit"], ["--nodes", "1", "--link", "fast"],
             ["--nodes", "1", "--link", ""], ["--nodes", "1", "--link", "1gbit,fast"],
             ["--nodes", "1", "--link", "0gbit"], ["--nodes", "1", "--link", "-1gbit"],
             ["--nodes", "1", "--link", "1gbit,-1us"], ["--nodes", "1", "--link", "999tbit"],
             ["--nodes", "1", "-a", "127.0.0.1"]]
    before = namespaces()
    for c in cases:
        r = run(c + ["-n", "2", "true"])
        check(r.returncode == 2 and "tp-launch:" in r.stderr,
              "bad flags %s: exit 2 with a message (got %d: %s)" %
              (c, r.returncode, r.stderr.strip()[:120]))
    r = run(["-n", "2", "--nodes"])
    check(r.returncode == 2, "--nodes without a value: exit 2")
    check(namespaces() == before, "bad flags create nothing")


def test_conformance():
    p = subprocess.Popen([LAUNCH, "--nodes", "2", "--link", "1gbit", "-n", "4", CONFORMANCE,
                          "--op", "all_reduce"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=dict(os.environ, TP_BACKEND="tcp"))
    out, _ = p.communicate(timeout=120)
    check(p.returncode == 0 and re.search(r"conformance: [1-9]\d* passed, 0 failed", out),
          "tcp conformance (all_reduce) on 2 nodes at 1gbit, 4 ranks: exit %d, %s" %
          (p.returncode, (re.findall(r"conformance: \d+ passed.*", out) or [out[-300:]])[0]))
    left_after(p.pid, "normal end")


def test_topology():
    p = subprocess.Popen([LAUNCH, "--nodes", "2", "--link", "1gbit", "-n", "4", TOPO, "2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, TP_BACKEND="tcp"))
    out, err = p.communicate(timeout=60)
    check(p.returncode == 0, "nodes-topo on 2 nodes: exit 0 (got %d: %s)" % (p.returncode,
                                                                             err.strip()[-300:]))
    lay = {}
    for m in re.finditer(r"layout rank=(\d+) host=(\S+) node=(\d+) nodes=(\d+) local=(\d+)/(\d+) "
                         r"tp_group=(\d+) tp_rank=(\d+)", out):
        r, host = int(m.group(1)), m.group(2)
        lay[r] = dict(host=host, node=int(m.group(3)), nodes=int(m.group(4)),
                      local=int(m.group(5)), tp_group=int(m.group(7)))
    check(sorted(lay) == [0, 1, 2, 3], "every rank printed its layout (%s)" % sorted(lay))
    if sorted(lay) != [0, 1, 2, 3]:
        return
    hosts = [lay[r]["host"] for r in range(4)]
    check(hosts[0] == hosts[1] and hosts[2] == hosts[3] and hosts[0] != hosts[2],
          "ranks 0,1 share a host name, 2,3 another (blocks): %s" % hosts)
    check(hosts[0] == "tpl%d-n0" % p.pid and hosts[2] == "tpl%d-n1" % p.pid,
          "host names are the nodes' names")
    check(all(lay[r]["nodes"] == 2 and lay[r]["node"] == r // 2 for r in range(4)),
          "tp_topology sees 2 nodes, ranks in blocks")
    check(all(lay[r]["tp_group"] == r // 2 for r in range(4)),
          "TP groups of 2 are inside nodes (group = node)")
    left_after(p.pid, "topology run")


def test_failed_rank():
    p = subprocess.Popen([LAUNCH, "--nodes", "2", "-n", "2", "-g", "0.2", "sh", "-c",
                          'test "$TP_RANK" = 1 && exit 3; sleep 30'],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.communicate(timeout=30)
    check(p.returncode == 3, "a failed rank's status comes back (got %d)" % p.returncode)
    left_after(p.pid, "failed rank")


def test_failed_setup():
    # a delay needs netem: either it works or setup fails, saying why
    p = subprocess.Popen([LAUNCH, "--nodes", "2", "--link", "1gbit,50us", "-n", "2", "true"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = p.communicate(timeout=30)
    check(p.returncode == 0 or (p.returncode == 1 and "netem" in err),
          "--link with a delay: runs, or fails naming netem (got %d: %s)" %
          (p.returncode, err.strip()[-200:]))
    left_after(p.pid, "delay run (%s)" % ("ran" if p.returncode == 0 else "setup failed"))


def test_signal(sig, name):
    p = subprocess.Popen([LAUNCH, "--nodes", "2", "-n", "2", "sleep", "30"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    up = wait_for(lambda: len(job_names(p.pid)) == 3, 10)
    check(up, "%s: the job's 3 namespaces exist while it runs" % name)
    t0 = time.time()
    p.send_signal(sig)
    p.communicate(timeout=30)
    if sig == signal.SIGKILL:  # the watcher cleans, after tp-launch is gone
        wait_for(lambda: not job_names(p.pid), 10)
    want = -sig if sig == signal.SIGKILL else 128 + sig  # the ranks die by the signal
    check(p.returncode == want, "%s: tp-launch exits %d (got %d)" % (name, want, p.returncode))
    left_after(p.pid, "%s (%.2f s)" % (name, time.time() - t0))


def test_stale():
    dead, live = dead_pid(), subprocess.Popen(["sleep", "60"])
    ours = ["tpl%d-br" % dead, "tpl%d-n0" % dead, "tpl%d-n5" % dead]
    keep = ["tpl%d-n0" % live.pid, "tpl%d-x" % dead, "tpl0%d-n0" % dead]
    try:
        for n in ours + keep:
            subprocess.run(["ip", "netns", "add", n], check=True)
        r = run(["--nodes", "1", "-n", "1", "true"])
        check(r.returncode == 0, "a start with stale namespaces around runs")
        have = namespaces()
        check(not (set(ours) & have), "stale namespaces of a dead job removed (left %s)" %
              sorted(set(ours) & have))
        check(set(keep) <= have, "a live job's and foreign names are kept (missing %s)" %
              sorted(set(keep) - have))
    finally:
        for n in ours + keep:
            if n in namespaces():
                subprocess.run(["ip", "netns", "delete", n])
        live.kill()
        live.wait()


def main():
    skip_if_unprivileged()
    links, before = root_links(), namespaces()
    test_bad_flags()
    test_conformance()
    test_topology()
    test_failed_rank()
    test_failed_setup()
    test_signal(signal.SIGINT, "SIGINT")
    test_signal(signal.SIGTERM, "SIGTERM")
    test_signal(signal.SIGKILL, "SIGKILL of tp-launch")
    test_stale()
    check(root_links() == links, "root namespace interfaces unchanged")
    check(namespaces() == before, "namespaces as before (%s vs %s)" % (sorted(namespaces()),
                                                                       sorted(before)))
    print("%d failure(s)" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
