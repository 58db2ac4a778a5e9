"""``python -m altclip``: the same as the ``altclip`` command."""

from altclip.cli import main

main()
