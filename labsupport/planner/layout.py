"""``Layout`` (how a run is split and what it stores) and ``Cluster`` (what it runs on)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

RECOMPUTE = ("none", "selective", "full")
PRECISIONS = ("bf16-mixed", "fp32")
SCHEDULES = ("1f1b", "gpipe")

# Bytes per parameter of (parameters, gradients, optimizer state) with Adam. bf16-mixed: the
# ZeRO paper's mixed-precision form (Rajbhandari et al. 2020 §3.1): 16-bit parameters and
# gradients, fp32 master copy + momentum + variance = K = 12. fp32: 4 + 4 + 8 (K = 8).
BYTES_PER_PARAM = {"bf16-mixed": (2, 2, 12), "fp32": (4, 4, 8)}
# Bytes per activation element (what the layers save): 16-bit or 32-bit.
ACTIVATION_BYTES = {"bf16-mixed": 2, "fp32": 4}


@dataclass(frozen=True)
class Layout:
    """One way to run a model: parallel degrees, sharding, recomputation, batch split, precision.

    Args:
        tp, pp, dp: tensor-, pipeline- and data-parallel degrees (ranks = tp·pp·dp; the mesh
            order is (dp, pp, tp), TP innermost so TP peers are neighbours on one node).
        zero: ZeRO stage over the DP group: 0 none, 1 optimizer state, 2 + gradients,
            3 + parameters. Stages 2 and 3 need pp = 1 (DeepSpeed refuses them with pipeline
            parallelism).
        recompute: "none", "selective" (Korthikanti et al.: recompute the attention core) or
            "full" (keep each layer's input, recompute the layer).
        sequence_parallel: Megatron's sequence parallelism over the TP group (needs tp > 1).
        micro_batch: sequences per micro-batch (b); microbatches: m per step and DP rank.
            Global batch = micro_batch · microbatches · dp.
        precision: "bf16-mixed" (2-byte activations, 2 + 2 + 12 bytes per parameter) or "fp32".
        schedule: "1f1b" (first stage holds min(pp, m) micro-batches) or "gpipe" (all m).
        flash_attention: the attention core keeps no s x s scores (FlashAttention, PyTorch's
            fused SDPA); False: explicit softmax(QK^T)V as Korthikanti et al. account for it.
        vocab_parallel: the embedding and output layer are split over the TP group (Megatron);
            False: replicated on every TP rank (as the course's toy GPT does).
    """

    tp: int = 1
    pp: int = 1
    dp: int = 1
    zero: int = 0
    recompute: str = "none"
    sequence_parallel: bool = False
    micro_batch: int = 1
    microbatches: int = 1
    precision: str = "bf16-mixed"
    schedule: str = "1f1b"
    flash_attention: bool = True
    vocab_parallel: bool = True

    def __post_init__(self):
        for field in ("tp", "pp", "dp", "micro_batch", "microbatches"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be a whole number >= 1, got {value!r}")
        if self.zero not in (0, 1, 2, 3) or isinstance(self.zero, bool):
            raise ValueError(f"zero must be 0, 1, 2 or 3 (the ZeRO stage), got {self.zero!r}")
        for field, choices in (("recompute", RECOMPUTE), ("precision", PRECISIONS),
                               ("schedule", SCHEDULES)):
            if getattr(self, field) not in choices:
                raise ValueError(f"unknown {field} {getattr(self, field)!r}: use one of "
                                 f"{', '.join(map(repr, choices))}")
        if self.sequence_parallel and self.tp == 1:
            raise ValueError("sequence parallelism shards activations over the TP group: it "
                             "needs tp >= 2; set sequence_parallel=False or raise tp")
        if self.zero >= 2 and self.pp > 1:
            raise ValueError(f"ZeRO-{self.zero} with pipeline parallelism (pp={self.pp}) is not "
                             "supported (DeepSpeed refuses it: gradients must stay whole across "
                             "the micro-batches of a pipeline step); use zero <= 1 or pp = 1")

    @property
    def ranks(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.microbatches * self.dp

    def with_(self, **changes) -> "Layout":
        return replace(self, **changes)

    def label(self) -> str:
        """Short text, e.g. 'tp8 pp4 dp2 z1 sp sel mb1x64 bf16'."""
        parts = [f"tp{self.tp}", f"pp{self.pp}", f"dp{self.dp}"]
        if self.zero:
            parts.append(f"z{self.zero}")
        if self.sequence_parallel:
            parts.append("sp")
        parts.append({"none": "keep", "selective": "sel", "full": "full"}[self.recompute])
        parts.append(f"mb{self.micro_batch}x{self.microbatches}")
        parts.append("fp32" if self.precision == "fp32" else "bf16")
        return " ".join(parts)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Cluster:
    """The machines: how many GPUs, how they are grouped, how fast they compute and talk.

    Args:
        gpus: all GPUs; gpus_per_node: GPUs sharing the fast intra-node links (NVLink).
        gpu_memory_gib: memory per GPU in GiB.
        peak_tflops: peak dense matmul rate per GPU in the run's precision (TFLOP/s).
        intra_node_GBps, inter_node_GBps: bandwidth per GPU, one direction, GB/s (1e9 B/s) --
            what one rank can send while it receives as much (a ring step). Datasheets quote
            NVLink both directions together: halve it.
        efficiency: the share of ``peak_tflops`` the matmuls reach (1.0: the roofline).
        usable_fraction: the share of GPU memory a layout may fill (default 0.9: the rest is
            left for what the estimate does not count -- CUDA context, NCCL buffers, library
            workspaces, allocator fragmentation).
        name: a label.
    """

    gpus: int
    gpus_per_node: int
    gpu_memory_gib: float
    peak_tflops: float
    intra_node_GBps: float
    inter_node_GBps: float
    efficiency: float = 1.0
    usable_fraction: float = 0.9
    name: str = "custom"

    def __post_init__(self):
        for field in ("gpus", "gpus_per_node"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be a whole number >= 1, got {value!r}")
        for field in ("gpu_memory_gib", "peak_tflops", "intra_node_GBps", "inter_node_GBps"):
            if not getattr(self, field) > 0:
                raise ValueError(f"{field} must be > 0, got {getattr(self, field)!r}")
        for field in ("efficiency", "usable_fraction"):
            if not 0 < getattr(self, field) <= 1:
                raise ValueError(f"{field} must be in (0, 1], got {getattr(self, field)!r}")
        if self.gpus > self.gpus_per_node and self.gpus % self.gpus_per_node:
            raise ValueError(f"{self.gpus} GPUs do not fill nodes of {self.gpus_per_node}: use a "
                             f"multiple of {self.gpus_per_node} GPUs, or change gpus_per_node")

    @property
    def memory_bytes(self) -> float:
        return self.gpu_memory_gib * 2**30

    @property
    def usable_bytes(self) -> float:
        """What a layout may fill: ``usable_fraction`` of the GPU memory."""
        return self.usable_fraction * self.memory_bytes

    def with_(self, **changes) -> "Cluster":
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return asdict(self)
