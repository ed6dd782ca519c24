"""The PromptHub server exactly as `prompthub serve` runs it, plus knobs for ablations.

    python -m bench.hub_server --port 8000 [--bucket-overhead-tokens inf] [--threads 1]

Used by `bench.serving --ablation` to run the server with one serving-path change undone next
to the server as shipped, in the same run (same machine state, interleaved measurements).
"""

from __future__ import annotations

import argparse
import logging


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument(
        "--bucket-overhead-tokens",
        type=float,
        default=None,
        help="batcher length bucketing: inf turns it off (one forward per batch)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = p.parse_args()
    import torch
    import uvicorn

    from app.config import get_settings
    from app.main import create_app

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = get_settings()
    logging.basicConfig(level=settings.log_level.upper())
    app = create_app(settings)
    if args.bucket_overhead_tokens is not None:
        app.state.hub.bucket_overhead_tokens = args.bucket_overhead_tokens
    uvicorn.run(app, host=args.host, port=args.port, log_level=settings.log_level, access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
