"""Words for the messages people read: counts with their plural, the closest known name, bounded lists.

One place for these so that ``pragma`` says "1 compute node" and "2 compute
nodes" everywhere, and every "unknown X" message suggests and lists the same
way. Names given here may come from a repository or a server: each is escaped
and shortened (:func:`shown`), lists are cut to :data:`MAX_LISTED` names,
and suggestions consider at most :data:`MAX_CANDIDATES` of them, so a
catalogue of any size costs little and stays one short line.
"""

from __future__ import annotations

TYPE_CHECKING = False  # the pragma command imports this at start-up: no typing at run time
if TYPE_CHECKING:
    from collections.abc import Sequence

#: How many names a message lists before "and N more".
MAX_LISTED = 20
#: How many known names a suggestion is looked for among.
MAX_CANDIDATES = 10_000
#: How much of one name a list shows (valid names are at most 128 characters).
MAX_NAME = 128


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``"1 compute node"``, ``"2 compute nodes"``, ``"0 compute nodes"`` (``nouns``: an irregular plural)."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def closest(word: str, known: Sequence[str]) -> str | None:
    """The known name most like ``word`` (:func:`difflib.get_close_matches`), ``None`` when none is close."""
    import difflib  # only when a message needs it: ``pragma --help`` stays light

    # a name over 2.5 times longer than ``word`` can never reach the 0.6 cutoff: not compared at all
    candidates = [name for name in known[:MAX_CANDIDATES] if isinstance(name, str) and len(name) <= 2.5 * len(word)]
    matches = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    if not matches:  # a different case only ("Demo" for "demo") is close too
        lowered = {name.lower(): name for name in candidates}
        matches = [lowered[m] for m in difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)]
    return matches[0] if matches else None


def listing(names: Sequence[str], limit: int = MAX_LISTED) -> str:
    """``"a, b, c"`` (each name :func:`shown`); more than ``limit`` names: the first ``limit`` and ``"and N more"``."""
    text = ", ".join(shown(name) for name in names[:limit])
    return text if len(names) <= limit else f"{text} and {len(names) - limit} more"


def shown(name: object) -> str:
    """``name`` as a message shows it: control characters escaped (:func:`~pragma_core.printable.printable`),
    then cut to :data:`MAX_NAME` characters (``"abc..."``), so a hostile name stays short."""
    from .printable import printable

    text = printable(str(name))
    return text if len(text) <= MAX_NAME else text[:MAX_NAME] + "..."
