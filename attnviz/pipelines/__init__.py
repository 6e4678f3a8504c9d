"""Pipelines: one per command, in the library, each returning a typed result that owns its ``to_json()``.

A pipeline does load -> prepare -> capture -> methods/analyses -> render -> write for one
command and never prints: it reports what the user should know as
:class:`attnviz.errors.AttnvizWarning` warnings (the CLI prints them as one line each) and
raises :class:`attnviz.errors.AttnvizError` subclasses for bad input. ``attnviz.cli`` only
turns options into a request, calls ``run()`` and prints the result (human or ``--json``).

- :mod:`attnviz.pipelines.text` -- ``attnviz text``
- :mod:`attnviz.pipelines.image` -- ``attnviz image``
- :mod:`attnviz.pipelines.generate` -- ``attnviz generate``
- :mod:`attnviz.pipelines.heads` -- ``attnviz heads``
- :mod:`attnviz.pipelines.check` -- ``attnviz check``

Shared option groups (model, output, figure style) are in :mod:`attnviz.pipelines.common`.
"""
