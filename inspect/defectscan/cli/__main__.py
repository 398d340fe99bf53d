"""``python -m defectscan.cli``: the same entry point as the ``defectscan`` script."""

from defectscan.cli import main

main()
