#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Files point down: within each library, plugin or tool, no two source
files use each other's symbols, directly or through others.

For every target object folder (<target>.p, as Meson names them) under the
given build folders, build the graph "a.o uses a symbol b.o defines" from
`nm` and report every cycle (strongly connected set of two or more files).

usage: check-layering.py BUILD_SUBDIR...
"""
import os
import subprocess
import sys


def symbols(obj):
    out = subprocess.run(["nm", obj], check=True, capture_output=True, text=True).stdout
    defined, undefined = set(), set()
    for line in out.splitlines():
        f = line.split()
        if len(f) == 2 and f[0] == "U":
            undefined.add(f[1])
        elif len(f) == 3 and f[1] in "TDBRGSVW" and f[1].isupper():
            defined.add(f[2])
    return defined, undefined


def cycles(graph):
    """Tarjan's strongly connected components of size > 1."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def check_target(folder):
    objs = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".o"))
    syms = {o: symbols(o) for o in objs}
    owner = {}
    for o, (defined, _) in syms.items():
        for s in defined:
            owner[s] = o
    graph = {o: set() for o in objs}
    uses = {}
    for o, (_, undefined) in syms.items():
        for s in undefined:
            d = owner.get(s)
            if d and d != o:
                graph[o].add(d)
                uses.setdefault((o, d), []).append(s)
    bad = cycles(graph)
    name = lambda o: os.path.basename(o).rsplit(".", 1)[0]
    for comp in bad:
        print(f"{os.path.basename(folder)}: cycle among {', '.join(name(o) for o in comp)}")
        for a in comp:
            for b in comp:
                if (a, b) in uses:
                    print(f"  {name(a)} uses {name(b)}: {', '.join(sorted(uses[(a, b)])[:6])}")
    return len(objs), len(bad)


def main(roots):
    targets = bad = 0
    for root in roots:
        for dirpath, dirnames, _ in os.walk(root):
            for d in sorted(dirnames):
                if d.endswith(".p"):
                    n, b = check_target(os.path.join(dirpath, d))
                    if n > 1:
                        targets += 1
                    bad += b
    print(f"layering: {targets} targets checked, " + ("no cycles" if not bad else f"{bad} cycle(s)"))
    return 1 if bad or not targets else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
