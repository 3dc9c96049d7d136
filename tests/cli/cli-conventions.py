#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The command-line conventions every program shares (issue 18, item 1).

For each program given (NAME=PATH; the ones listed in CHECKS are checked):
  --version  exit 0, one line "NAME VERSION (git REVISION)", the same
             version and revision for every program;
  --help     exit 0, usage on stdout naming --version and the rule for an
             option given twice (tp-bench: a subcommand's --help);
  --opt=VAL  accepted like --opt VAL (the run's result shows the value);
  twice      a flag given twice: the last value wins (the result shows it);
  errors     a bad value, and a value given to a flag that takes none
             ("--FLAG=1"): exit 2, one line on stderr starting "NAME: ".
Every installed program is checked: tp-bench, tp-info, tp-conformance,
tp-launch and the examples tp_linear, tp_mlp, tp_attention, tp_transformer.

usage: cli-conventions.py --tmp DIR NAME=PATH...
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

TIMEOUT_S = 60
ENV = dict(os.environ, TP_BACKEND="loopback", TP_DEVICE="cpu", TP_TIMEOUT_S="30")
ENV.pop("TP_WORLD_SIZE", None)


def run(args, env=None):
    try:
        p = subprocess.run(args, env=env or ENV, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, "", "timed out"
    return p.returncode, p.stdout, p.stderr


def json_records(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def bench_run_checks(exe, tmp):
    """tp-bench: --opt=value and last-wins, read back from its records."""
    out = os.path.join(tmp, "conv.jsonl")
    bad = []
    base = ["collectives", "--no-memcpy", "-q", "--iters=1", "--warmup_iters=0"]
    rc, _, err = run([exe] + base + ["--tp=2", "--collective=all_gather", "--maxbytes=64",
                                     "--minbytes=64", "--datatype=bf16", "--json=" + out])
    recs = [r for r in json_records(out) if r["kind"] == "collective"] if rc == 0 else []
    if rc != 0 or [(r["ranks"], r["op"], r["bytes"], r["dtype"]) for r in recs] != \
            [(2, "all_gather", 64, "bf16")]:
        bad.append("--opt=value: rc %s, records %r | %s" % (rc, recs, err.strip()[-200:]))
    rc, _, err = run([exe] + base + ["--tp", "3", "--tp", "2", "-C", "broadcast", "-C",
                                     "all_reduce", "-b", "32", "-e", "128", "-e", "64",
                                     "--json", os.path.join(tmp, "x"), "--json", out])
    recs = [r for r in json_records(out) if r["kind"] == "collective"] if rc == 0 else []
    if rc != 0 or [(r["ranks"], r["op"], r["bytes"]) for r in recs] != \
            [(2, "all_reduce", 32), (2, "all_reduce", 64)]:
        bad.append("last wins: rc %s, records %r | %s" % (rc, recs, err.strip()[-200:]))
    if os.path.exists(os.path.join(tmp, "x")):
        bad.append("last wins: the first --json was written too")
    return bad


def launch_run_checks(exe, tmp):
    """tp-launch: the ranks it starts show -n's value (also as -n2)."""
    bad = []
    show = ["sh", "-c", 'echo "size=$TP_WORLD_SIZE"']
    for name, args, want in [("--opt=value", ["--np=2", "--grace=1", "--"], 2),
                             ("last wins", ["-n", "3", "--np", "2", "-g", "9", "-g", "1"], 2),
                             ("-n2 (attached)", ["-n2", "-g1"], 2)]:
        rc, out, err = run([exe] + args + show)
        lines = [ln for ln in out.splitlines() if "size=" in ln]
        if rc != 0 or len(lines) != want or any(not ln.endswith("size=%d" % want)
                                                for ln in lines):
            bad.append("%s: rc %s, output %r | %s" % (name, rc, out, err.strip()[-200:]))
    return bad


def info_run_checks(exe, tmp):
    """tp-info: --json's document (json-glib) has the fields; a flag twice is
    the same as once; "--" ends the options."""
    bad = []
    rc, once, err = run([exe, "--json", "loopback"])
    try:
        doc = json.loads(once) if rc == 0 else None
    except ValueError as e:
        doc, err = None, "%s: %s" % (e, once[:300])
    settings = doc.get("settings") if isinstance(doc, dict) else None
    if not doc or doc.get("name") != "loopback" or doc.get("file_name") != "loopback" or \
            doc.get("accepted") is not True or not isinstance(doc.get("intra_node"), bool) or \
            not isinstance(doc.get("comm_ops"), list) or "all_reduce" not in doc["comm_ops"] or \
            not settings or any(set(x) != {"name", "default", "description"} for x in settings):
        bad.append("--json loopback: rc %s, document %r | %s" % (rc, doc, err.strip()[-200:]))
    for args in (["--json", "--json", "loopback"], ["-j", "--", "loopback"]):
        rc, out, err = run([exe] + args)
        if rc != 0 or out != once:
            bad.append("%s: rc %s, output differs from --json loopback" % (" ".join(args), rc))
    rc, out, err = run([exe, "--json"])
    try:
        names = [p.get("name") for p in json.loads(out)["plugins"]] if rc == 0 else []
    except (ValueError, KeyError, TypeError) as e:
        names, err = [], "%s: %s" % (e, out[:300])
    if "loopback" not in names:
        bad.append("--json: rc %s, plugins %r | %s" % (rc, names, err.strip()[-200:]))
    return bad


def conformance_run_checks(exe, tmp):
    """tp-conformance: the run shows --tp's world size and --op's one row."""
    bad = []
    for name, args in [("--opt=value", ["--tp=2", "--op=barrier"]),
                       ("last wins", ["--tp", "3", "--tp", "2", "--op", "split", "--op",
                                      "barrier"])]:
        rc, out, err = run([exe] + args)
        rows = [ln.split()[0] for ln in out.splitlines()
                if ln.split() and ln.split()[0] in ("all_reduce", "barrier", "split")]
        if rc != 0 or "2 ranks" not in out or rows != ["barrier"] or \
                not re.search(r"conformance: [1-9]\d* passed, 0 failed", out):
            bad.append("%s: rc %s, rows %r, output %r | %s" %
                       (name, rc, rows, out[-300:], err.strip()[-200:]))
    for args in (["--nb-error=bogus"], ["--large=0"], ["--op", "nosuch"], ["extra"]):
        rc, _, err = run([exe] + args)
        lines = err.strip().splitlines()
        if rc != 2 or len(lines) != 1 or not lines[0].startswith("tp-conformance: "):
            bad.append("%s: rc %s, stderr %r (want exit 2, one line)" % (args, rc, err[:200]))
    return bad


def example_run_checks(name, opts, want, tail):
    """An example: its first line shows the values of OPTS ((option, value,
    a valid value that must lose) pairs) given as --opt=VALUE, and given
    twice (--opt LOSER --opt VALUE): WANT, the strings the line must hold.
    TAIL: arguments for a short run. Usage errors: one line, exit 2."""
    def check(exe, tmp):
        bad = []
        eq = ["%s=%s" % (o, v) for o, v, _ in opts]
        twice = [w for o, v, lose in opts for w in (o, lose, o, v)]
        for what, argv in [("--opt=value", eq), ("last wins", twice)]:
            rc, out, err = run([exe] + argv + tail)
            line = next((ln for ln in out.splitlines() if ln.strip()), "")
            if rc != 0 or any(w not in line for w in want):
                bad.append("%s: rc %s, first line %r, want %r | %s" %
                           (what, rc, line, want, err.strip()[-200:]))
        for argv in (["--tp"], ["--tp="], ["--tp", "0"], ["--bogus"], ["operand"],
                     ["--save-npy="]):
            rc, _, err = run([exe] + argv)
            lines = err.strip().splitlines()
            if rc != 2 or len(lines) != 1 or not lines[0].startswith(name + ": ") or \
                    not lines[0].endswith("(try --help)"):
                bad.append("%s: rc %s, stderr %r (want exit 2, one '%s: ... (try --help)')" %
                           (argv, rc, err[:200], name))
        return bad
    return check


# name -> (help args, version args, a bad value, a value for a flag that
# takes none, the checks of real runs)
CHECKS = {
    "tp-bench": (["collectives", "--help"], ["--version"], ["collectives", "-n", "abc"],
                 ["collectives", "--no-memcpy=1"], bench_run_checks),
    "tp-launch": (["--help"], ["--version"], ["-n", "abc", "true"], ["--mpi=1", "-n", "1", "true"],
                  launch_run_checks),
    "tp-info": (["--help"], ["--version"], ["--json=0"], ["--version=1"], info_run_checks),
    "tp-conformance": (["--help"], ["--version"], ["--tp", "abc"], ["--verbose=1"],
                       conformance_run_checks),
    "tp_linear": (["--help"], ["--version"], ["--tokens", "abc"], ["--gelu-tanh=1"],
                  example_run_checks("tp_linear", [("--tp", "2", "3"), ("--tokens", "4", "5")],
                                     ["T=2 ", " tokens=4 "], ["--iters", "1"])),
    "tp_mlp": (["--help"], ["-V"], ["--overlap", "65"], ["--gelu-tanh=1"],
               example_run_checks("tp_mlp", [("--tp", "2", "3"), ("--hidden", "64", "32")],
                                  ["T=2 ", " hidden=64 "],
                                  ["--iters", "1", "--tokens", "4", "--ffn", "64"])),
    "tp_attention": (["--help"], ["--version"], ["--heads", "-1"], ["--no-bias=1"],
                     example_run_checks("tp_attention", [("--tp", "2", "4"), ("--seq", "8", "4")],
                                        ["T=2 ", " seq=8 "], ["--iters", "1"])),
    "tp_transformer": (["--help"], ["--version"], ["--lr", "x"], ["--sgd=1"],
                       example_run_checks("tp_transformer",
                                          [("--tp", "2", "3"), ("--layers", "1", "2")],
                                          ["T=2 ", " layers 1 "],
                                          ["--steps", "1", "--vocab", "53"])),
}


def check_program(name, exe, tmp):
    help_args, version_args, bad_args, valueless, runs = CHECKS[name]
    bad = []
    rc, out, err = run([exe] + version_args)
    m = re.fullmatch(r"%s (\S+) \(git (\S+)\)\n" % re.escape(name), out)
    if rc != 0 or not m:
        bad.append("--version: rc %s, stdout %r" % (rc, out))
    version = m.groups() if m else None
    rc, out, err = run([exe] + help_args)
    if rc != 0 or "Usage:" not in out or "--version" not in out:
        bad.append("--help: rc %s, no usage naming --version on stdout" % rc)
    # the rule for an option given twice, in the help (tp-info: flags only)
    if not re.search(r"last\s+value\s+wins|flag given twice is the same as once", out):
        bad.append("--help: does not say what an option given twice does")
    for what, args in (("bad value", bad_args), ("value for a flag", valueless)):
        rc, out, err = run([exe] + args)
        lines = err.strip().splitlines()
        if rc != 2 or len(lines) != 1 or not lines[0].startswith(name + ": "):
            bad.append("%s %r: rc %s, stderr %r (want exit 2, one line '%s: ...')" %
                       (what, args, rc, err[:200], name))
    bad += runs(exe, tmp)
    return version, bad


def main(argv):
    tmp, progs, i = None, {}, 1
    while i < len(argv):
        if argv[i] == "--tmp":
            tmp = argv[i + 1]
            i += 2
            continue
        name, _, path = argv[i].partition("=")
        progs[name] = os.path.abspath(path)
        i += 1
    tmp = tmp or tempfile.mkdtemp(prefix="cli-conventions-")
    shutil.rmtree(tmp, ignore_errors=True)  # ours, from an earlier run
    os.makedirs(tmp)
    failed, versions = [], {}
    for name in sorted(progs):
        if name not in CHECKS:
            continue
        version, bad = check_program(name, progs[name], tmp)
        if version:
            versions[name] = version
        failed += ["%s %s" % (name, b) for b in bad]
        print("%s: %s" % (name, "ok" if not bad else "%d failed" % len(bad)))
    if len(set(versions.values())) > 1:
        failed.append("versions differ: %r" % versions)
    missing = sorted(set(CHECKS) - set(progs))
    if missing:
        failed.append("not given (every installed program is checked): %s" % ", ".join(missing))
    for line in failed:
        print("FAIL:", line)
    print("cli-conventions: %d programs, %d failed checks" % (len(versions), len(failed)))
    return 1 if failed or not versions else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
