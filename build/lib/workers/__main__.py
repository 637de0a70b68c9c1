"""``python -m workers <pool>``: run a worker pool."""

from .pools import main

main()
