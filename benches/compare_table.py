#!/usr/bin/env python3
"""compare_table.py RESULTS_DIR  -> markdown on stdout (python3 stdlib only)

Reads RESULTS_DIR/anchors.jsonl (written by /work/shared/bench/anchors.sh) and
RESULTS_DIR/extra.jsonl (written by benches/compare.sh: round, repo file count,
tessera stats) and prints:
  1. one row per (dataset, tool): medians over rounds of first backup time and
     MB/s, next-version backups, no-change re-backup, restore and the cp -a
     control taken right after it, repository size after all versions, files
     in the repository, peak RSS, restore check;
  2. tessera/restic (and tessera/borg) ratios per dataset, each computed within
     one round and then the median taken over rounds, against the targets.
MB = 10^6 bytes, MiB = 2^20 bytes.
"""
import json
import os
import statistics
import sys
from collections import OrderedDict, defaultdict


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, f="{:.1f}", none="-"):
    return none if x is None else f.format(x)


def main():
    rd = sys.argv[1] if len(sys.argv) > 1 else "."
    runs = defaultdict(list)
    with open(os.path.join(rd, "anchors.jsonl")) as f:
        for line in f:
            if line.strip():
                o = json.loads(line)
                runs[o["run"]].append(o)
    extra = []
    p = os.path.join(rd, "extra.jsonl")
    if os.path.exists(p):
        with open(p) as f:
            extra = [json.loads(l) for l in f if l.strip()]

    # (dataset, tool) -> list of records, one per completed round
    recs = OrderedDict()
    failed = []
    for e in extra:
        rows = runs.get(e["run"], [])
        summ = [r for r in rows if r["step"] == "summary"]
        if not summ:
            failed.append(e)
            continue
        s = summ[0]
        steps = {(r["step"], r["version"]): r for r in rows if r["step"] != "summary"}
        backup_rss = max((r["max_rss_kib"] or 0) for r in rows if r["step"] in ("backup", "nochange"))
        restore = [r for r in rows if r["step"] == "restore"][0]
        rec = {
            "round": e["round"],
            "first_s": s["first_backup_s"],
            "first_mbs": s["first_backup_mb_per_s"],
            "next_mean_s": s["next_backup_mean_s"],
            "nochange_s": s["nochange_s"],
            "restore_s": s["restore_s"],
            "cp_s": s.get("restore_cp_floor_s"),
            "repo_bytes": s["repo_bytes"],
            "repo_files": e.get("repo_files"),
            "rss_kib": s["max_rss_kib"],
            "backup_rss_kib": backup_rss,
            "restore_rss_kib": restore["max_rss_kib"],
            "identical": s["restore_identical"],
            "meta": s.get("metadata_mismatches") or 0,
            "meta_kinds": s.get("metadata_mismatch_kinds") or "",
            "logical": s["total_logical_bytes"],
            "version": s["tool_version"],
            "dedup": (e.get("tessera_stats") or {}).get("dedup_ratio"),
            "rc": e["rc"],
        }
        recs.setdefault((e["dataset"], e["tool"]), []).append(rec)

    datasets = list(OrderedDict.fromkeys(k[0] for k in recs))
    order = {"tessera": 0, "restic": 1, "borg": 2}
    keys = sorted(recs, key=lambda k: (datasets.index(k[0]), order.get(k[1], 9), k[1]))

    print("| dataset | tool | n | first backup s | first MB/s | next backups mean s | no-change s | restore s | cp -a control s | repo MiB | files in repo | peak RSS MiB (backup / restore) | logical/repo | restore identical |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for k in keys:
        rs = recs[k]
        m = lambda f: med([r[f] for r in rs])
        ident = "yes" if all(r["identical"] for r in rs) else "NO"
        mm = max(r["meta"] for r in rs)
        if mm:
            ident += f" (metadata diffs: {mm} {rs[-1]['meta_kinds']})"
        rbytes = m("repo_bytes")
        print(f"| {k[0]} | {k[1]} | {len(rs)} | {fmt(m('first_s'), '{:.2f}')} | {fmt(m('first_mbs'), '{:.0f}')} "
              f"| {fmt(m('next_mean_s'), '{:.2f}')} | {fmt(m('nochange_s'), '{:.2f}')} | {fmt(m('restore_s'), '{:.2f}')} "
              f"| {fmt(m('cp_s'), '{:.2f}')} | {rbytes / 2**20:.1f} | {fmt(m('repo_files'), '{:.0f}')} "
              f"| {max(r['backup_rss_kib'] for r in rs) / 1024:.0f} / {max(r['restore_rss_kib'] or 0 for r in rs) / 1024:.0f} "
              f"| {med([r['logical'] / r['repo_bytes'] for r in rs]):.2f} | {ident} |")

    # per-round ratios, then median over rounds
    def ratio(ds, other, f):
        a = {r["round"]: r for r in recs.get((ds, "tessera"), [])}
        b = {r["round"]: r for r in recs.get((ds, other), [])}
        out = [f(a[x], b[x]) for x in a if x in b]
        out = [o for o in out if o is not None]
        return med(out)

    def div(x, y):
        return None if x is None or y in (None, 0) else x / y

    print()
    print("Ratios (each computed within one round, median over rounds). Targets: first backup throughput tessera/restic >= 3 on edits; "
          "no-change speed-up (restic s / tessera s) >= 5; restore speed-up >= 2; repo size tessera/restic and tessera/borg <= 1; "
          "peak RSS tessera/restic <= 0.5.")
    print()
    print("| dataset | first-backup throughput tessera/restic | no-change speed-up vs restic | restore speed-up vs restic | repo size tessera/restic | repo size tessera/borg | peak RSS tessera/restic | first-backup throughput tessera/borg | no-change speed-up vs borg | restore speed-up vs borg |")
    print("|---|---|---|---|---|---|---|---|---|---|")

    def mark(x, ok):
        if x is None:
            return "-"
        return f"{x:.2f} {'ok' if ok(x) else 'MISS'}"

    for ds in datasets:
        thr = ratio(ds, "restic", lambda a, b: div(a["first_mbs"], b["first_mbs"]))
        noc = ratio(ds, "restic", lambda a, b: div(b["nochange_s"], a["nochange_s"]))
        rst = ratio(ds, "restic", lambda a, b: div(b["restore_s"], a["restore_s"]))
        rsz = ratio(ds, "restic", lambda a, b: div(a["repo_bytes"], b["repo_bytes"]))
        bsz = ratio(ds, "borg", lambda a, b: div(a["repo_bytes"], b["repo_bytes"]))
        rss = ratio(ds, "restic", lambda a, b: div(a["rss_kib"], b["rss_kib"]))
        bthr = ratio(ds, "borg", lambda a, b: div(a["first_mbs"], b["first_mbs"]))
        bnoc = ratio(ds, "borg", lambda a, b: div(b["nochange_s"], a["nochange_s"]))
        brst = ratio(ds, "borg", lambda a, b: div(b["restore_s"], a["restore_s"]))
        thr_s = mark(thr, lambda x: x >= 3) if ds == "edits" else fmt(thr, "{:.2f}")
        print(f"| {ds} | {thr_s} | {mark(noc, lambda x: x >= 5)} | {mark(rst, lambda x: x >= 2)} "
              f"| {mark(rsz, lambda x: x <= 1)} | {mark(bsz, lambda x: x <= 1)} | {mark(rss, lambda x: x <= 0.5)} "
              f"| {fmt(bthr, '{:.2f}')} | {fmt(bnoc, '{:.2f}')} | {fmt(brst, '{:.2f}')} |")

    dd = [(k[0], med([r["dedup"] for r in recs[k]])) for k in keys if k[1] == "tessera"]
    if dd:
        print()
        print("tessera `stats --json` dedup_ratio: " + ", ".join(f"{d}: {fmt(x, '{:.2f}')}" for d, x in dd))
    print()
    for k in keys:
        print(f"- {k[1]} on {k[0]}: {recs[k][-1]['version']}")
    if failed:
        print()
        for e in failed:
            print(f"- FAILED: round {e['round']} {e['dataset']} {e['tool']} rc={e['rc']} run {e['run']}")


if __name__ == "__main__":
    main()
