"""``python -m cli``: the same as the ``takedown`` console script."""

from cli.main import main

main()
