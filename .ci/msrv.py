"""Checks that no dependency built for the workspace (normal and build
dependencies, on this platform) declares a rust-version newer than the
workspace's own MSRV. Together with clippy's `incompatible_msrv` lint (on
under -D warnings), which flags standard-library APIs newer than
`rust-version`, this is how CI holds the MSRV: a 1.85 toolchain itself
cannot be installed on CI (only package registries are reachable)."""

import json
import subprocess
import sys


def version(v):
    """`1.85` and `1.85.0` are the same version: pad to three parts."""
    parts = [int(x) for x in v.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


meta = json.loads(
    subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--filter-platform", "x86_64-unknown-linux-gnu"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
)
packages = {p["id"]: p for p in meta["packages"]}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
ours = {i: packages[i].get("rust_version") for i in meta["workspace_members"]}
if len(set(ours.values())) != 1 or None in ours.values():
    sys.exit(f"workspace crates disagree on rust-version: {ours}")
msrv = next(iter(ours.values()))
seen, stack = set(), list(ours)
while stack:
    i = stack.pop()
    if i in seen:
        continue
    seen.add(i)
    for d in nodes[i]["deps"]:
        # Normal and build dependencies only (dev-dependencies build tests).
        if any(k["kind"] in (None, "build") for k in d["dep_kinds"]):
            stack.append(d["pkg"])
newer = sorted(
    f"{packages[i]['name']} {packages[i]['version']} needs {packages[i]['rust_version']}"
    for i in seen
    if packages[i].get("rust_version") and version(packages[i]["rust_version"]) > version(msrv)
)
if newer:
    sys.exit(f"MSRV {msrv} is not true: " + "; ".join(newer))
print(f"MSRV {msrv}: {len(seen)} crates built for the workspace, none needs a newer Rust")
