"""
A Sphinx directive that documents the ``authfsm`` command line from its argparse parser.

``authfsm.cli.build_parser()`` is the single source: each command gets a section with its
one-line summary and its ``--help`` text exactly as the terminal shows it (the parser uses
``RawDescriptionHelpFormatter``, whose hand-laid-out examples reST would mangle). The shared
epilog (exit codes) is left out of each command; the page documents it once.
"""

from __future__ import annotations

import argparse
import importlib
import os
from typing import Any

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

WIDTH = "100"  # fixed, so the page does not depend on the terminal that built it


class ArgparseHelp(SphinxDirective):
    """``.. argparse-help:: module:function`` -- one section per command of the parser."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        module_name, _, function = self.arguments[0].partition(":")
        parser = getattr(importlib.import_module(module_name), function)()
        self.env.note_dependency(importlib.import_module(module_name).__file__ or "")
        sections: list[nodes.Node] = [self._section(parser.prog, None, parser)]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                summaries = {choice.dest: choice.help for choice in action._choices_actions}
                for name, sub in action.choices.items():
                    sections.append(self._section(sub.prog, summaries.get(name), sub))
        return sections

    def _section(
        self, title: str, summary: str | None, parser: argparse.ArgumentParser
    ) -> nodes.section:
        section = nodes.section(ids=[nodes.make_id(title)])
        section += nodes.title(text=title)
        if summary:
            section += nodes.paragraph(text=summary)
        section += nodes.literal_block(text=_help(parser), language="text")
        return section


def _help(parser: argparse.ArgumentParser) -> str:
    epilog, parser.epilog = parser.epilog, None
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        return parser.format_help().rstrip()
    finally:
        parser.epilog = epilog
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("argparse-help", ArgparseHelp)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
