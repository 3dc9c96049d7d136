#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""TP_INTRA_BACKEND=shm end to end: a world on tcp (tp-launch) or mpi
(mpirun), fake nodes, tp_topology() puts groups inside a node on shm and
groups across nodes on the world backend (as TP_DEBUG=comm reports), the
collectives on every group and on a split of the TP group are right
(intra-topo checks the sums), and without the variable nothing changes.

  test-intra.py TP-LAUNCH INTRA-TOPO [MPIRUN]
"""
import atexit
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

launch, topo = sys.argv[1], sys.argv[2]
mpirun = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] else None
failures = []
# Open MPI's shared-memory files go to a folder of this test's own: a job
# that aborts (the disagreeing-ranks case) leaves its vader segments there,
# not in /dev/shm, and the folder goes when the test ends.
vader_dir = tempfile.mkdtemp(prefix="tp-test-intra-", dir="/dev/shm")
atexit.register(shutil.rmtree, vader_dir, True)


def run(argv, env_extra, drop=()):
    env = dict(os.environ)
    for k in drop:
        env.pop(k, None)
    env.update(env_extra)
    env.setdefault("TP_DEVICE", "cpu")
    env["OMPI_MCA_btl_vader_backing_directory"] = vader_dir
    p = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=240, text=True)
    return p.returncode, p.stdout


def expect(cond, what, out):
    if not cond:
        failures.append(what)
        print("FAIL:", what, "\n--- output ---\n" + out[-4000:] + "\n---")
    else:
        print("ok:", what)


def count(pattern, out):
    return len(re.findall(pattern, out, re.M))


def layout_case(name, argv, env, tp_on, dp_on, n=4):
    rc, out = run(argv, dict(env, TP_DEBUG="comm"))
    expect(rc == 0, f"{name}: exit 0 (got {rc})", out)
    expect(count(r"intra-topo rank=\d+ .* ok$", out) == n, f"{name}: {n} ranks checked sums", out)
    expect(count(r"TP group \d+ .* on " + tp_on + r"\b", out) == n, f"{name}: TP groups on {tp_on}",
           out)
    expect(count(r"DP group \d+ .* on " + dp_on + r"\b", out) == n, f"{name}: DP groups on {dp_on}",
           out)
    return out


job = {"TP_JOB_ID": f"intra-{os.getpid()}"}
tcp = [launch, "-n", "4", topo, "2"]
# two fake nodes of two ranks: TP inside a node on shm, DP across on tcp
layout_case("tcp+shm, 2 nodes", tcp,
            dict(job, TP_BACKEND="tcp", TP_INTRA_BACKEND="shm", TP_FAKE_NODES="2"), "shm", "tcp")
# one node: both groups lie inside it, both on shm
layout_case("tcp+shm, 1 node", tcp,
            dict(job, TP_BACKEND="tcp", TP_INTRA_BACKEND="shm", TP_FAKE_NODES="4"), "shm", "shm")
# unset: everything on the world backend, no intra-node backend loaded
out = layout_case("tcp alone", tcp, dict(job, TP_BACKEND="tcp", TP_FAKE_NODES="2"), "tcp", "tcp")
expect("intra-node" not in out, "tcp alone: no intra-node backend mentioned", out)
# a plugin without comm_create is refused, naming the slot
rc, out = run(tcp, dict(job, TP_BACKEND="tcp", TP_INTRA_BACKEND="loopback", TP_FAKE_NODES="2"))
expect(rc != 0 and "comm_create" in out and "TP_INTRA_BACKEND" in out,
       "TP_INTRA_BACKEND=loopback refused naming comm_create", out)
if mpirun:
    mpi = [mpirun, "--oversubscribe", "-n", "4", topo, "2"]
    layout_case("mpi+shm, 2 nodes", mpi,
                dict(TP_BACKEND="mpi", TP_INTRA_BACKEND="shm", TP_FAKE_NODES="2"), "shm", "mpi")
    layout_case("mpi+shm, TP 4 on 1 node", [mpirun, "--oversubscribe", "-n", "4", topo, "4"],
                dict(TP_BACKEND="mpi", TP_INTRA_BACKEND="shm", TP_FAKE_NODES="4"), "shm", "shm")
    # One rank's settings differ (MPMD: `env` sets them for rank 0 only).
    # Every rank must fail with the named reason at once, not wait in the
    # next collective until TP_TIMEOUT_S (60 s here) and abort.
    odd = [("TP_INTRA_BACKEND=shm", dict(TP_BACKEND="mpi", TP_FAKE_NODES="2"),
            "different TP_INTRA_BACKEND settings", "different TP_INTRA_BACKEND settings"),
           ("TP_FAKE_NODES=abc", dict(TP_BACKEND="mpi", TP_FAKE_NODES="2"),
            "TP_FAKE_NODES='abc' is not", "rank 0 of 4 failed before the groups were built")]
    for setting, env, first, others in odd:
        argv = [mpirun, "--oversubscribe", "-n", "1", "env", setting, topo, "2", ":",
                "-n", "3", topo, "2"]
        t0 = time.monotonic()
        rc, out = run(argv, dict(env, TP_TIMEOUT_S="60"), drop=("TP_INTRA_BACKEND",))
        took = time.monotonic() - t0
        name = f"mpi, {setting} on rank 0 only"
        expect(rc != 0 and took < 30, f"{name}: fails in {took:.1f} s (< 30 s)", out)
        # The first rank to fail aborts the job (MPI_Abort), which may kill
        # the others before they print: every line printed must be right.
        said = re.findall(r"rank (\d) failed \(tp_topology: (.*)", out)
        expect(said and all((first if r == "0" else others) in m for r, m in said),
               f"{name}: rank 0 says '{first}', ranks 1-3 '{others}' ({len(said)} said)", out)
print("failures:", len(failures))
sys.exit(1 if failures else 0)
