"""Lab 04's check cell (labsupport.deepspeed_pipe.checks): the parameter-balanced partition
exercise against the exact min-max split. Needs DeepSpeed (its partition functions as foils)."""
import os

import pytest

pytest.importorskip("deepspeed")

from labsupport import deepspeed_pipe as dsp  # noqa: E402
from labsupport.checks import CheckFailure  # noqa: E402
from labsupport.deepspeed_pipe import checks  # noqa: E402
from labsupport.pipeline import balance_layers  # noqa: E402

pytestmark = pytest.mark.lab04
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _padding_min_max(counts, stages):
    """A min-max split that pads with empty stages at the end (the old, wrong reference)."""
    n = len(counts)
    for limit in sorted({sum(counts[a:b]) for a in range(n) for b in range(a + 1, n + 1)}):
        if limit < max(counts):
            continue
        parts, size = [0], 0
        for i, c in enumerate(counts):
            if size + c > limit and i > parts[-1]:
                parts.append(i)
                size = 0
            size += c
        parts.append(n)
        if len(parts) - 1 <= stages:
            return parts + [n] * (stages + 1 - len(parts))


def test_partition_exercise_check_accepts_and_rejects():
    from deepspeed.runtime.utils import partition_balanced, partition_uniform

    checks.check_partition_by_parameters(lambda c, s: [0] + [r.stop for r in balance_layers(len(c), s, c)])
    checks.check_partition_by_parameters(lambda c, s: dsp.min_max_parts(c, s)[1])
    with pytest.raises(CheckFailure, match="largest holds"):
        checks.check_partition_by_parameters(lambda c, s: partition_uniform(len(c), s))
    # DeepSpeed's own answer is not always the smallest largest stage.
    with pytest.raises(CheckFailure, match=r"largest holds 58, but a split exists whose "
                                           r"largest stage holds only 50"):
        checks.check_partition_by_parameters(lambda c, s: [int(p) for p in partition_balanced(c, s)])
    # Padding with empty stages is the lab's own pitfall (section 4a).
    with pytest.raises(CheckFailure, match=r"\[0, 1, 3, 3\] leave stage\(s\) \[2\] with no layers"):
        checks.check_partition_by_parameters(_padding_min_max)
    with pytest.raises(CheckFailure, match="boundaries"):
        checks.check_partition_by_parameters(lambda c, s: [0, len(c)])
    with pytest.raises(NotImplementedError, match="not implemented"):
        checks.check_partition_by_parameters(lambda c, s: (_ for _ in ()).throw(NotImplementedError()))
    assert checks.explain_parts([0, 1, 1, 2], [3, 4], 3) is None  # fewer layers than stages: unavoidable
    assert "go backwards" in checks.explain_parts([0, 2, 1, 3], [1, 1, 1], 3)


def test_lab_reference_solution_passes_the_check():
    """The exercise's reference answer in the lab source (it once padded with empty stages)."""
    import ast
    import pathlib

    src = pathlib.Path(REPO, "solutions", "04_deepspeed_pipeline.ipynb").read_text()
    import json

    cells = ["".join(c["source"]) for c in json.loads(src)["cells"] if c["cell_type"] == "code"]
    (code,) = [c for c in cells if "def partition_by_parameters" in c]
    namespace = {}
    exec(compile(ast.parse(code), "partition_by_parameters", "exec"), namespace)
    checks.check_partition_by_parameters(namespace["partition_by_parameters"])
