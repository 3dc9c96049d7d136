#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Check that a shared library exports exactly the functions its public
headers declare with TP_API, both ways, and that no public function
declaration lacks TP_API (which would hide it).

usage: check-exports.py LIB.so HEADER... [-- LIB.so HEADER...]...
"""
import re
import subprocess
import sys


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def top_level_statements(text):
    """Statements at file scope (extern "C" braces do not count), with
    preprocessor lines removed."""
    text = "\n".join(l for l in text.split("\n") if not l.lstrip().startswith("#"))
    text = re.sub(r'extern\s+"C"\s*\{', "", text)
    depth, cur = 0, ""
    for ch in text:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth = max(depth - 1, 0)
        if depth == 0 and ch == ";":
            yield cur.strip()
            cur = ""
        elif depth == 0 and ch != "}":
            cur += ch
        elif ch == "}" and depth == 0:
            cur = ""  # end of a struct/enum body: its typedef name follows


def declared(header):
    marked, unmarked = set(), set()
    for st in top_level_statements(strip_comments(open(header).read())):
        if st.startswith("typedef") or "(" not in st:
            continue
        m = re.search(r"\b(\w+)\s*\(", st)
        if not m:
            continue
        (marked if re.match(r"TP_API\b", st) else unmarked).add(m.group(1))
    return marked, unmarked


def exported(lib):
    out = subprocess.run(["nm", "-D", "--defined-only", lib], check=True,
                         capture_output=True, text=True).stdout
    return {f[2] for f in (l.split() for l in out.splitlines()) if len(f) == 3 and f[1] == "T"}


def main(argv):
    groups, cur = [], []
    for a in argv:
        if a == "--":
            groups.append(cur)
            cur = []
        else:
            cur.append(a)
    groups.append(cur)
    bad = 0
    for lib, *headers in groups:
        want = set()
        for h in headers:
            marked, unmarked = declared(h)
            for name in sorted(unmarked):
                print(f"{h}: {name}() is declared without TP_API, so {lib} hides it")
                bad += 1
            want |= marked
        have = exported(lib)
        for name in sorted(have - want):
            print(f"{lib} exports {name}, which no public header declares: "
                  "make it static, or give it an internal name (tpi_/tpl_)")
            bad += 1
        for name in sorted(want - have):
            print(f"{lib} does not export {name}, declared with TP_API in {' '.join(headers)}")
            bad += 1
        print(f"{lib}: {len(have)} exported, {len(want)} declared")
    print("exports: " + ("OK" if not bad else f"{bad} problem(s)"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
