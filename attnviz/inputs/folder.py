"""Inputs given as a folder: the files of some kinds in it, in name order, up to a cap."""

from __future__ import annotations

from pathlib import Path

from attnviz.errors import InputError


def files_in(folder: str | Path, suffixes: tuple[str, ...], cap: int, noun: str) -> list[str]:
    """Paths of the files in ``folder`` (not below it) whose suffix is one of ``suffixes`` (lower case, with the
    dot), sorted by name; the first ``cap`` of them, with a notice when more were there.

    Raises:
        InputError: no such file in the folder (``noun`` names them: "photos", "audio files").
    """
    import warnings

    from attnviz.errors import AttnvizWarning

    found = sorted(str(q) for q in Path(folder).iterdir() if q.is_file() and q.suffix.lower() in suffixes)
    if not found:
        raise InputError(f"'{folder}' holds no {noun} ({', '.join(suffixes)})")
    if len(found) > cap:
        warnings.warn(f"reading the first {cap} of the {len(found)} {noun} in '{folder}'", AttnvizWarning, stacklevel=2)
        found = found[:cap]
    return found
