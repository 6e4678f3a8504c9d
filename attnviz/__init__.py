"""attnviz: see the attention of Hugging Face Transformer models.

The public API (imported lazily so that ``import attnviz`` stays light)::

    from attnviz import attend_text, attend_image
    result = attend_text("The animal didn't cross the street because it was too tired.")
    result.main.full            # float32 [layers, heads, query, key]

Views live in :mod:`attnviz.render` (functions returning matplotlib Figures) and
file output in :mod:`attnviz.report`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attnviz.errors import AttnvizError, InputError, ModelError, OutputError, UsageError
from attnviz.types import (
    AttentionMaps, GenerationAttention, ImageAttention, Prediction, TextAttention, TokenInfo, register_html_display,
)

from attnviz.version import __version__

_LAZY = {
    "attend_text": "attnviz.inputs.tokens",
    "load_text_model": "attnviz.inputs.tokens",
    "attend_image": "attnviz.inputs.patches",
    "load_image_model": "attnviz.inputs.patches",
    "capture": "attnviz.capture",
    "CapturePlan": "attnviz.capture",
    "attention_rollout": "attnviz.methods.rollout",
    "attend_generation": "attnviz.generate",
    "load_generation_model": "attnviz.generate",
    "load_attention": "attnviz.attention_file",
    "AttentionFile": "attnviz.attention_file",
}

__all__ = [
    "AttnvizError", "InputError", "ModelError", "OutputError", "UsageError",
    "AttentionMaps", "GenerationAttention", "ImageAttention", "Prediction", "TextAttention", "TokenInfo",
    *_LAZY,
]

if TYPE_CHECKING:  # pragma: no cover
    from attnviz.attention_file import AttentionFile, load_attention
    from attnviz.methods.rollout import attention_rollout
    from attnviz.capture import CapturePlan, capture
    from attnviz.generate import attend_generation, load_generation_model
    from attnviz.inputs.patches import attend_image, load_image_model
    from attnviz.inputs.tokens import attend_text, load_text_model


def _display_html(result):
    """The notebook display (``_repr_html_``), drawn by :mod:`attnviz.html`, imported on the first display."""
    from attnviz.html import repr_html

    return repr_html(result)


register_html_display(_display_html)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'attnviz' has no attribute {name!r}")
