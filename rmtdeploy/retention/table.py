"""The criteria table: mean ± std over seeds per (family, criterion, keep), and the goal's status per family."""

from __future__ import annotations

import statistics

from rmtdeploy.retention.criteria import PEERS, SPECTRAL
from rmtdeploy.retention.settings import Settings


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(points: list[dict], families: list[str], settings: Settings) -> dict:
    """Mean ± std over seeds per (family, criterion, keep) (``table``: ``macs_kept``, ``pruned``,
    ``distilled`` = after the distillation or fine-tune, ``scoring_s``, ``kd_below_start`` = how many seeds
    ended below their pruned start, ``seeds``), and the goal's status per family (``goals``)."""
    table: dict = {}
    for family in families:
        for criterion in settings.criteria:
            for keep in settings.keeps:
                rows = [
                    p for p in points if (p["family"], p["criterion"], p["keep"]) == (family, criterion, keep)
                ]
                if not rows:
                    continue
                table.setdefault(family, {}).setdefault(criterion, {})[str(keep)] = {
                    "macs_kept": mean_std([r["macs_kept"] for r in rows]),
                    "pruned": mean_std([r["top1_pruned"] for r in rows]),
                    "distilled": mean_std([r[settings.after_key] for r in rows]),
                    "scoring_s": mean_std([r["scoring_s"] for r in rows]),
                    "kd_below_start": sum(r[settings.after_key] < r["top1_pruned"] for r in rows),
                    "seeds": len(rows),
                }
    goals = {family: goal(points, family, settings) for family in families}
    return {"table": table, "goals": goals}


def _paired(points, family, keep, criterion, column) -> dict[int, float]:
    return {p["seed"]: p[column] for p in points
            if (p["family"], p["keep"], p["criterion"]) == (family, keep, criterion)}  # fmt: skip


def goal(points: list[dict], family: str, settings: Settings) -> dict:
    """The goal for one family: the best spectral strategy (highest mean pre-fine-tune top-1 over the
    curve) vs group L2 (``magnitude``): above it at every keep, ≥ 2 points ahead at the deepest keep with
    the per-seed paired gap positive in every seed; after distillation, level with every TP criterion
    (mean within one std of the best of them, or above). Empty when the run lacks ``magnitude`` or every
    spectral strategy."""
    spectral = [c for c in SPECTRAL if c in settings.criteria]
    if "magnitude" not in settings.criteria or not spectral:
        return {}

    def curve_mean(criterion):
        return statistics.fmean(
            statistics.fmean(_paired(points, family, k, criterion, "top1_pruned").values())
            for k in settings.keeps
        )

    best = max(spectral, key=curve_mean)
    gaps = {}
    for keep in settings.keeps:
        ours, l2 = (_paired(points, family, keep, c, "top1_pruned") for c in (best, "magnitude"))
        diffs = [ours[s] - l2[s] for s in ours if s in l2]
        gaps[str(keep)] = {"mean": statistics.fmean(diffs), "std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
                           "min": min(diffs)}  # fmt: skip
    deepest = str(min(settings.keeps))
    peers = [c for c in ("magnitude", *PEERS) if c in settings.criteria]
    after = {}
    for keep in settings.keeps:
        column = settings.after_key
        ours = mean_std(list(_paired(points, family, keep, best, column).values()))
        top_peer = max(
            peers, key=lambda c: statistics.fmean(_paired(points, family, keep, c, column).values())
        )
        theirs = mean_std(list(_paired(points, family, keep, top_peer, column).values()))
        after[str(keep)] = {"ours": ours[0], "best_peer": top_peer, "peer": theirs[0],
                            "level": ours[0] >= theirs[0] - max(ours[1], theirs[1])}  # fmt: skip
    return {
        "best_spectral": best,
        "gap_pruned_vs_l2": gaps,
        "above_l2_every_keep": all(g["mean"] > 0 for g in gaps.values()),
        "deep_gap_met": gaps[deepest]["mean"] >= 2.0 and gaps[deepest]["min"] > 0,
        "after_distill": after,
        "level_after_distill": all(a["level"] for a in after.values()),
    }
