#!/usr/bin/env python3
"""Finds import cycles among the modules of launcher/src (issue 12).

Each .rs file is a module (foo.rs and foo/mod.rs are `foo`). An edge A -> B
is any path in A's code (comments and #[cfg(test)] modules left out) that
names B: `crate::x::y`, `super::y`, `self::y` (resolved to the longest
module that exists), so `use super::plan::X` in container/rootfs.rs is
rootfs -> container::plan. A parent's bare use of its own child modules
(`rootfs::build` in container/mod.rs) is not read as an edge: a module
declares its children. Prints each strongly connected component of more
than one module and exits 1 if there is any.

Run: python3 tests/import_cycles.py [launcher/src]
"""
import os, re, sys

root = sys.argv[1] if len(sys.argv) > 1 else "launcher/src"
mods = {}
for d, _, files in os.walk(root):
    for f in files:
        if not f.endswith(".rs"):
            continue
        p = os.path.join(d, f)
        rel = os.path.relpath(p, root)[:-3].split(os.sep)
        if rel[-1] == "mod":
            rel = rel[:-1]
        if rel in (["lib"], ["main"]):
            rel = []
        mods[tuple(rel)] = p

def strip(text):
    text = re.sub(r"//[^\n]*", "", text)
    # Drop `#[cfg(test)] mod x { ... }` blocks (to the end of the file: they come last).
    m = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text)
    return text[: m.start()] if m else text

def resolve(parts):
    for n in range(len(parts), -1, -1):
        if tuple(parts[:n]) in mods:
            return tuple(parts[:n])
    return ()

edges = {m: set() for m in mods}
for m, p in mods.items():
    text = strip(open(p).read())
    # `use a::{b, c::d}` groups: expand one level.
    for g in re.finditer(r"\b((?:crate|super|self)(?:::\w+)*)::\{([^}]*)\}", text):
        for item in g.group(2).split(","):
            item = item.strip().split(" ")[0]
            if item:
                text += f"\n{g.group(1)}::{item}"
    for ref in re.finditer(r"\b((?:crate|super|self)(?:::\w+)+)", text):
        parts = ref.group(1).split("::")
        base = list(m)
        if parts[0] == "crate":
            base, parts = [], parts[1:]
        else:
            while parts and parts[0] in ("super", "self"):
                if parts[0] == "super":
                    base = base[:-1]
                parts = parts[1:]
        t = resolve(base + parts)
        if t != m:
            edges[m].add(t)

# Tarjan.
index, low, stack, on, sccs, n = {}, {}, [], set(), [], [0]
sys.setrecursionlimit(10000)
def visit(v):
    index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        c = []
        while True:
            w = stack.pop(); on.discard(w); c.append(w)
            if w == v:
                break
        if len(c) > 1:
            sccs.append(c)
for v in mods:
    if v not in index:
        visit(v)
name = lambda m: "::".join(m) or "crate"
for c in sccs:
    print("cycle:", ", ".join(sorted(name(m) for m in c)))
    for a in c:
        for b in sorted(edges[a]):
            if b in c:
                print(f"  {name(a)} -> {name(b)}")
print(f"{len(mods)} modules, {sum(len(e) for e in edges.values())} edges, {len(sccs)} cycles")
sys.exit(1 if sccs else 0)
