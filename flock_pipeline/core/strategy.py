"""What the strategy objects a game owns (row formats, objectives) share: they hold no state, so two instances of
one class are the same strategy (equal, one hash: usable as cache keys), shown by their class name."""

from __future__ import annotations


class Stateless:
    name: str

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.name))
