"""Train the seed's pipeline as a script: the same function the lab launches from the notebook.

    torchrun --standalone --nproc_per_node=2 -m labsupport.deepspeed_pipe --steps 8
    deepspeed --num_gpus 2 --module labsupport.deepspeed_pipe --steps 8   # GPU node
    python -m labsupport.deepspeed_pipe --stages 2                          # starts its own ranks

Under torchrun / the deepspeed launcher (RANK and WORLD_SIZE set) ``labsupport.launch`` runs
``train_pipeline`` in place, one rank per process; otherwise it starts ``--stages`` ranks itself.
"""
from __future__ import annotations

import argparse
import json
import os


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m labsupport.deepspeed_pipe",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--stages", type=int, default=None,
                        help="pipeline stages (default: WORLD_SIZE under a launcher, else 2)")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--partition-method", default="parameters")
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--micro-batches", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--json", action="store_true", help="print rank 0's result as JSON")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help=argparse.SUPPRESS)  # added by the deepspeed launcher
    args = parser.parse_args(argv)

    from .train import run_deepspeed_pipeline

    world = int(os.environ.get("WORLD_SIZE", 0)) or None
    stages = args.stages or world or 2
    results = run_deepspeed_pipeline(
        stages, world_size=world or stages, width=args.width,
        partition_method=args.partition_method, micro_batch_size=args.micro_batch_size,
        micro_batches=args.micro_batches, steps=args.steps, lr=args.lr)
    mine = results[0]
    if int(os.environ.get("RANK", "0")) == 0:
        if args.json:
            print(json.dumps({k: mine[k] for k in ("stage", "losses", "step_ms", "parts",
                                                   "local_layers", "local_params", "optimizer")}))
        else:
            print("losses:", " ".join(f"{x:.4f}" for x in mine["losses"]))
            ms = sorted(mine["step_ms"][1:] or mine["step_ms"])
            print(f"median train_batch: {ms[len(ms) // 2]:.1f} ms; stage {mine['stage']} "
                  f"holds {mine['local_layers']} ({mine['local_params']:,} parameters)")


if __name__ == "__main__":
    main()
