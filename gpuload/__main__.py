"""``python -m gpuload`` is the ``gpuload`` command."""

from gpuload.cli import main

raise SystemExit(main())
