#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""gloo-allreduce.py: PyTorch gloo all-reduce timed like `tp-bench collectives`.

A reference to compare the tcp plugin with (docs/performance.md), not a test:
it needs python3-torch and is kept out of CI. Run one process per rank with
the launcher that starts tp's own ranks, so both see the same network path:

  OMP_NUM_THREADS=1 tp-launch -n 2 python3 tools/gloo-allreduce.py -b 8 -e 64M
  OMP_NUM_THREADS=1 tp-launch --nodes 2 --link 1gbit -n 2 \
      python3 tools/gloo-allreduce.py --json gloo.json

Rendezvous: TP_RANK/TP_WORLD_SIZE/TP_MASTER_ADDR as tp-launch sets them (or
RANK/WORLD_SIZE/MASTER_ADDR as torchrun does). The store listens on
TP_MASTER_PORT + 1, because tp-launch keeps TP_MASTER_PORT bound for the tp
job it thinks it runs. gloo's own interface is the one holding the master
address's network (lo on 127.0.0.1, eth0 inside an emulated node) unless
GLOO_SOCKET_IFNAME is set.

Timing matches tp-bench: per size, one checked call (every element must be
the rank count), -w untimed then -n timed back-to-back calls; the reported
time is the median over iterations of the slowest rank's time. busbw =
bytes / time x 2(n-1)/n (nccl-tests' all-reduce factor). Output: a table on
rank 0 and, with --json, `collective` records with backend "gloo" in the
fields of tp-bench's (op, dtype, bytes, count, time_us, time_min_us,
time_max_us, algbw_gbps, busbw_gbps, iters, warmup). With --compare FILE (a
tp-bench --json file of the same rank count), the table adds that run's
all_reduce time and the ratio gloo time / tp time (>1: tp is faster).
"""
import argparse
import ipaddress
import json
import os
import socket
import sys
import time


def parse_size(text):
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper()
    if t and t[-1] in mult:
        return int(float(t[:-1]) * mult[t[-1]])
    return int(t)


def env_int(*names):
    for n in names:
        v = os.environ.get(n)
        if v is not None:
            return int(v)
    sys.exit("gloo-allreduce: set %s (tp-launch or torchrun sets it)" % " or ".join(names))


def iface_for(addr):
    """The local interface whose network holds addr (None if unknown)."""
    try:
        out = os.popen("ip -o -4 addr show 2>/dev/null").read()
    except OSError:
        return None
    target = ipaddress.ip_address(addr)
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 4 and f[2] == "inet" and target in ipaddress.ip_network(f[3], strict=False):
            return f[1]
    return None


def tp_times(path, ranks):
    """bytes -> time_us of the all_reduce records of a tp-bench JSON file."""
    out = {}
    with open(path) as fh:
        for line in fh:
            r = json.loads(line)
            if r.get("kind") == "collective" and r.get("op") == "all_reduce" \
                    and r.get("ranks") == ranks:
                out[r["bytes"]] = r["time_us"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-b", "--minbytes", default="8")
    ap.add_argument("-e", "--maxbytes", default="64M")
    ap.add_argument("-f", "--stepfactor", type=int, default=2)
    ap.add_argument("-n", "--iters", type=int, default=20)
    ap.add_argument("-w", "--warmup", type=int, default=5)
    ap.add_argument("--json", help="append collective records here (rank 0)")
    ap.add_argument("--compare", help="tp-bench --json file to put beside (rank 0)")
    a = ap.parse_args()

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    rank = env_int("TP_RANK", "RANK")
    world = env_int("TP_WORLD_SIZE", "WORLD_SIZE")
    addr = os.environ.get("TP_MASTER_ADDR", os.environ.get("MASTER_ADDR", "127.0.0.1"))
    port = env_int("TP_MASTER_PORT", "MASTER_PORT") + 1
    if "GLOO_SOCKET_IFNAME" not in os.environ:
        ifname = iface_for(socket.gethostbyname(addr))
        if ifname:
            os.environ["GLOO_SOCKET_IFNAME"] = ifname
    dist.init_process_group("gloo", init_method="tcp://%s:%d" % (addr, port),
                            rank=rank, world_size=world)

    sizes, s = [], max(4, parse_size(a.minbytes))
    while s <= parse_size(a.maxbytes):
        sizes.append(s)
        s *= a.stepfactor
    ref = tp_times(a.compare, world) if (a.compare and rank == 0) else {}
    out = open(a.json, "a") if (a.json and rank == 0) else None
    if rank == 0:
        print("# gloo all_reduce, %d ranks, torch %s, GLOO_SOCKET_IFNAME=%s" %
              (world, torch.__version__, os.environ.get("GLOO_SOCKET_IFNAME", "")))
        print("%12s %12s %10s %10s%s" % ("size(B)", "time(us)", "algbw", "busbw",
                                         "   tp(us)  gloo/tp" if ref else ""))
    factor = 2.0 * (world - 1) / world if world > 1 else 0.0
    for nbytes in sizes:
        count = nbytes // 4
        x = torch.ones(count, dtype=torch.float32)
        dist.all_reduce(x)
        if not bool((x == float(world)).all()):
            sys.exit("gloo-allreduce: wrong all_reduce result at %d bytes" % nbytes)
        x.zero_()  # timed calls on zeros: no overflow however many iterations
        for _ in range(a.warmup):
            dist.all_reduce(x)
        dist.barrier()
        mine = []
        for _ in range(a.iters):
            t0 = time.perf_counter()
            dist.all_reduce(x)
            mine.append(time.perf_counter() - t0)
        t = torch.tensor(mine, dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)  # slowest rank per iteration
        ts = sorted(t.tolist())
        med = ts[len(ts) // 2]
        algbw = count * 4 / med / 1e9
        if rank != 0:
            continue
        extra = ""
        if count * 4 in ref:
            extra = " %10.1f %8.2f" % (ref[count * 4], med * 1e6 / ref[count * 4])
        print("%12d %12.1f %10.3f %10.3f%s" % (count * 4, med * 1e6, algbw, algbw * factor,
                                              extra))
        if out:
            out.write(json.dumps({
                "kind": "collective", "backend": "gloo", "device": "cpu", "ranks": world,
                "op": "all_reduce", "dtype": "f32", "redop": "sum", "bytes": count * 4,
                "count": count, "time_us": med * 1e6, "time_min_us": ts[0] * 1e6,
                "time_max_us": ts[-1] * 1e6, "algbw_gbps": algbw,
                "busbw_gbps": algbw * factor, "iters": a.iters, "warmup": a.warmup}) + "\n")
    if out:
        out.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
