#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""tp-launch --nodes: emulated nodes in network namespaces, end to end.

usage: test-nodes.py TP_LAUNCH TP_CONFORMANCE NODES_TOPO TP_MLP MPI
  MPI: "yes" when the mpi plugin and mpirun are there, else why not

Checks: bad --nodes/--link/--mpi values exit 2 with a message; the tcp
backend across 2 nodes on a 1gbit link passes the conformance all_reduce
cases (checked against a serial reference) and tp_mlp --tp 4 agrees with
its serial reference; ranks on different nodes have different host names
and tp_topology() puts each TP group inside a node; every rank sees
TP_JOB_ID (unique per job), TP_LAUNCH_NODES and TP_LAUNCH_LINK;
nothing of a job (namespaces, and with them its veths and bridge) is left
after a normal end, a failed rank, a failed setup, SIGINT, SIGTERM and
SIGKILL of tp-launch (its watcher cleans), and namespaces of dead jobs are
removed at the next start while those of live jobs and foreign names stay.
The same under --mpi (TP_BACKEND=mpi, Open MPI's mpirun on the nodes):
conformance, tp_mlp, the layout, Open MPI's own choice of transport
(btl_base_verbose: vader/self to ranks on the same node, tcp to the
others), mpirun options after "--" replacing tp-launch's, a failed rank, SIGINT, and kill -9 of tp-launch while the job runs
(then every process that was in the job's namespaces, mpirun and the
daemons included, has ended). Without the plugin or mpirun that part is
skipped, saying why. The root namespace's interfaces are the same before
and after.

Exit 77 (skip) with the reason when namespaces cannot be created here.
"""
import os
import re
import signal
import subprocess
import sys
import time

LAUNCH, CONFORMANCE, TOPO, MLP, MPI = sys.argv[1:6]
NETNS = "/run/netns"
failures = []
MPI_ENV = {"TP_BACKEND": "mpi", "OMPI_ALLOW_RUN_AS_ROOT": "1",
           "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_btl_vader_single_copy_mechanism": "none"}
LAYOUT = re.compile(r"layout rank=(\d+) host=(\S+) node=(\d+) nodes=(\d+) local=(\d+)/(\d+) "
                    r"tp_group=(\d+) tp_rank=(\d+) backend=(\S+) job=(\S+) lnodes=(\S+) "
                    r"link=(\S+)")


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


def launch(args, env, timeout):
    """Run tp-launch ARGS; (pid, exit status, stdout+stderr)."""
    p = subprocess.Popen([LAUNCH] + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=dict(os.environ, **env))
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        out += "\n(test: timed out after %d s)" % timeout
    return p.pid, p.returncode, out


def job_processes(pid):
    """The pids in the job's namespaces now (ip netns pids)."""
    found = set()
    for n in job_names(pid):
        r = subprocess.run(["ip", "netns", "pids", n], capture_output=True, text=True)
        found |= {int(x) for x in r.stdout.split()}
    return found


def alive(pid):
    """Running (not a zombie)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


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


def mode(mpi):
    """(tp-launch options before -n, environment, name) of the tcp or mpi path."""
    return (["--mpi"], MPI_ENV, "mpi") if mpi else ([], {"TP_BACKEND": "tcp"}, "tcp")


def test_conformance(mpi=False):
    opts, env, name = mode(mpi)
    pid, rc, out = launch(["--nodes", "2", "--link", "1gbit"] + opts +
                          ["-n", "4", CONFORMANCE, "--op", "all_reduce"], env, 120)
    check(rc == 0 and re.search(r"conformance: [1-9]\d* passed, 0 failed", out),
          "%s conformance (all_reduce) on 2 nodes at 1gbit, 4 ranks: exit %d, %s" %
          (name, rc, (re.findall(r"conformance: \d+ passed.*", out) or [out[-300:]])[0]))
    left_after(pid, "%s: normal end" % name)


def test_mlp(mpi=False):
    opts, env, name = mode(mpi)
    pid, rc, out = launch(["--nodes", "2"] + opts + ["-n", "4", MLP, "--tp", "4", "--iters", "2"],
                          env, 120)
    agree = re.findall(r"TP vs naive MLP:.*-> (AGREE|MISMATCH)", out)
    check(rc == 0 and agree and all(a == "AGREE" for a in agree),
          "%s tp_mlp --tp 4 on 2 nodes agrees with the serial MLP: exit %d, %s" %
          (name, rc, agree or out[-300:]))
    left_after(pid, "%s: tp_mlp" % name)


def layouts(out):
    """nodes-topo's lines by rank."""
    lay = {}
    for m in LAYOUT.finditer(out):
        lay[int(m.group(1))] = dict(host=m.group(2), node=int(m.group(3)),
                                    nodes=int(m.group(4)), local=int(m.group(5)),
                                    tp_group=int(m.group(7)), backend=m.group(9),
                                    job=m.group(10), lnodes=m.group(11), link=m.group(12))
    return lay


def check_btls(out):
    """Open MPI's choice per peer (btl_base_verbose): vader or self on the
    sender's own node, tcp to another node."""
    uses = re.findall(r"\[([^\]:]+):\d+\] mca: bml: Using (\w+) btl for send to \S+ on node "
                      r"(\S+)", out)
    wrong = [u for u in uses if (u[1] in ("vader", "self")) != (u[0] == u[2])]
    kinds = {u[1] for u in uses}
    check(uses and not wrong and {"vader", "tcp"} <= kinds,
          "mpi: Open MPI sends by vader inside a node and tcp across nodes (%d choices, "
          "wrong: %s, kinds %s)" % (len(uses), wrong[:3], sorted(kinds)))


def test_topology(mpi=False):
    opts, env, name = mode(mpi)
    verbose = ["--", "--mca", "btl_base_verbose", "1", "--"] if mpi else []
    pid, rc, out = launch(["--nodes", "2", "--link", "1gbit"] + opts + ["-n", "4"] + verbose +
                          [TOPO, "2"], env, 60)
    check(rc == 0, "%s: nodes-topo on 2 nodes: exit 0 (got %d: %s)" % (name, rc, out[-300:]))
    lay = layouts(out)
    check(sorted(lay) == [0, 1, 2, 3], "%s: every rank printed its layout (%s)" %
          (name, sorted(lay)))
    if sorted(lay) != [0, 1, 2, 3]:
        return
    hosts = [lay[r]["host"] for r in range(4)]
    check(hosts[0] == hosts[1] and hosts[2] == hosts[3] and hosts[0] != hosts[2],
          "%s: ranks 0,1 share a host name, 2,3 another (blocks): %s" % (name, hosts))
    check(hosts[0] == "tpl%d-n0" % pid and hosts[2] == "tpl%d-n1" % pid,
          "%s: host names are the nodes' names" % name)
    check(all(lay[r]["nodes"] == 2 and lay[r]["node"] == r // 2 for r in range(4)),
          "%s: tp_topology sees 2 nodes, ranks in blocks" % name)
    check(all(lay[r]["tp_group"] == r // 2 for r in range(4)),
          "%s: TP groups of 2 are inside nodes (group = node)" % name)
    check(all(lay[r]["backend"] == name for r in range(4)),
          "%s: the ranks ran the %s backend (%s)" % (name, name, lay[0]["backend"]))
    jobs = {lay[r]["job"] for r in range(4)}
    check(len(jobs) == 1 and re.fullmatch(r"%d\.[0-9a-f]{8}" % pid, jobs.pop()),
          "%s: every rank has the job's TP_JOB_ID (<pid>.<8 hex>): %s" %
          (name, [lay[r]["job"] for r in range(4)]))
    check(all(lay[r]["lnodes"] == "2" and lay[r]["link"] == "1gbit" for r in range(4)),
          "%s: TP_LAUNCH_NODES=2, TP_LAUNCH_LINK=1gbit (%s, %s)" %
          (name, lay[0]["lnodes"], lay[0]["link"]))
    if mpi:
        check_btls(out)
    left_after(pid, "%s: topology run" % name)


def test_job_env():
    """TP_JOB_ID without --nodes, fresh per job; TP_LAUNCH_* only with --nodes."""
    ids = []
    for _ in range(2):
        _, rc, out = launch(["-n", "2", TOPO, "1"], {"TP_BACKEND": "tcp",
                                                     "TP_LAUNCH_NODES": "9",
                                                     "TP_LAUNCH_LINK": "stale"}, 60)
        lay = layouts(out)
        check(rc == 0 and sorted(lay) == [0, 1], "nodes-topo without --nodes: exit %d" % rc)
        ids.append({l["job"] for l in lay.values()})
        check(all(l["lnodes"] == "-" and l["link"] == "-" for l in lay.values()),
              "without --nodes, TP_LAUNCH_NODES/LINK are unset (not an outer job's)")
    check(all(len(i) == 1 for i in ids) and ids[0] != ids[1] and
          all(re.fullmatch(r"\d+\.[0-9a-f]{8}", j) for i in ids for j in i),
          "TP_JOB_ID without --nodes: one per job, <pid>.<8 hex>, new each job (%s)" % ids)
    _, rc, out = launch(["--nodes", "1", "-n", "1", TOPO, "1"], {"TP_BACKEND": "tcp"}, 60)
    lay = layouts(out)
    check(rc == 0 and lay and lay[0]["link"] == "none" and lay[0]["lnodes"] == "1",
          "unshaped: TP_LAUNCH_LINK=none (%s)" % (lay and lay[0]["link"]))


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


def default_signals():
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


def test_signal(sig, name, mpi=False):
    opts, env, mname = mode(mpi)
    name = "%s: %s" % (mname, name)
    # signals default in tp-launch even when this test runs with them
    # ignored (`meson test &` in a script): tp-launch keeps an ignored one
    p = subprocess.Popen([LAUNCH, "--nodes", "2"] + opts + ["-n", "4", "sleep", "30"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, **env), preexec_fn=default_signals)
    # every rank (4 sleeps) plus, under mpi, mpirun and a daemon on node 1
    want_procs = 6 if mpi else 4
    up = wait_for(lambda: len(job_names(p.pid)) == 3 and
                  len(job_processes(p.pid)) >= want_procs, 15)
    procs = job_processes(p.pid)
    check(up, "%s: the job's 3 namespaces and %d processes exist while it runs (%d)" %
          (name, want_procs, len(procs)))
    t0 = time.time()
    p.send_signal(sig)
    p.communicate(timeout=30)
    if sig == signal.SIGKILL:  # the watcher cleans, after tp-launch is gone
        wait_for(lambda: not job_names(p.pid), 10)
    want = -sig if sig == signal.SIGKILL else 128 + sig  # the ranks die by the signal
    check(p.returncode == want, "%s: tp-launch exits %d (got %d)" % (name, want, p.returncode))
    left_after(p.pid, "%s (%.2f s)" % (name, time.time() - t0))
    wait_for(lambda: not any(alive(q) for q in procs), 5)
    check(not any(alive(q) for q in procs), "%s: every process of the job ended (left %s)" %
          (name, [q for q in procs if alive(q)]))


def test_mpi_failed_rank():
    pid, rc, out = launch(["--nodes", "2", "--mpi", "-n", "2", "sh", "-c",
                           'test "$OMPI_COMM_WORLD_RANK" = 1 && exit 3; sleep 30'], MPI_ENV, 60)
    check(rc != 0 and "tp-launch: failed: mpirun" in out,
          "mpi: a failed rank fails the job, named as mpirun's status (got %d)" % rc)
    left_after(pid, "mpi: failed rank")


def test_mpi_flags():
    cases = [(["--mpi", "-n", "2"], "needs --nodes"),
             (["--nodes", "1", "--mpi", "-p", "29500", "-n", "2"], "master-port"),
             (["--nodes", "1", "--mpi", "-n", "2", "--", "--mca", "x", "y"], "no '--' ends"),
             (["--nodes", "1", "--mpi", "-n", "2", "--", "-np", "3", "--"], "-np"),
             (["--nodes", "1", "--mpi", "-n", "2", "--", "--host", "a", "--"], "--host"),
             (["--nodes", "1", "--mpi", "-n", "2", "--", "--mca", "plm_rsh_agent", "ssh", "--"],
              "plm_rsh_agent")]
    before = namespaces()
    for c, says in cases:
        r = run(c + ["true"])
        check(r.returncode == 2 and says in r.stderr,
              "bad --mpi use %s: exit 2 saying '%s' (got %d: %s)" %
              (c, says, r.returncode, r.stderr.strip()[:160]))
    r = run(["--nodes", "1", "--mpi", "-n", "1", "true"], env={"PATH": "/nonexistent"})
    check(r.returncode == 1 and "needs Open MPI's mpirun" in r.stderr,
          "--mpi without mpirun in PATH: exit 1 saying so (got %d: %s)" %
          (r.returncode, r.stderr.strip()[:160]))
    r = run(["--mpi-agent=1", "tpl2-n0", "true"])
    check(r.returncode == 2 and "not for direct use" in r.stderr,
          "the agent mode refuses a host of another job (got %d)" % r.returncode)
    check(namespaces() == before, "bad --mpi uses create nothing")


def test_mpi_user_opts():
    """A user's --mca btl replaces tp-launch's (Open MPI refuses one given twice)."""
    pid, rc, out = launch(["--nodes", "2", "--mpi", "-n", "4", "--", "--mca", "btl", "self,tcp",
                           "--mca", "btl_base_verbose", "1", "--", TOPO, "2"], MPI_ENV, 60)
    kinds = set(re.findall(r"mca: bml: Using (\w+) btl for send", out))
    check(rc == 0 and len(layouts(out)) == 4 and kinds == {"self", "tcp"},
          "mpi: -- --mca btl self,tcp -- replaces tp-launch's btl list (exit %d, btls %s)" %
          (rc, sorted(kinds)))
    left_after(pid, "mpi: user options")


def test_mpi():
    if MPI != "yes":
        print("SKIP (the --mpi part): %s" % MPI, flush=True)
        return
    test_conformance(mpi=True)
    test_mlp(mpi=True)
    test_topology(mpi=True)
    test_mpi_user_opts()
    test_mpi_failed_rank()
    test_signal(signal.SIGINT, "SIGINT", mpi=True)
    test_signal(signal.SIGKILL, "SIGKILL of tp-launch", mpi=True)


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
    test_mpi_flags()
    test_conformance()
    test_mlp()
    test_topology()
    test_job_env()
    test_failed_rank()
    test_failed_setup()
    test_signal(signal.SIGINT, "SIGINT")
    test_signal(signal.SIGTERM, "SIGTERM")
    test_signal(signal.SIGKILL, "SIGKILL of tp-launch")
    test_stale()
    test_mpi()
    check(root_links() == links, "root namespace interfaces unchanged")
    # every job of this test has ended: a new tpl<pid>- namespace whose pid
    # still runs belongs to someone else's job running meanwhile
    def ours(n):
        m = re.match(r"^tpl(\d+)-", n)
        return not (m and os.path.exists("/proc/%s" % m.group(1)))
    new = sorted(n for n in namespaces() - before if ours(n))
    check(not new, "no namespace of the test's jobs left (found %s)" % new)
    print("%d failure(s)" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
