"""Which competition a commitment, a shard or an epoch belongs to: the lookups every validator step shares."""

from __future__ import annotations

from flock_pipeline.core.competitions import Competition, CompetitionSet, CurationCompetition
from flock_pipeline.resources.settings import ValidatorSettingsResource
from flock_pipeline.resources.store import StoreResource
from flock_pipeline.store import EpochCompetitionRecord

# A shard recorded for a competition that is no longer configured (or before competitions existed) is evaluated as
# chat rows with the SFT objective and no recipe overrides of its own.
UNCONFIGURED = CurationCompetition(name="unconfigured")


def shard_competition(settings: ValidatorSettingsResource, competition: str | None) -> Competition:
    """The configured competition of that name; `UNCONFIGURED` for a shard without one or one no longer
    configured."""
    if competition is None:
        return UNCONFIGURED
    try:
        return settings.competition_set().by_name(competition)
    except KeyError:
        return UNCONFIGURED


def competition_recipe(settings: ValidatorSettingsResource, competition: str | None) -> dict:
    """The training-recipe overrides of a competition (its objective's only, for a shard without one)."""
    return shard_competition(settings, competition).recipe_overrides()


def competition_of(c, competitions: CompetitionSet) -> str | None:
    """The competition a recorded commitment belongs to (rows from before competitions existed: the first one)."""
    if c.competition is not None and c.competition in {x.name for x in competitions}:
        return c.competition
    match = competitions.for_commitment(c.competition_id) if isinstance(c.competition_id, str) else None
    return match.name if match is not None else competitions.competitions[0].name


def epoch_setups(store: StoreResource, epoch: int,
                 competitions: CompetitionSet) -> dict[str, EpochCompetitionRecord]:
    """competition name -> its recorded eval set and round for `epoch`. An epoch opened before competitions existed
    has none recorded: it ran one game on the epoch's eval set, which the first configured competition takes."""
    setups = {r.competition: r for r in store.epoch_competitions(epoch)}
    if not setups:
        info = store.epoch_info(epoch)
        if info is not None:
            first = competitions.competitions[0]
            setups[first.name] = EpochCompetitionRecord(
                epoch=epoch, competition=first.name, kind=first.kind, share=float(first.share),
                eval_repo=info.eval_repo, eval_revision=info.eval_revision, round_id="epoch", phase="scoring",
                snapshot_block=int(info.block))
    return setups
