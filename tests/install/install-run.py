#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""An installed tp runs as installed (issue 18, items 5 and 7).

usage: install-run.py --meson MESON --build DIR --source DIR --tmp DIR
       --prefix P --libdir L --bindir B --examples-dir E --mandir M --datadir S
       [--man PAGE,PAGE...]
`meson install --destdir TMP/dest`, then, with a clean environment (no
LD_LIBRARY_PATH, no TP_PLUGIN_PATH, PATH=/usr/bin:/bin):
  * the installed tp-info finds the installed plugins (<libdir>/tp-1 beside
    the installed libtp) and the installed tp_mlp runs (RUNPATH $ORIGIN);
  * every man page is installed and documents --help; the bash completions
    are installed and complete tp-bench's subcommands and flags and
    tp-launch's flags and program;
  * docs/writing-a-comm-plugin.md's solo plugin compiles with -Wall -Wextra
    -Werror against the installed tp-plugin.pc and tp.pc alone (PKG_CONFIG_LIBDIR
    holds only the installed .pc files: no GLib), the installed tp-info
    accepts it and prints what the guide shows, and tp-conformance passes on it.
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys

TIMEOUT_S = 300
ap = argparse.ArgumentParser()
for a in ("meson", "build", "source", "tmp", "prefix", "libdir", "bindir", "examples_dir",
          "mandir", "datadir"):
    ap.add_argument("--" + a.replace("_", "-"), required=True)
ap.add_argument("--man", default="")
args = ap.parse_args()
failures = []


def check(name, ok, detail=""):
    print("%s: %s%s" % ("ok  " if ok else "FAIL", name, "" if ok else " -- " + detail))
    if not ok:
        failures.append(name)


def run(argv, env, cwd=None):
    p = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = p.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
    return p.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def under(*parts):
    """A path of the installed tree, inside DESTDIR."""
    return os.path.join(dest, os.path.join(args.prefix, *parts).lstrip("/"))


shutil.rmtree(args.tmp, ignore_errors=True)
os.makedirs(args.tmp)
dest = os.path.join(args.tmp, "dest")
rc, out, err = run([args.meson, "install", "-C", args.build, "--destdir", dest, "--no-rebuild",
                    "--quiet"], dict(os.environ))
if rc != 0:
    sys.exit("meson install failed (rc %r): %s%s" % (rc, out, err))

bindir, libdir = under(args.bindir), under(args.libdir)
clean = {"PATH": "/usr/bin:/bin", "HOME": args.tmp, "TP_TIMEOUT_S": "60"}
# A sanitizer build keeps its options (they name no library or plugin path).
clean.update({k: v for k, v in os.environ.items() if k.endswith("SAN_OPTIONS")})
bin_path = dict(clean, PATH=bindir + ":/usr/bin:/bin")


def installed_programs():
    rc, out, err = run([os.path.join(bindir, "tp-info")], clean)
    check("tp-info runs with a clean environment", rc == 0, err)
    plugdir = os.path.join(libdir, "tp-1")
    for name in ("loopback", "cpu", "tcp"):
        want = os.path.join(plugdir, "libtp-%s.so" % name)
        check("tp-info finds the installed %s plugin" % name, want in out, out[-1500:])
    check("tp-info does not search the build tree", "(build tree" not in out, out[-1500:])
    mlp = os.path.join(under(args.examples_dir), "tp_mlp")
    rc, out, err = run([mlp, "--tp", "2", "--iters", "1"], dict(clean, TP_BACKEND="loopback"))
    check("installed tp_mlp runs with a clean environment", rc == 0 and "AGREE" in out,
          "rc %r: %s %s" % (rc, out[-800:], err[-800:]))
    for prog in (os.path.join(bindir, "tp-info"), mlp):
        rc, out, _ = run(["readelf", "-d", prog], clean)
        rp = re.findall(r"\((?:RUNPATH|RPATH)\)\s+Library r\w*path: \[(.*)\]", out)
        check("%s: RUNPATH is relative to $ORIGIN only" % os.path.basename(prog),
              rp and all(p.startswith("$ORIGIN/") for p in rp[0].split(":")), repr(rp))


def man_pages():
    pages = [p for p in args.man.split(",") if p]
    if not pages:
        print("note: help2man was not found at configure time: no man pages to check")
        return
    for page in pages:
        f = under(args.mandir, "man1", page + ".1")
        text = open(f).read() if os.path.exists(f) else ""
        check("man page %s.1 installed" % page, bool(text), f)
        if text:
            check("man page %s.1: .TH and the --help text" % page,
                  re.search(r'^\.TH "?%s"? "?1' % re.escape(page.upper()), text, re.M)
                  and "\\-\\-help" in text, text[:300])
    if "tp-bench" in pages:  # its subcommands' flags too (man/help-all.sh.in)
        text = open(under(args.mandir, "man1", "tp-bench.1")).read()
        for sub in ("collectives", "gemm", "layer", "model", "plot"):
            check("tp-bench.1 documents 'tp-bench %s'" % sub, "tp\\-bench %s" % sub in text, "")
        check("tp-bench.1 documents a subcommand's flag (--minbytes)", "\\-\\-minbytes" in text)


