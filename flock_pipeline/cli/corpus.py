"""`flock corpus value` (what training on a release is worth) and `flock audit` (re-run a recorded score)."""

from __future__ import annotations

import json
from statistics import mean

from flock_pipeline.cli.common import _quiet_torch
from flock_pipeline.core.untrusted import finite


def cmd_corpus_value(args) -> int:
    from flock_pipeline.errors import UsageError
    from flock_pipeline.resources import build_resources
    from flock_pipeline.validator.value import corpus_value

    _quiet_torch()
    resources = build_resources()
    store = resources["store"]
    with store.session():
        epoch = args.epoch
        if epoch is None:
            epoch = store.latest_corpus_epoch()
            if epoch is None:
                raise UsageError("no corpus release yet: run an epoch first (flock epoch run, or flock demo)")
        values, skipped = corpus_value(epoch, resources["settings"], store, resources["evaluator"],
                                       resources["hub"], again=args.again)
    if args.json:
        doc = {"epoch": epoch, "configs": [_value_doc(v) for v in values], "not_measured": skipped}
        print(json.dumps(finite(doc), indent=1, allow_nan=False))
        return 0
    for v in values:
        randoms = list(v.random_losses)
        print(f"epoch {epoch}, {v.config} ({v.objective} loss on {v.heldout_repo}, {v.heldout_rows} held-out rows; "
              f"{v.rows} rows per arm):")
        print(f"  this release        {v.release_loss:.4f}")
        if randoms:
            print(f"  random rows         {mean(randoms):.4f} (mean of {len(randoms)} draws, "
                  f"{min(randoms):.4f}-{max(randoms):.4f})")
        if v.previous_loss is not None:
            print(f"  previous release    {v.previous_loss:.4f} (epoch {v.previous_epoch})")
        if v.base_loss is not None:
            print(f"  base model          {v.base_loss:.4f}")
    for config, why in skipped.items():
        print(f"epoch {epoch}, {config}: not measured: {why}")
    return 0


def _value_doc(v) -> dict:
    randoms = list(v.random_losses)
    return {"config": v.config, "competition": v.competition, "objective": v.objective,
            "heldout_repo": v.heldout_repo, "heldout_revision": v.heldout_revision, "heldout_rows": v.heldout_rows,
            "rows": v.rows, "release_loss": v.release_loss, "random_losses": randoms,
            "random_mean": mean(randoms) if randoms else None, "base_loss": v.base_loss,
            "previous_epoch": v.previous_epoch, "previous_loss": v.previous_loss, "recipe_hash": v.recipe_hash,
            "seconds": v.seconds}


def cmd_audit(args) -> int:
    from flock_pipeline.resources import build_resources
    from flock_pipeline.validator.audit import audit_score

    _quiet_torch()
    resources = build_resources()
    if args.reports:
        from flock_pipeline.validator.audit import audit_published
        from flock_pipeline.validator.reports import published_entry

        entry = published_entry(resources["hub"], args.reports, args.hotkey, args.epoch)
        result = audit_published(args.reports, args.hotkey, entry, resources["evaluator"], resources["hub"])
    else:
        store = resources["store"]
        with store.session():
            result = audit_score(args.epoch, args.hotkey, resources["settings"], store, resources["evaluator"],
                                 resources["hub"])
    if args.json:
        print(json.dumps(finite(result.to_json()), indent=1, allow_nan=False))
    else:
        print(f"epoch {result.epoch}, {result.hotkey}: {result.verdict}")
        if result.rerun_loss is not None:
            print(f"  eval loss recorded {result.recorded_loss:.6f}, re-run {result.rerun_loss:.6f}; largest per-row "
                  f"difference {result.max_row_difference:.3g}")
        for line in result.differences:
            print(f"  {line}")
    return 0 if result.verdict == "match" else 1
