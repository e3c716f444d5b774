"""Takedown Registry: a self-hostable perceptual-hash takedown registry.

The package is layered: ``errors``, ``domain`` and ``config`` (stdlib only) form the vocabulary;
``hashing`` and ``index`` are pure numeric cores; ``store`` persists; ``service`` speaks the
domain's verbs; ``web`` and the top-level ``cli`` package are thin edges; ``bootstrap`` wires them.
"""

__version__ = "0.1.0"
