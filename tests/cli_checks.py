"""Checks shared by the command tests: one error line, and reading a ``--save-attn`` file."""

from __future__ import annotations


def one_error_line(result, code: int) -> str:
    """Assert a CLI result exited with ``code`` after exactly one ``attnviz: error:`` line on stderr; return it."""
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("attnviz: error:"), result.stderr
    return lines[0]


def load_saved(path):
    """Every tensor of a safetensors file and its metadata: ``({name: tensor}, {key: str})``."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