def complete(script_words, cur_index):
    """COMPREPLY of bash completion for the words (the last one is completed)."""
    comp = under(args.datadir, "bash-completion", "completions")
    words = " ".join("'%s'" % w for w in script_words)
    bc = "/usr/share/bash-completion/bash_completion"
    src = ("[ -r %s ] && . %s; " % (bc, bc)) + \
        ". '%s/tp-bench'; . '%s/tp-launch'; " % (comp, comp) + \
        "COMP_WORDS=(%s); COMP_CWORD=%d; COMP_LINE=\"${COMP_WORDS[*]}\"; " % (words, cur_index) + \
        "COMP_POINT=${#COMP_LINE}; %s; printf '%%s\\n' \"${COMPREPLY[@]}\"" % (
            "_tp_bench" if script_words[0] == "tp-bench" else "_tp_launch")
    rc, out, err = run(["bash", "-c", src], bin_path)
    return set(out.split()) if rc == 0 else {"<rc %r: %s>" % (rc, err)}


def help_flags(*argv):
    _, out, _ = run(list(argv) + ["--help"], bin_path)
    return set(re.findall(r"(?:^|[\s,\[])(--[A-Za-z0-9][-A-Za-z0-9_]*)", out, re.M))


def completions():
    comp = under(args.datadir, "bash-completion", "completions")
    for prog in ("tp-bench", "tp-launch"):
        check("bash completion for %s installed" % prog, os.path.exists(os.path.join(comp, prog)))
    _, out, _ = run(["tp-bench", "--help"], bin_path)
    subs = set(re.findall(r"^  ([a-z][a-z0-9-]*)  ", out, re.M))
    check("tp-bench has subcommands in --help", "collectives" in subs, out)
    got = complete(["tp-bench", ""], 1)
    check("completes tp-bench's subcommands", got == subs, "%r vs %r" % (got, subs))
    got = complete(["tp-bench", "col"], 1)
    check("completes 'tp-bench col' to collectives", got == {"collectives"}, repr(got))
    for sub in sorted(subs):
        flags = help_flags("tp-bench", sub)
        got = complete(["tp-bench", sub, "--"], 2)
        check("completes tp-bench %s's flags (%d in its --help)" % (sub, len(flags)),
              flags and flags <= got, "missing %r" % (flags - got))
    flags = help_flags("tp-launch")
    got = complete(["tp-launch", "--"], 1)
    check("completes tp-launch's flags", flags and flags <= got, "missing %r" % (flags - got))
    got = complete(["tp-launch", "-n", "2", "tp-inf"], 3)
    check("completes tp-launch's program", "tp-info" in got, repr(got))
    # Flags with values (from the option lines) are skipped to find the program.
    if os.path.exists("/usr/share/bash-completion/bash_completion"):
        got = complete(["tp-launch", "--grace", "3", "-p", "29500", "--no-prefix", "tp-bench",
                        "col"], 7)
        check("skips flags' values to find the program", got == {"collectives"}, repr(got))
    got = complete(["tp-launch", "-n", "2", "tp-bench", "col"], 4)
    if os.path.exists("/usr/share/bash-completion/bash_completion"):
        check("completes the program's own arguments after tp-launch", got == {"collectives"},
              repr(got))


def guide_solo():
    """The guide's solo plugin against the installed SDK only."""
    guide = open(os.path.join(args.source, "docs", "writing-a-comm-plugin.md")).read()
    code = re.search(r"```c\n(/\* solo\.c .*?)```", guide, re.S)
    check("the guide has the solo plugin", code is not None)
    if not code:
        return
    d = os.path.join(args.tmp, "solo")
    os.mkdir(d)
    with open(os.path.join(d, "solo.c"), "w") as f:
        f.write(code.group(1))
    pc = dict(clean, PKG_CONFIG_LIBDIR=os.path.join(libdir, "pkgconfig"),
              PKG_CONFIG_SYSROOT_DIR=dest)
    for pkg in ("tp-plugin", "tp"):
        rc, cflags, err = run(["pkg-config", "--cflags", pkg], pc)
        check("pkg-config --cflags %s without GLib's .pc files" % pkg, rc == 0, err)
        check("%s's cflags name no GLib" % pkg, "glib" not in cflags, cflags)
        rc, out, err = run(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", "-fPIC",
                            "-shared", "-fvisibility=hidden"] + cflags.split() +
                           ["-o", "libtp-solo.so", "solo.c"], pc, cwd=d)
        check("solo.c builds warning-free (-Wall -Wextra -Werror) with %s.pc" % pkg, rc == 0,
              out + err)
    nosys = {k: v for k, v in pc.items() if k != "PKG_CONFIG_SYSROOT_DIR"}
    rc, plugindir, err = run(["pkg-config", "--variable=plugindir", "tp-plugin"], nosys)
    check("tp-plugin.pc's plugindir is the installed plugin directory",
          rc == 0 and plugindir.strip() == os.path.join(args.prefix, args.libdir, "tp-1"),
          plugindir + err)
    env = dict(clean, TP_PLUGIN_PATH=d)
    rc, out, err = run([os.path.join(bindir, "tp-info"), "solo"], env)
    check("installed tp-info accepts solo", rc == 0 and "available" in out, out + err)
    shown = re.search(r"\$ TP_PLUGIN_PATH=\$PWD tp-info solo\n(.*?)```", guide, re.S)
    real = out.replace(d, "/home/me/solo")
    check("the guide shows tp-info's real output for solo",
          shown is not None and shown.group(1).strip("\n") == real.strip("\n"),
          "guide:\n%s\nreal:\n%s" % (shown.group(1) if shown else None, real))
    rc, out, err = run([os.path.join(bindir, "tp-conformance")], dict(env, TP_BACKEND="solo"))
    check("tp-conformance passes on solo", rc == 0, out[-1500:] + err[-1500:])


installed_programs()
man_pages()
completions()
guide_solo()
sys.exit(1 if failures else 0)
