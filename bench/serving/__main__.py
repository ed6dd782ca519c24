import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.serving.cli import main  # noqa: E402

raise SystemExit(main())
