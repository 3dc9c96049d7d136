#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Faults the tools must report, not hide: out of memory, a full disk, an
output path that is a symlink or a special file, an unwritable output
path (refused before the run).

usage: cli-faults.py --tmp DIR NAME=PATH...  (tp-bench, tp_linear, tp_mlp,
tp_attention, tp_transformer). CLI_SWEEP_AS_LIMIT=0 (sanitizer builds)
skips the out-of-memory cases, which need an address-space limit.
Exit 0 if every case behaved, 1 otherwise (one line per failure).
"""
import os
import resource
import signal
import stat
import subprocess
import sys
import threading
import time

TIMEOUT_S = 60
BENCH_QUICK = ["collectives", "--tp", "2", "-e", "256", "-n", "2", "-w", "0", "--no-memcpy",
               "-q"]
failures = []


def run(argv, as_limit_kib=None, stdout=subprocess.PIPE):
    def pre():
        if as_limit_kib:
            lim = as_limit_kib * 1024
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE,
                         start_new_session=True, preexec_fn=pre)
    try:
        out, err = p.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # its own session: only what it started
        out, err = p.communicate()
        return "hang", out, err.decode(errors="replace"), time.monotonic() - t0
    out = out.decode(errors="replace") if out is not None else ""
    return p.returncode, out, err.decode(errors="replace"), time.monotonic() - t0


def check(name, ok, detail):
    print("%s: %s%s" % ("ok  " if ok else "FAIL", name, "" if ok else " -- " + detail))
    if not ok:
        failures.append(name)


def expect_error(name, argv, needles, rc_want=None, no_stdout=False, **kw):
    """A named error: non-zero exit (rc_want if given), not a signal, every
    needle in stderr; no_stdout: nothing ran (no result printed)."""
    rc, out, err, secs = run(argv, **kw)
    why = []
    if rc == "hang":
        why.append("hung (> %d s)" % TIMEOUT_S)
    elif rc < 0 or rc > 128:
        why.append("signal (rc %d)" % rc)
    elif rc == 0:
        why.append("exit 0")
    elif rc_want is not None and rc != rc_want:
        why.append("exit %d, expected %d" % (rc, rc_want))
    for n in needles:
        if n not in err:
            why.append("stderr lacks %r" % n)
    if no_stdout and out.strip():
        why.append("it ran before refusing (stdout: %r)" % out.strip()[:80])
    check(name, not why, "; ".join(why) + " | stderr: " + err.strip()[-300:])
    return secs


def bench_output_cases(bench, tmp):
    # --json to a full disk: non-zero, naming the file
    expect_error("bench --json /dev/full fails naming the file",
                 [bench] + BENCH_QUICK + ["--json", "/dev/full"], ["/dev/full", "No space left"],
                 rc_want=1)
    # standard output on a full disk
    with open("/dev/full", "wb") as full:
        rc, _, err, _ = run([bench] + BENCH_QUICK, stdout=full)
    check("bench with stdout on /dev/full fails", rc == 1 and "standard output" in err,
          "rc %s, stderr %r" % (rc, err.strip()[-200:]))
    # --csv through a symlink: the link stays, its target gets the CSV
    target, link = os.path.join(tmp, "target.csv"), os.path.join(tmp, "link.csv")
    with open(target, "w") as f:
        f.write("old\n")
    os.symlink(target, link)
    rc, _, err, _ = run([bench] + BENCH_QUICK + ["--csv", link])
    with open(target) as f:
        body = f.read()
    check("bench --csv SYMLINK writes through the link",
          rc == 0 and os.path.islink(link) and body.startswith("kind,"),
          "rc %s, link kept %s, target starts %r | %s" % (rc, os.path.islink(link), body[:20],
                                                          err.strip()[-200:]))
    # --csv to a file with two names: both see the new CSV
    a, b = os.path.join(tmp, "a.csv"), os.path.join(tmp, "b.csv")
    with open(a, "w") as f:
        f.write("old\n")
    os.link(a, b)
    rc, _, _, _ = run([bench] + BENCH_QUICK + ["--csv", a])
    with open(b) as f:
        body = f.read()
    check("bench --csv on a hard-linked file keeps the link", rc == 0 and body.startswith("kind,"),
          "rc %s, other name starts %r" % (rc, body[:20]))
    # --csv to a FIFO: still a FIFO after, the reader got the CSV
    fifo = os.path.join(tmp, "out.fifo")
    os.mkfifo(fifo)
    got = []

    def reader():
        with open(fifo, "rb") as f:
            got.append(f.read())
    threading.Thread(target=reader, daemon=True).start()  # never joined if the FIFO is replaced
    rc, _, err, _ = run([bench] + BENCH_QUICK + ["--csv", fifo])
    time.sleep(0.5)
    fifo_ok = stat.S_ISFIFO(os.lstat(fifo).st_mode)
    check("bench --csv FIFO writes into the FIFO",
          rc == 0 and fifo_ok and got and got[0].startswith(b"kind,"),
          "rc %s, still a FIFO %s, reader got %r | %s" % (rc, fifo_ok, got[0][:20] if got else
                                                          None, err.strip()[-200:]))
    # --csv /dev/null: only when the FIFO case shows special files are
    # written in place (a tool that replaces them would replace /dev/null)
    if fifo_ok:
        rc, _, err, _ = run([bench] + BENCH_QUICK + ["--csv", "/dev/null"])
        check("bench --csv /dev/null leaves the device",
              rc == 0 and stat.S_ISCHR(os.lstat("/dev/null").st_mode),
              "rc %s, /dev/null is a character device: %s" % (
                  rc, stat.S_ISCHR(os.lstat("/dev/null").st_mode)))
    else:
        check("bench --csv /dev/null leaves the device", False,
              "not run: the FIFO case shows this tp-bench replaces special files")
    # unwritable paths are refused before the run (usage error, no table)
    for flag in ["--json", "--csv"]:
        bad = os.path.join(tmp, "missing-dir", "x")
        expect_error("bench %s in a missing directory refused before the run" % flag,
                     [bench] + BENCH_QUICK[:1] + ["--tp", "2", "-e", "256", "-n", "2", "-w", "0",
                                                  "--no-memcpy", flag, bad],
                     [flag, bad], rc_want=2, no_stdout=True)
        expect_error("bench %s DIRECTORY refused before the run" % flag,
                     [bench] + BENCH_QUICK + [flag, tmp], [flag, "directory"], rc_want=2,
                     no_stdout=True)


def example_path_cases(exes, tmp):
    quick = {"tp_linear": ["--tp", "2", "--iters", "1"], "tp_mlp": ["--tp", "2", "--iters", "1"],
             "tp_attention": ["--tp", "2", "--iters", "1"],
             "tp_transformer": ["--tp", "2", "--steps", "1", "--layers", "1"]}
    for name, path in exes.items():
        bad = os.path.join(tmp, "no-such-parent", name)
        expect_error("%s --save-npy under a missing directory refused before the run" % name,
                     [path] + quick[name] + ["--save-npy", bad], ["--save-npy", bad],
                     rc_want=2, no_stdout=True)
        f = os.path.join(tmp, "a-file")
        with open(f, "w") as fh:
            fh.write("x")
        expect_error("%s --save-npy FILE refused before the run" % name,
                     [path] + quick[name] + ["--save-npy", f], ["not a directory"], rc_want=2,
                     no_stdout=True)


def oom_cases(bench, exes):
    lim = 800000  # KiB, as `ulimit -v 800000`
    big = {"tp_linear": ["--tokens", "200000", "--hidden", "8192"],
           "tp_mlp": ["--tokens", "200000", "--hidden", "8192"],
           "tp_attention": ["--batch", "4", "--seq", "100000", "--hidden", "8192"],
           "tp_transformer": ["--vocab", "50257", "--hidden", "1024", "--seq", "512", "--batch",
                              "16", "--steps", "1"]}
    for name, path in exes.items():
        secs = expect_error("%s out of memory: TP_ERR_NO_MEMORY with the bytes" % name,
                            [path, "--tp", "2"] + big[name], ["TP_ERR_NO_MEMORY", "bytes"],
                            rc_want=1, as_limit_kib=lim)
        print("      (%s reported it after %.2f s)" % (name, secs))
    if bench:
        for size in ["65536", "8192"]:
            secs = expect_error("bench gemm --sizes %s out of memory: what and bytes" % size,
                                [bench, "gemm", "--tp", "1", "-q", "--sizes", size],
                                ["TP_ERR_NO_MEMORY", "bytes"], rc_want=1, as_limit_kib=lim)
            print("      (gemm %s reported it after %.2f s)" % (size, secs))


def main(argv):
    tmp, progs = None, {}
    i = 1
    while i < len(argv):
        if argv[i] == "--tmp":
            tmp = argv[i + 1]
            i += 2
            continue
        name, _, path = argv[i].partition("=")
        progs[name] = os.path.abspath(path)
        i += 1
    import shutil
    import tempfile
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    else:
        tmp = tempfile.mkdtemp(prefix="cli-faults-")
    bench = progs.pop("tp-bench", None)
    progs = {k: v for k, v in progs.items() if k.startswith("tp_")}  # the examples
    if bench:
        bench_output_cases(bench, tmp)
    example_path_cases(progs, tmp)
    if os.environ.get("CLI_SWEEP_AS_LIMIT", "") == "0":
        print("skip: out-of-memory cases (no address-space limit under a sanitizer)")
    else:
        oom_cases(bench, progs)
    print("cli-faults: %d failed" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
