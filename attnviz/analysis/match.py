"""The one token matcher of every command: how a typed ``--token`` is compared with token and word labels.

``attnviz text``'s focus token, ``attnviz generate``'s ``--token``, ``attnviz heads``' probes and the HTML
page all go through :func:`token_key`. No torch here: the CLI uses it to refuse a token that is not in
the text before anything heavy is imported.
"""

from __future__ import annotations

from attnviz.errors import UsageError

#: Typographic characters a reader types differently: each maps to what a keyboard gives.
_TYPED = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u2032": "'", "\u201c": '"', "\u201d": '"',
                        "\u2010": "-", "\u2011": "-", "\u2013": "-", "\u2014": "-"})


def token_key(label: str) -> str:
    """How attnviz compares a typed ``--token`` with a token or word label: case-folded, stripped,
    typographic apostrophes, quotes and dashes made plain (``didn’t`` == ``didn't``), and the continuation
    marker ``##`` dropped. The one token matcher of every command (text, generate, heads probes, HTML)."""
    return label.strip().casefold().translate(_TYPED).removeprefix("##")


def same_token(a: str, b: str) -> bool:
    """True when two labels name the same token or word for a reader (see :func:`token_key`)."""
    return token_key(a) == token_key(b)


def match_labels(labels, token: str, index: int | None, what: str = "token", listing_labels=None) -> int:
    """The position in ``labels`` of ``token`` (see :func:`token_key`), the ``index``-th (0-based) of several.

    ``what`` names the labels in messages ("token", "word", "generated token").

    Raises:
        UsageError: empty ``token``; not found; found more than once and no ``index``; ``index`` out of
        range. The message lists the labels (cut at 600 characters).
    """
    want = token_key(token)
    if not want:
        raise UsageError("--token is empty")
    hits = [i for i, lab in enumerate(labels) if token_key(lab) == want]
    shown = labels if listing_labels is None else listing_labels
    listing = " ".join(f"{i}:{lab}" for i, lab in enumerate(shown))
    if len(listing) > 600:
        listing = listing[:600] + " ..."
    if not hits:
        raise UsageError(f"{what} '{token}' is not in the input; the {what}s are: {listing}")
    if index is None:
        if len(hits) > 1:
            raise UsageError(
                f"{what} '{token}' occurs {len(hits)} times (at {', '.join(map(str, hits[:10]))}{', ...' if len(hits) > 10 else ''}); "
                f"pick one with --token-index 0..{len(hits) - 1}"
            )
        index = 0
    if not 0 <= index < len(hits):
        raise UsageError(f"--token-index {index} is out of range: '{token}' occurs {len(hits)} times (0..{len(hits) - 1})")
    return hits[index]


def occurrence(labels, position: int) -> int:
    """Which occurrence (0-based, for ``--token-index``) of its own label the unit at ``position`` is."""
    key = token_key(labels[position])
    return sum(1 for lab in labels[:position] if token_key(lab) == key)
