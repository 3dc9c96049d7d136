#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Sweep every program's flags and environment variables with bad values.

Each case must end with a non-zero exit and a message on stderr -- never a
signal (exit > 128 or killed), never a hang (each case runs under a
timeout). Cases marked 'any' need only end without a signal or a hang (a
value that may legitimately be accepted, e.g. TP_DEBUG=nonsense).

usage: cli-sweep.py --tmp DIR NAME=PATH...   (NAME: tp-bench, tp-info,
tp-launch, tp-conformance, tp_linear, tp_mlp, tp_attention, tp_transformer;
a program not given is skipped)

Exit 0 if every case behaved; 1 with one line per bad case otherwise.
Cases listed in KNOWN_FAILING (owned elsewhere, not yet fixed) are run and
reported but do not fail the sweep; one that starts passing is reported so
that it can be taken off the list.
"""
import concurrent.futures
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile

TIMEOUT_S = 20
BIG = "99999999999999999999"  # overflows int64
INT_BAD = ["abc", "-1", "0", BIG, "1.5", "", None]  # None: value missing

# (program, args tuple) -> why; see the module docstring
KNOWN_FAILING = {}


def int_cases(prog, base, flag, bad=INT_BAD):
    out = []
    for v in bad:
        args = base + ([flag] if v is None else [flag, v])
        out.append((prog, args, {}, "fail"))
    return out


def example_cases():
    cases = []
    quick = ["--tp", "1"]
    common = {"tp_linear": ["--tokens", "--hidden", "--ffn", "--iters", "--tp"],
              "tp_mlp": ["--tokens", "--hidden", "--ffn", "--iters", "--tp"],
              "tp_attention": ["--batch", "--seq", "--hidden", "--heads", "--kv-heads",
                               "--head-dim", "--iters", "--tp"],
              "tp_transformer": ["--vocab", "--hidden", "--heads", "--ffn", "--seq",
                                 "--batch", "--steps", "--print-every", "--tp",
                                 "--compare-tp"]}
    for prog, flags in common.items():
        for f in flags:
            cases += int_cases(prog, [] if f == "--tp" else quick, f)
        for f in ["--seed"]:
            cases += int_cases(prog, quick, f, ["abc", "-1", BIG, "", None])
        cases.append((prog, ["--bogus"], {}, "fail"))
        cases.append((prog, ["-x"], {}, "fail"))
        cases.append((prog, ["positional"], {}, "fail"))
        cases.append((prog, quick + ["--save-npy"], {}, "fail"))
        cases.append((prog, quick + ["--save-npy", ""], {}, "fail"))
        cases.append((prog, quick + ["--save-npy", "/proc/nonexistent/dir"], {}, "fail"))
        cases.append((prog, quick + ["--save-npy", "@FILE@"], {}, "fail"))
    # overflowing products: every factor in range, the product not
    cases.append(("tp_mlp", ["--tp", "1", "--tokens", "4294967296", "--hidden", "4294967296"],
                  {}, "fail"))
    cases.append(("tp_linear", ["--tp", "1", "--tokens", "16777216", "--hidden", "1048576",
                                "--ffn", "4194304"], {}, "fail"))
    cases.append(("tp_mlp", ["--tp", "1", "--tokens", "16777216", "--hidden", "1048576",
                             "--ffn", "4194304"], {}, "fail"))
    cases.append(("tp_attention", ["--tp", "1", "--batch", "1048576", "--seq", "1048576",
                                   "--hidden", "1048576", "--heads", "1"], {}, "fail"))
    cases.append(("tp_attention", ["--tp", "1", "--heads", "1048576", "--head-dim", "1048576",
                                   "--iters", "1"], {}, "fail"))
    cases.append(("tp_transformer", ["--tp", "1", "--vocab", "2147483647", "--hidden", "65536",
                                     "--steps", "1"], {}, "fail"))
    cases.append(("tp_transformer", ["--tp", "1", "--batch", "65536", "--seq", "65536",
                                     "--steps", "1"], {}, "fail"))
    cases.append(("tp_transformer", ["--tp", "2", "--compare-tp", "3"], {}, "fail"))
    for f in ["--tol", "--lr", "--weight-decay", "--label-smoothing"]:
        for v in ["abc", "-1", "nan", "inf", "1e999", "", None]:
            args = ["--tp", "1", f] + ([] if v is None else [v])
            cases.append(("tp_transformer", args, {}, "fail"))
    return cases


def bench_cases():
    cases = []
    q = ["--tp", "1", "-q"]
    sub = {"collectives": ["-b", "-e", "-f", "-n", "-w", "--tp", "--threads"],
           "gemm": ["--sizes", "-n", "-w", "--tp", "--threads"],
           "layer": ["--tokens", "--hidden", "--ffn", "--batch", "--seq", "--heads",
                     "--kv-heads", "--head-dim", "--layers", "--vocab", "-n", "-w", "--tp",
                     "--threads"],
           "model": ["--tokens", "--hidden", "--ffn", "--fit-min", "-n", "--tp", "--threads"]}
    zero_ok = {"-w", "--layers", "--fit-min"}
    real_bad = {"-f": ["abc", "-1", "0", "1", "nan", "", None],
                "--gflops": ["abc", "-1", "0", "nan", "inf", "", None]}
    sub["model"].append("--gflops")
    for cmd, flags in sub.items():
        for f in flags:
            bad = real_bad.get(f) or [v for v in INT_BAD if not (v == "0" and f in zero_ok)]
            base = [cmd] + ([] if f == "--tp" else q)
            cases += int_cases("tp-bench", base, f, bad)
        for f in ["--json", "--csv"]:
            cases.append(("tp-bench", [cmd, f], {}, "fail"))
            cases.append(("tp-bench", [cmd, f, ""], {}, "fail"))
            cases.append(("tp-bench", [cmd] + q + [f, "/proc/nonexistent/x"], {}, "fail"))
            cases.append(("tp-bench", [cmd] + q + [f, "@DIR@"], {}, "fail"))
        cases.append(("tp-bench", [cmd, "--bogus"], {}, "fail"))
        cases.append(("tp-bench", [cmd, "--backend", "nosuch"] + q, {}, "fail"))
        cases.append(("tp-bench", [cmd, "--device", "nosuch"] + q, {}, "fail"))
        cases.append(("tp-bench", [cmd, "--backend", ""] + q, {}, "fail"))
    cases += [
        ("tp-bench", [], {}, "fail"),
        ("tp-bench", ["nosuch"], {}, "fail"),
        ("tp-bench", ["--bogus"], {}, "fail"),
        ("tp-bench", ["collectives", "--op", "nosuch"], {}, "fail"),
        ("tp-bench", ["collectives", "--op", ""], {}, "fail"),
        ("tp-bench", ["collectives", "-b", "1G", "-e", "1K"], {}, "fail"),
        ("tp-bench", ["collectives", "-e", "16E"], {}, "fail"),
        ("tp-bench", ["collectives", "-e", "9999999999999G"], {}, "fail"),
        # -c takes nccl-tests' check count (-c 2 is valid); -d/-o/-a/-C their values
        ("tp-bench", ["collectives", "--check=abc"], {}, "fail"),
        ("tp-bench", ["collectives", "--check=-1"], {}, "fail"),
        ("tp-bench", ["collectives", "-d", "f64"], {}, "fail"),
        ("tp-bench", ["collectives", "-d", ""], {}, "fail"),
        ("tp-bench", ["collectives", "-d"], {}, "fail"),
        ("tp-bench", ["collectives", "-o", "prod"], {}, "fail"),
        ("tp-bench", ["collectives", "-o", ""], {}, "fail"),
        ("tp-bench", ["collectives", "-a", "4"], {}, "fail"),
        ("tp-bench", ["collectives", "-a", "-1"], {}, "fail"),
        ("tp-bench", ["collectives", "-a", "abc"], {}, "fail"),
        ("tp-bench", ["collectives", "-C", "nosuch"], {}, "fail"),
        ("tp-bench", ["collectives", "-C", ""], {}, "fail"),
        ("tp-bench", ["collectives", "--compare-raw", "-d", "bf16"], {}, "fail"),
        ("tp-bench", ["model", "-o", "max"], {}, "fail"),
        ("tp-bench", ["--version=1"], {}, "fail"),
        ("tp-bench", ["collectives", "--version=1"], {}, "fail"),
        ("tp-bench", ["collectives", "--sweep-tp", "1,abc"], {}, "fail"),
        ("tp-bench", ["collectives", "--sweep-tp", "0"], {}, "fail"),
        ("tp-bench", ["collectives", "--sweep-tp", ""], {}, "fail"),
        ("tp-bench", ["collectives", "--sweep-tp", "," * 100], {}, "fail"),
        ("tp-bench", ["collectives", "--sweep-tp", ",".join(["2"] * 1000)], {}, "fail"),
        ("tp-bench", ["gemm", "--sizes", "1,,2"], {}, "fail"),
        ("tp-bench", ["gemm", "--dtype", "f64"], {}, "fail"),
        ("tp-bench", ["gemm", "--sizes", "4294967296"], {}, "fail"),
        ("tp-bench", ["layer", "--layer", "nosuch"], {}, "fail"),
        ("tp-bench", ["layer", "--tokens", "4294967296", "--hidden", "4294967296"], {}, "fail"),
        ("tp-bench", ["layer", "--layer", "transformer", "--vocab", "4294967296",
                      "--hidden", "4294967296", "--tp", "1", "-q"], {}, "fail"),
        ("tp-bench", ["layer", "--batch", "4294967296", "--seq", "4294967296"], {}, "fail"),
        ("tp-bench", ["model", "--link", "bad"], {}, "fail"),
        ("tp-bench", ["model", "--link", "x:abc:1"], {}, "fail"),
        ("tp-bench", ["model", "--link", "x:-1:1"], {}, "fail"),
        ("tp-bench", ["model", "--from", "/nonexistent.jsonl"], {}, "fail"),
        ("tp-bench", ["model", "--from", "@FILE@"], {}, "fail"),
        ("tp-bench", ["model", "--project-tp", "abc"], {}, "fail"),
        ("tp-bench", ["model", "--measure-tp", "-1"], {}, "fail"),
        ("tp-bench", ["plot"], {}, "fail"),
        ("tp-bench", ["plot", "/nonexistent.jsonl", "--out", "@DIR@/x.png"], {}, "fail"),
        ("tp-bench", ["plot", "@FILE@", "--out", "/proc/nonexistent/x.png"], {}, "fail"),
        ("tp-bench", ["plot", "@FILE@", "--out"], {}, "fail"),
    ]
    return cases


def tool_cases():
    cases = [
        ("tp-info", ["--bogus"], {}, "fail"),
        ("tp-info", ["nosuch"], {}, "fail"),
        ("tp-info", [""], {}, "fail"),
        ("tp-info", ["/nonexistent/libtp-x.so"], {}, "fail"),
        ("tp-info", ["@FILE@"], {}, "fail"),
        ("tp-info", ["a", "b"], {}, "fail"),
        ("tp-launch", [], {}, "fail"),
        ("tp-launch", ["--bogus"], {}, "fail"),
        ("tp-launch", ["-n", "2"], {}, "fail"),
        ("tp-launch", ["-n", "2", "/nonexistent/prog"], {}, "fail"),
        ("tp-launch", ["-n", "2", "--", "false"], {}, "fail"),
        ("tp-launch", ["-n", "1", "-p", "99999", "true"], {}, "fail"),
        ("tp-launch", ["-n", "1", "-p", "abc", "true"], {}, "fail"),
        ("tp-launch", ["-n", "1", "-p", "-1", "true"], {}, "fail"),
        ("tp-launch", ["-n", "1", "-p", "", "true"], {}, "fail"),
        ("tp-launch", ["-n", "1", "-g", "abc", "true"], {}, "fail"),
        ("tp-launch", ["-n", "1", "-g", "-1", "true"], {}, "fail"),
        ("tp-launch", ["-n", "1", "-g", BIG, "true"], {}, "fail"),
        ("tp-launch", ["-n", "1", "-a", "", "true"], {}, "fail"),
        ("tp-launch", ["-n", "1", "-a", "not an address", "true"], {}, "fail"),
        ("tp-launch", ["--version=1"], {}, "fail"),
        ("tp-launch", ["--np=abc", "true"], {}, "fail"),
        ("tp-launch", ["--np=", "true"], {}, "fail"),
        ("tp-conformance", ["--bogus"], {}, "fail"),
        ("tp-conformance", ["--op", "nosuch"], {}, "fail"),
        ("tp-conformance", ["--op", ""], {}, "fail"),
        ("tp-conformance", ["--op"], {}, "fail"),
        ("tp-conformance", ["positional"], {}, "fail"),
    ]
    # emulated nodes: the values are refused before anything is created
    for v in ["0", "abc", "-1", "", BIG, "1.5", "3", None]:
        cases.append(("tp-launch", ["-n", "2"] + (["--nodes"] if v is None else ["--nodes", v])
                      + ["true"], {}, "fail"))
    cases.append(("tp-launch", ["-n", "1", "--link", "1gbit", "true"], {}, "fail"))
    cases.append(("tp-launch", ["-n", "1", "--nodes", "1", "-a", "127.0.0.1", "true"], {}, "fail"))
    for v in ["fast", "", "1gbit,fast", "0gbit", "-1gbit", "1gbit,-1us", "999tbit"]:
        cases.append(("tp-launch", ["-n", "1", "--nodes", "1", "--link", v, "true"], {}, "fail"))
    for v in ["abc", "-1", "0", BIG, "", None]:
        cases.append(("tp-launch", (["-n"] if v is None else ["-n", v]) + ["true"], {}, "fail"))
        cases.append(("tp-conformance", ["--tp"] + ([] if v is None else [v]), {}, "fail"))
    return cases


# Environment: each program in a minimal run that would otherwise succeed.
ENV_RUNS = {
    "tp-bench": ["collectives", "--tp", "1", "-e", "64", "-n", "1", "-w", "0", "--no-memcpy",
                 "-q"],
    "tp-conformance": ["--tp", "1", "--op", "barrier"],
    "tp_linear": ["--tp", "1", "--iters", "1"],
    "tp_mlp": ["--tp", "1", "--iters", "1"],
    "tp_attention": ["--tp", "1", "--iters", "1"],
    "tp_transformer": ["--tp", "1", "--steps", "1", "--layers", "1"],
}
ENV_RUNS_DEFAULT_TP = {  # the same without --tp, so that TP_WORLD_SIZE counts
    "tp-bench": ["collectives", "-e", "64", "-n", "1", "-w", "0", "--no-memcpy", "-q"],
    "tp-conformance": ["--op", "barrier"],
    "tp_linear": ["--iters", "1"],
    "tp_mlp": ["--iters", "1"],
    "tp_attention": ["--iters", "1", "--heads", "1"],
    "tp_transformer": ["--steps", "1", "--layers", "1", "--heads", "1"],
}


def env_cases():
    cases = []
    for prog, args in ENV_RUNS.items():
        for k, v in [("TP_BACKEND", "nosuch"), ("TP_BACKEND", "libtp-loopback.so"),
                     ("TP_BACKEND", "../x"), ("TP_DEVICE", "nosuch"), ("TP_DEVICE", "../x"),
                     ("TP_TIMEOUT_S", "abc"), ("TP_TIMEOUT_S", "-1"), ("TP_TIMEOUT_S", BIG),
                     ("TP_CPU_THREADS", "abc"), ("TP_CPU_THREADS", "-1"),
                     ("TP_CPU_THREADS", BIG), ("TP_CPU_THREADS", "100000")]:
            cases.append((prog, args, {k: v}, "fail"))
        for k, v in [("TP_BACKEND", ""), ("TP_DEVICE", ""), ("TP_TIMEOUT_S", ""),
                     ("TP_TIMEOUT_S", "0"), ("TP_CPU_THREADS", ""), ("TP_CPU_THREADS", "0"),
                     ("TP_DEBUG", "all"), ("TP_DEBUG", "nonsense,,::"),
                     ("TP_PLUGIN_PATH", ""), ("TP_PLUGIN_PATH", "relative/dir:::"),
                     ("TP_PLUGIN_PATH", "/nonexistent")]:
            cases.append((prog, args, {k: v}, "any"))
    for prog, args in ENV_RUNS_DEFAULT_TP.items():
        for v in ["abc", "-1", "0", BIG, "1.5"]:
            cases.append((prog, args, {"TP_WORLD_SIZE": v}, "fail"))
        cases.append((prog, args, {"TP_WORLD_SIZE": ""}, "any"))
    cases.append(("tp-info", [], {"TP_PLUGIN_PATH": "relative:/nonexistent::"}, "any"))
    cases.append(("tp-info", ["nosuch"], {"TP_PLUGIN_PATH": "relative"}, "fail"))
    return cases


def limit_memory():
    """Run under an address-space limit: a huge size fails with
    TP_ERR_NO_MEMORY at once instead of paging the machine to death.
    Not under a sanitizer (its shadow memory needs terabytes of address
    space): CLI_SWEEP_AS_LIMIT=0."""
    lim = int(os.environ.get("CLI_SWEEP_AS_LIMIT", str(4 << 30)))
    if lim > 0:
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))


def run_case(path, args, env_extra, tmp):
    env = dict(os.environ)
    env.update(env_extra)
    args = [a.replace("@DIR@", tmp).replace("@FILE@", os.path.join(tmp, "file")) for a in args]
    cwd = tempfile.mkdtemp(dir=tmp)
    try:
        p = subprocess.Popen([path] + args, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True, preexec_fn=limit_memory)
    except OSError as e:
        return None, "", str(e)
    try:
        out, err = p.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # its own session: only what it started
        out, err = p.communicate()
        return "hang", out.decode(errors="replace"), err.decode(errors="replace")
    return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def judge(rc, err, expect):
    """Why the case misbehaved, or None. err: stderr, else stdout."""
    if rc == "hang":
        return "hung (> %d s)" % TIMEOUT_S
    if rc is None:
        return "could not start"
    if rc < 0:
        return "killed by signal %d (%s)" % (-rc, signal.Signals(-rc).name)
    if rc > 128:
        return "exit %d (a signal's status)" % rc
    if expect == "fail":
        if rc == 0:
            return "exit 0 (accepted)"
        if not err.strip():
            return "exit %d without a message" % rc
    return None


def main(argv):
    tmp = None
    progs = {}
    only = None
    i = 1
    while i < len(argv):
        if argv[i] == "--tmp":
            tmp = argv[i + 1]
            i += 2
            continue
        if argv[i] == "--only":
            only = argv[i + 1]
            i += 2
            continue
        name, _, path = argv[i].partition("=")
        progs[name] = os.path.abspath(path)
        i += 1
    if tmp is None:
        tmp = tempfile.mkdtemp(prefix="cli-sweep-")
    shutil.rmtree(tmp, ignore_errors=True)  # ours: from an earlier run of this test
    os.makedirs(tmp)
    with open(os.path.join(tmp, "file"), "w") as f:
        f.write("not a plugin, a directory or a JSON-lines file\n")
    cases = [c for c in example_cases() + bench_cases() + tool_cases() + env_cases()
             if c[0] in progs and (not only or only == c[0])]
    # Cases are independent processes, each in its own directory: run one
    # per CPU (the test is is_parallel: false, so the CPUs are its own).
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(lambda c: run_case(progs[c[0]], c[1], c[2], tmp), cases))
    bad, known, fixed, ran = [], [], [], len(cases)
    for (prog, args, env, expect), (rc, out, err) in zip(cases, results):
        why = judge(rc, err if err.strip() else out, expect)
        envs = " ".join("%s=%r" % kv for kv in env.items())
        desc = "%s%s %s" % (envs + " " if envs else "", prog, " ".join(repr(a) for a in args))
        key = (prog, tuple(args), tuple(sorted(env.items())))
        last = err.strip().splitlines()[-1] if err.strip() else ""
        if why and key in KNOWN_FAILING:
            known.append("%s: %s [known: %s]" % (desc, why, KNOWN_FAILING[key]))
        elif why:
            bad.append("%s: %s | %s" % (desc, why, last[:300]))
        elif key in KNOWN_FAILING:
            fixed.append(desc)
        if os.environ.get("CLI_SWEEP_VERBOSE"):
            print("rc=%s %s | %s" % (rc, desc, last[:200]))
    for line in known:
        print("KNOWN FAILING:", line)
    for line in fixed:
        print("NOW PASSES (take it off KNOWN_FAILING):", line)
    for line in bad:
        print("FAIL:", line)
    print("cli-sweep: %d cases, %d failed, %d known failing" % (ran, len(bad), len(known)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
