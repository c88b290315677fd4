#!/usr/bin/env python3
"""Trims fuzz/corpus/<target>/ to at most BUDGET files (default 300) that keep the most coverage.

`cargo fuzz cmin` keeps every input that adds a feature (an edge *and* each hit-count bucket of
it), which leaves thousands of files. This keeps the seeds' coverage as given, then picks corpus
files greedily: first by new edges, then by new features, ties to the smaller file. It reads the
coverage from a libFuzzer merge control file, so the fuzz target must be built first
(`cargo fuzz build -s none TARGET`).

Usage, from the repository root:  python3 fuzz/trim_corpus.py TARGET [BUDGET]
"""

import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.abspath(__file__))
BINARIES = os.path.join(ROOT, "target", "x86_64-unknown-linux-gnu", "release")


def coverage(binary, seeds, corpus, work):
    """Per input file: its features and its edges (libFuzzer's FT lines list all of a file's
    features; an 8-bit-counter feature is edge * 8 + hit-count bucket)."""
    control = os.path.join(work, "control")
    empty = os.path.join(work, "empty")
    os.mkdir(empty)
    subprocess.run(
        [binary, "-merge=1", f"-merge_control_file={control}", empty, seeds, corpus],
        check=True,
        cwd=work,  # where libFuzzer drops the crash file of an input that crashes
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lines = open(control).read().split("\n")
    count = int(lines[0])
    paths = lines[2 : 2 + count]
    features = {}
    for line in lines[2 + count :]:
        parts = line.split()
        if parts and parts[0] == "FT":
            features[paths[int(parts[1])]] = {int(f) for f in parts[2:]}
    return paths, features


def main():
    target = sys.argv[1]
    budget = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    seeds = os.path.join(ROOT, "seeds", target)
    corpus = os.path.join(ROOT, "corpus", target)
    with tempfile.TemporaryDirectory() as work:
        paths, features = coverage(os.path.join(BINARIES, target), seeds, corpus, work)
        edges = {p: {f // 8 for f in fs} for p, fs in features.items()}
        kept_seeds = [p for p in paths if os.path.dirname(p) == seeds]
        pool = [p for p in paths if os.path.dirname(p) == corpus and p in features]
        got_edges = set().union(set(), *(edges.get(p, set()) for p in kept_seeds))
        got_features = set().union(set(), *(features.get(p, set()) for p in kept_seeds))
        chosen = []
        for table, got in ((edges, got_edges), (features, got_features)):
            while len(chosen) < budget:
                rest = [p for p in pool if p not in chosen]
                best = max(rest, key=lambda p: (len(table[p] - got), -os.path.getsize(p)), default=None)
                if best is None or not table[best] - got:
                    break
                chosen.append(best)
                got_edges |= edges[best]
                got_features |= features[best]
        all_edges = set().union(set(), *edges.values())
        trimmed = os.path.join(work, "trimmed")
        os.mkdir(trimmed)
        for p in chosen:
            shutil.copy(p, trimmed)
        shutil.rmtree(corpus)
        shutil.copytree(trimmed, corpus)
    size = sum(os.path.getsize(os.path.join(corpus, f)) for f in os.listdir(corpus))
    print(f"{target}: kept {len(chosen)} of {len(pool)} files ({size} bytes); "
          f"edges {len(got_edges)} of {len(all_edges)}, with the seeds")


if __name__ == "__main__":
    main()
