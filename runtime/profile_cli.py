"""``python -m runtime profile``: profile every model of a repository for the simulator.

Writes one JSON object::

    {"models": {"<name>": {"profile": {"<batch size>": [unit µs, ...]}}},
     "device": "<device name>", "torch": "<torch version>"}

whose ``models`` section a simulator workload (``python -m scheduler.sim``) takes as it is.
Models that fail to load are reported on stderr and left out; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from runtime import model_repository, profiler
from runtime.errors import ModelLoadError

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runtime profile",
        description="Split every model of a repository into units and time them.",
    )
    parser.add_argument("--model_dir", required=True, help="the model repository")
    parser.add_argument("--model_name", help="single-model layout: the model's name")
    parser.add_argument("--out", help="write the JSON here (default: stdout)")
    parser.add_argument(
        "--device", default=None, help="torch device (default: cuda if available, else cpu)"
    )
    parser.add_argument(
        "--batch_sizes",
        help="comma-separated batch sizes (default: each model's, 1 and powers of two up to "
        "its max_batch_size)",
    )
    parser.add_argument("--max_units", type=int, help="override each model's max_units")
    parser.add_argument("--warmup", type=int, default=profiler.DEFAULT_WARMUP)
    parser.add_argument("--repeats", type=int, default=profiler.DEFAULT_REPEATS)
    parser.add_argument("--cache_dir", help="profile cache (default: $DEFT_CACHE_DIR/profiles)")
    parser.add_argument(
        "--no_cache", action="store_true", help="measure again and leave the cache alone"
    )
    return parser


def _batch_sizes(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad --batch_sizes {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"bad --batch_sizes {text!r}")
    return sizes


def main(argv: list[str]) -> int:
    """Entry point; returns the process exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        sizes = _batch_sizes(args.batch_sizes)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        sources = model_repository.discover(args.model_dir, args.model_name)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    models: dict[str, dict[str, object]] = {}
    failed = 0
    for source in sources:
        try:
            loaded = model_repository.load(
                source,
                device,
                max_units=args.max_units,
                batch_sizes=sizes,
                cache_dir=args.cache_dir,
                use_cache=not args.no_cache,
                warmup=args.warmup,
                repeats=args.repeats,
            )
        except ModelLoadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        models[source.name] = {"profile": loaded.profile}
        log.info(
            "%s: %d units, %s in %.2f s%s",
            source.name,
            loaded.model.num_units,
            ", ".join(f"batch {b}: {sum(row) / 1000:.2f} ms" for b, row in loaded.profile.items()),
            loaded.prepare_seconds,
            " (cached)" if loaded.profile_from_cache else "",
        )
    result = {
        "models": models,
        "device": profiler.device_name(device),
        "torch": torch.__version__,
    }
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    if not sources:
        print(f"error: no models under {args.model_dir}", file=sys.stderr)
        return 1
    return 1 if failed else 0
