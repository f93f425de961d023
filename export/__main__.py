"""`python -m export --checkpoint output/ --repository model_repository/`: a new version of the model.

Each export is checked against PyTorch and against optimum's standard ONNX export, then appears as
the next version folder (model_repository/<name>/<N>/); Triton, polling the repository, loads it
while the previous one serves, and the bot follows. `--rollback` publishes the previous version
again; `--list` shows them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from contract import triton_io as io
from export import versions
from export.exporter import ExportError, export
from export.triton_config import ServingConfig


def main(argv: list[str] | None = None) -> int:
    d = ServingConfig()
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    p.add_argument(
        "--checkpoint", type=Path, default=Path("output"), help="folder `python -m training` wrote"
    )
    p.add_argument(
        "--repository", type=Path, default=Path("model_repository"), help="Triton model repository"
    )
    p.add_argument("--name", default=io.DEFAULT_MODEL_NAME, help="model name in Triton")
    p.add_argument("--quantize", choices=["int8"], help="onnxruntime dynamic int8 quantization (CPU serving)")
    p.add_argument("--fp16", action="store_true", help="half precision (GPU serving; needs --device cuda)")
    p.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="export device; cuda also makes the model serve with the CUDA provider",
    )
    p.add_argument(
        "--ragged-chunks",
        choices=["auto", "yes", "no"],
        default="auto",
        help="rows of one call may carry chunks of different lengths (needs onnxruntime >= 1.32 "
        "where the model is served); auto: yes for the CPU, no for CUDA",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="max |Δlogit| of the serving graph vs PyTorch and vs optimum's export (default 1e-3 fp32, "
        "5e-2 fp16)",
    )
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=d.max_batch_size,
        help="round requests (bot processes) run in one execute()",
    )
    p.add_argument(
        "--kv-slots",
        default=io.KV_SLOTS_AUTO,
        help="KV-cache slots: sequences generating at once (each holds one from its start to END); "
        f"auto: sized at load from the GPU's free memory (engine/memory.py), {io.DEFAULT_KV_SLOTS} on a CPU",
    )
    p.add_argument(
        "--slot-length",
        type=int,
        default=d.slot_length,
        help="positions per slot: the longest context (0: the model's positions)",
    )
    p.add_argument(
        "--decode-graphs",
        choices=["auto", "on", "off"],
        default=d.decode_graphs,
        help="decode steps on fixed bindings (auto: with CUDA, replayed as CUDA graphs)",
    )
    p.add_argument(
        "--prompt-batching",
        choices=["auto", "on", "off"],
        default=d.prompt_batching,
        help="without ragged chunks, the first chunks of several prompts share a call (auto: with "
        "the CPU provider; unverified on CUDA)",
    )
    p.add_argument(
        "--skip-reference",
        action="store_true",
        help="skip optimum's reference export (hosts without optimum); the serving graph is still "
        "checked against PyTorch",
    )
    p.add_argument("--idle-seconds", type=int, default=d.idle_seconds, help="free a sequence idle this long")
    p.add_argument("--threads", type=int, default=d.intra_op_threads, help="onnxruntime threads (0: auto)")
    p.add_argument(
        "--keep",
        type=int,
        default=versions.DEFAULT_KEEP,
        help="versions kept in the model's folder after this one is written (older ones are deleted)",
    )
    p.add_argument(
        "--rollback",
        nargs="?",
        type=int,
        const=0,
        metavar="N",
        help="no export: publish version N (default: the one before the newest) again as the newest; "
        "where the newest is N (or a copy of it) nothing is published (exit 0)",
    )
    p.add_argument("--list", action="store_true", help="no export: list the model's versions, newest first")
    args = p.parse_args(argv)
    # onnxruntime's quantizer logs every tensor on the root logger: only ours speak at INFO.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("export").setLevel(logging.INFO)
    model_dir = args.repository / args.name
    try:
        versions.check_repository(args.repository, args.name)  # before any work
    except versions.VersionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.list:
        lines = versions.describe(model_dir)
        print("\n".join(lines) if lines else f"{model_dir} holds no versions: export a checkpoint first")
        return 0
    if args.rollback is not None:
        try:
            number = versions.rollback(model_dir, args.rollback or None, args.keep)
        except versions.VersionError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except versions.AlreadyNewest as exc:
            print(exc)
            return 0
        print(f"published {model_dir / str(number)}: a copy of version {_copy_of(model_dir, number)}")
        return 0
    try:
        kv_slots = None if args.kv_slots == io.KV_SLOTS_AUTO else int(args.kv_slots)
    except ValueError:
        p.error(f"--kv-slots must be a count or {io.KV_SLOTS_AUTO}, got {args.kv_slots!r}")
    for flag, value in (
        ("--kv-slots", 1 if kv_slots is None else kv_slots),
        ("--max-batch-size", args.max_batch_size),
        ("--keep", args.keep),
    ):
        if value < 1:
            p.error(f"{flag} must be at least 1{' (or auto)' if flag == '--kv-slots' else ''}, got {value}")
    if args.slot_length < 0:
        p.error(f"--slot-length must be >= 0 (0: the model's positions), got {args.slot_length}")
    serving = ServingConfig(
        max_batch_size=args.max_batch_size,
        kv_slots=kv_slots,
        slot_length=args.slot_length,
        decode_graphs=args.decode_graphs,
        prompt_batching=args.prompt_batching,
        idle_seconds=args.idle_seconds,
        intra_op_threads=args.threads,
    )
    try:
        result = export(
            args.checkpoint,
            args.repository,
            args.name,
            args.quantize,
            args.fp16,
            args.device,
            args.tolerance,
            serving,
            None if args.ragged_chunks == "auto" else args.ragged_chunks == "yes",
            reference=not args.skip_reference,
            keep=args.keep,
        )
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"exported version {result.version}: {result.onnx_file.parent}  max|Δlogit| {result.max_abs_diff:.2e}"
        + (f" (vs optimum {result.reference_diff:.2e})" if result.reference_diff is not None else "")
        + (
            f"  int8 max|Δlogit| {result.quantized_diff:.3f} top-1 {result.quantized_top1:.0%}"
            if result.quantized_diff is not None
            else ""
        )
        + f"  ({result.seconds:.1f} s)"
    )
    return 0


def _copy_of(model_dir: Path, number: int) -> str:
    from contract.repository import version_info

    return str(version_info(model_dir, number).get("copy_of", "?"))


if __name__ == "__main__":
    sys.exit(main())
