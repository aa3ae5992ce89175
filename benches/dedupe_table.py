#!/usr/bin/env python3
"""dedupe_table.py RESULTS_DIR DATASET... -> markdown on stdout (python3 stdlib only)

One table per dataset: the real backups of tessera, restic and borg (medians over the
rounds in RESULTS_DIR/anchors.jsonl + extra.jsonl, written by benches/compare.sh) and
`tessera analyze` for each chunker (RESULTS_DIR/analyze-DATASET.json). Columns: repository
bytes (real: du -sb after all versions; analyze: the stored-bytes estimate of data chunks),
logical / repository bytes (dedup and compression together: comparable across tools), dedup
ratio alone (logical / unique plaintext; tessera's `stats` and analyze only), objects or
files created, first backup and restore time, peak memory. MiB = 2^20 bytes.
"""
import json
import os
import statistics
import sys
from collections import defaultdict


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, f="{:.1f}"):
    return "-" if x is None else f.format(x)


def real_runs(rd):
    runs = defaultdict(list)
    path = os.path.join(rd, "anchors.jsonl")
    if os.path.exists(path):
        for line in open(path):
            if line.strip():
                o = json.loads(line)
                runs[o["run"]].append(o)
    out = defaultdict(list)  # (dataset, tool) -> per-round dicts
    path = os.path.join(rd, "extra.jsonl")
    if not os.path.exists(path):
        return out
    for line in open(path):
        if not line.strip():
            continue
        e = json.loads(line)
        summ = [r for r in runs.get(e["run"], []) if r["step"] == "summary"]
        if not summ:
            continue
        s = summ[0]
        stats = e.get("tessera_stats") or {}
        out[(e["dataset"], e["tool"])].append({
            "repo": s["repo_bytes"],
            "total": s.get("ratio"),
            "dedup": stats.get("dedup_ratio"),
            "files": e.get("repo_files"),
            "first": s["first_backup_s"],
            "restore": s["restore_s"],
            "rss": s["max_rss_kib"] / 1024 if s.get("max_rss_kib") else None,
        })
    return out


def main():
    rd, datasets = sys.argv[1], sys.argv[2:]
    real = real_runs(rd)
    for ds in datasets:
        print(f"\n### {ds}\n")
        print("| what | repository MiB | logical / repository | dedup ratio | objects / repo files | first backup s | restore s | peak RSS MiB |")
        print("|---|---|---|---|---|---|---|---|")
        for tool in ("tessera", "restic", "borg"):
            rows = real.get((ds, tool))
            if not rows:
                continue
            m = {k: med([r[k] for r in rows]) for k in rows[0]}
            print(f"| {tool} backup (n={len(rows)}) | {fmt(m['repo'] / 2**20)} | {fmt(m['total'], '{:.2f}')} | {fmt(m['dedup'], '{:.2f}')} "
                  f"| {fmt(m['files'], '{:.0f}')} | {fmt(m['first'], '{:.2f}')} | {fmt(m['restore'], '{:.2f}')} | {fmt(m['rss'], '{:.0f}')} |")
        path = os.path.join(rd, f"analyze-{ds}.json")
        if not os.path.exists(path):
            continue
        a = json.load(open(path))
        for c in a["configs"]:
            t = c["total"]
            total = t['logical_bytes'] / t['stored_bytes'] if t['stored_bytes'] else None
            print(f"| analyze {c['chunker']} | {fmt(t['stored_bytes'] / 2**20)} (data, est.) | {fmt(total, '{:.2f}')} | {fmt(t['dedup_ratio'], '{:.2f}')} "
                  f"| {t['objects']} ({t['unique_chunks']} chunks) | - | - | - |")
        extra = os.path.join(rd, f"analyze-{ds}.time")
        if os.path.exists(extra):
            print(f"\nanalyze, all chunkers in one run: {open(extra).read().strip()}")


if __name__ == "__main__":
    main()
