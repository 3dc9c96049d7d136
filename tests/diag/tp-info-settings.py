#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""tp-info lists each plugin's own settings with defaults (issue 18, item 6).

usage: tp-info-settings.py TP_INFO NAME=SOURCE_DIR...
The reference is the plugin's source, not its table: every TP_* variable the
plugin reads with getenv("TP_...") (or through tcp's env_pick) must be listed by
`tp-info NAME` (text: name and "default:"; --json: "settings" with name,
default, description). Two defaults are checked against the constants the
code uses: tcp's TCP_DEFAULT_CHUNK and loopback's LB_SMALL_BYTES.
"""
import glob
import json
import os
import re
import subprocess
import sys

tp_info = sys.argv[1]
plugins = dict(a.split("=", 1) for a in sys.argv[2:])
failures = []
READS = re.compile(r'(?:getenv|env_pick)\((?:host, )?"(TP_[A-Z0-9_]+)"')


def check(name, ok, detail=""):
    print("%s: %s%s" % ("ok  " if ok else "FAIL", name, "" if ok else " -- " + detail))
    if not ok:
        failures.append(name)


def source(d):
    return "".join(open(f).read() for f in sorted(glob.glob(os.path.join(d, "*.[ch]"))))


def tp_info_of(name, *extra):
    r = subprocess.run([tp_info] + list(extra) + [name], capture_output=True, text=True,
                       timeout=60)
    return r.returncode, r.stdout, r.stderr


for name, d in sorted(plugins.items()):
    rc, text, err = tp_info_of(name)
    if rc != 0:
        check("tp-info %s runs" % name, False, err)
        continue
    src = source(d)
    reads = sorted(set(READS.findall(src)))
    rc, js, err = tp_info_of(name, "--json")
    try:
        doc = json.loads(js)
        plug = doc if "settings" in doc else next(
            p for p in doc.get("plugins", []) if p.get("name") == name)
        listed = {s["name"]: s for s in plug["settings"]}
    except (ValueError, StopIteration, KeyError) as e:
        check("tp-info --json %s has settings" % name, False, "%s: %s" % (e, js[:500]))
        continue
    check("tp-info %s lists a settings section" % name, "    settings:" in text, text)
    for var in reads:
        check("%s: %s (read in its source) is listed" % (name, var), var in listed,
              "listed: %r" % sorted(listed))
        line = re.search(r"^      %s +default: (.+)$" % re.escape(var), text, re.M)
        check("%s: %s shown with its default" % (name, var),
              line is not None and listed.get(var, {}).get("default") == line.group(1),
              text[-1500:])
    check("%s: every listed setting has a description" % name,
          all(s["description"] for s in listed.values()), repr(listed))
    if name == "tcp":
        m = re.search(r"#define TCP_DEFAULT_CHUNK \((\d+)u \* (\d+)u\)", src)
        want = str(int(m.group(1)) * int(m.group(2))) if m else None
        check("tcp: TP_TCP_CHUNK_BYTES default is TCP_DEFAULT_CHUNK (%s)" % want,
              listed.get("TP_TCP_CHUNK_BYTES", {}).get("default") == want, repr(listed))
    if name == "loopback":
        # LB_SMALL_BYTES is shmcoll's SC_OS_BYTES (the one-shot slot size)
        sc = source(os.path.join(d, "..", "shmcoll"))
        m = re.search(r"#define SC_OS_BYTES +(\d+)", sc)
        check("loopback: TP_LOOPBACK_SMALL_BYTES names SC_OS_BYTES",
              m and m.group(1) in listed.get("TP_LOOPBACK_SMALL_BYTES", {}).get("default", ""),
              repr(listed.get("TP_LOOPBACK_SMALL_BYTES")))
sys.exit(1 if failures else 0)
