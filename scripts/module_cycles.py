#!/usr/bin/env python3
"""Import circles between the modules of each crate (issue #18: "no import circle inside any
crate"). Every source file is one module (`a/mod.rs` is `a`, `a/b.rs` is `a::b`); a path that
code outside comments names (`crate::a::b::Item`, `super::x`, `self::x`, and `use` groups of
them) is an edge to the longest module prefix it names. `mod x;` declarations are not edges (a
parent owning a child is not a dependency), a module's use of its own items is not either, nor
is a reference to the crate root (lib.rs declares every module) or from a file's trailing
`#[cfg(test)] mod tests`.

Usage: scripts/module_cycles.py [CRATES_DIR]   (default: crates/ next to this script's folder)
Prints each circle as `crate: a -> b -> a` and exits 1 if there is any, 0 otherwise.
"""
import re
import sys
from pathlib import Path


def module_of(src: Path, file: Path) -> tuple:
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip_comments(text: str) -> str:
    # A unit-test module at the end of a file (`#[cfg(test)] mod tests { use super::*; … }`)
    # is not part of the module's dependencies, and its `super` would resolve wrongly here.
    text = re.split(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text)[0]
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def expand_groups(path: str) -> list:
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e] (enough of Rust's use-tree for this)."""
    m = re.match(r"^(.*?)\{(.*)\}$", path, flags=re.S)
    if not m:
        return [path]
    head, body = m.group(1), m.group(2)
    items, depth, cur = [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    items.append(cur)
    out = []
    for item in items:
        item = re.sub(r"\s+", "", item)
        if item:
            out.extend(expand_groups(head + item))
    return out


def references(code: str) -> list:
    refs = []
    for m in re.finditer(r"\buse\s+((?:crate|super|self)::[^;]*);", code, flags=re.S):
        refs.extend(expand_groups(re.sub(r"\s+", "", m.group(1))))
    body = re.sub(r"\buse\s+[^;]*;", "", code, flags=re.S)
    refs.extend(re.findall(r"\b(?:crate|super|self)(?:::\w+)+", body))
    return refs


def resolve(ref: str, here: tuple, is_mod_file: bool, modules: set):
    parts = ref.split("::")
    base = list(here) if is_mod_file else list(here)
    if parts[0] == "crate":
        base = []
    elif parts[0] == "super":
        # In `a/b.rs` (module a::b) super is `a`; in `a/mod.rs` (module a) it is the root.
        base = list(here[:-1])
        while len(parts) > 1 and parts[1] == "super":
            base = base[:-1]
            parts = parts[1:]
    rest = [p for p in parts[1:] if p not in ("self",)]
    best = tuple(base)
    for i in range(1, len(rest) + 1):
        cand = tuple(base + rest[:i])
        if cand in modules:
            best = cand
    return best


def cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

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

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def crate_cycles(src: Path) -> list:
    files = sorted(src.rglob("*.rs"))
    modules = {module_of(src, f): f for f in files}
    graph = {m: set() for m in modules}
    for m, f in modules.items():
        is_mod_file = f.name in ("mod.rs", "lib.rs", "main.rs")
        for ref in references(strip_comments(f.read_text())):
            target = resolve(ref, m, is_mod_file, set(modules))
            if target != m and target in graph and target != ():
                graph[m].add(target)
    return cycles(graph)


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "crates"
    found = 0
    for src in sorted(root.glob("*/src")):
        for comp in crate_cycles(src):
            found += 1
            names = ["::".join(m) or "(root)" for m in comp]
            print(f"{src.parent.name}: circle among {', '.join(names)}")
    if found == 0:
        print("no import circles between the modules of any crate")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
