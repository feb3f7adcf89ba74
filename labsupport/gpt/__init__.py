"""Lab 07, the capstone: a tiny GPT trained on a (dp, pp, tp) mesh of ranks.

    from labsupport.gpt import RunConfig, Layout, train_parallel, train_reference
    run = RunConfig(model=gpt_config(tokenizer), layout=Layout(pp=2, tp=2), steps=20)
    ref = train_reference(run)               # one process
    ranks = train_parallel(run)              # 4 ranks: same losses, same parameters

- ``corpus``: the offline corpus (``pydoc_data.topics``), the character tokenizer.
- ``model``: the GPT (Embedding → pre-LN blocks → Head) built from the course's layers.
- ``mesh``: the (dp, pp, tp) layout, ``init_device_mesh`` and ``dist.new_group`` groups, a figure.
- ``parallel``: the TP layers of each block and the pipeline stages; with
  ``Layout(..., sequence_parallel=True)`` the sequence-parallel ones (Korthikanti et al. 2022).
- ``config``: a run's settings and the ValueErrors raised before any process starts.
- ``reference``, ``train``, ``sample``: one process, every rank, text generation.
- ``traffic``: bytes per group from the collective log, the loopback check, the step timeline.
- ``report``: loss tables, step time and communication per group, what each rank holds.
- ``checks``: the lab's check cells.
"""
from .config import RunConfig, check_run
from .corpus import CharTokenizer, batches, corpus_facts, get_batch, load_corpus
from .mesh import DIMS, Layout, build_groups, build_mesh, mesh_ranks, plot_mesh
from .model import GPT, Block, Embedding, GPTConfig, Head, lm_loss
from .parallel import (Checkpointed, ParallelBlock, ParallelEmbedding, ParallelHead, build_stage,
                       describe_stages, stage_layer_ranges)
from .reference import (ReferenceResult, corpus_tokens, generate, gpt_config, train_reference)
from .train import train_parallel, train_parallel_runs, train_rank

__all__ = [
    "RunConfig", "check_run", "CharTokenizer", "batches", "corpus_facts", "get_batch",
    "load_corpus", "DIMS", "Layout", "build_groups", "build_mesh", "mesh_ranks", "plot_mesh",
    "GPT", "Block", "Embedding", "GPTConfig", "Head", "lm_loss", "Checkpointed", "ParallelBlock",
    "ParallelEmbedding", "ParallelHead", "build_stage", "describe_stages", "stage_layer_ranges",
    "ReferenceResult", "corpus_tokens", "generate", "gpt_config", "train_reference",
    "train_parallel", "train_parallel_runs", "train_rank",
]
