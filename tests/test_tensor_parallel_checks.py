"""Lab 01's check cells (labsupport.tensor_parallel.checks) judged on students' attempts.

For every exercise: alternative correct answers (accepted) and typical wrong ones (each named),
asserted on the verdict and on the words of its message. One launch per exercise runs every
attempt (launches are the slow part); the verdicts are then computed here by the same judging
code the check cells use. Pure diagnoses are also tested without ranks.
"""
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import labsupport
from labsupport.checks import CheckFailure
from labsupport.tensor_parallel import _fg_checks, _mlp_checks, _split_checks, checks

pytestmark = pytest.mark.lab01

T = 2
COL_CASE, ROW_CASE = _split_checks.COLUMN_CASES[T][0], _split_checks.ROW_CASES[T][0]


def _xa(case, index=0):
    return _split_checks._inputs(*case, seed=100 + index)


# ---------------------------------------------------------------- exercise 1: pure diagnoses

def test_correct_results_pass():
    X, A = _xa(COL_CASE)
    assert checks.explain_result(X @ A, COL_CASE, 0, T, 0, column=True) is None
    X, A = _xa(ROW_CASE)
    assert checks.explain_result(X @ A, ROW_CASE, 0, T, 1, column=False) is None


def test_column_mistakes_are_named():
    X, A = _xa(COL_CASE)
    blocks = [X @ A_i for A_i in A.chunk(T, -1)]
    missing = checks.explain_result(blocks[1], COL_CASE, 0, T, 1, column=True)
    assert "local piece" in missing and "missing" in missing
    dim0 = checks.explain_result(torch.cat(blocks, 0), COL_CASE, 0, T, 0, column=True)
    assert "joined along dim 0" in dim0 and "last dim" in dim0
    swapped = checks.explain_result(torch.cat(blocks[::-1], -1), COL_CASE, 0, T, 0, column=True)
    assert "order of ranks [1, 0]" in swapped
    as_list = checks.explain_result(blocks, COL_CASE, 0, T, 0, column=True)
    assert "torch.cat" in as_list
    dealt = torch.cat([X @ A[:, r::T] for r in range(T)], -1)
    interleaved = checks.explain_result(dealt, COL_CASE, 0, T, 0, column=True)
    assert "round-robin" in interleaved and "A[:, rank::world_size]" in interleaved


def test_row_mistakes_are_named():
    X, A = _xa(ROW_CASE)
    partials = [X_i @ A_i for X_i, A_i in zip(X.chunk(T, -1), A.chunk(T, 0))]
    missing = checks.explain_result(partials[1], ROW_CASE, 0, T, 1, column=False)
    assert "equals rank 1's local result" in missing
    averaged = checks.explain_result(sum(partials) / T, ROW_CASE, 0, T, 0, column=False)
    assert "too small" in averaged
    doubled = checks.explain_result(T * (X @ A), ROW_CASE, 0, T, 0, column=False)
    assert "too large" in doubled


def test_a_transposed_shape_is_only_called_transposed_when_it_is():
    X, A = _xa(COL_CASE)
    Y = X @ A
    assert "it is the transpose" in checks.explain_result(Y.T.contiguous(), COL_CASE, 0, T, 0,
                                                          column=True)
    other = torch.zeros_like(Y.T)  # the transposed shape, but not Yᵀ: say only what differs
    msg = checks.explain_result(other, COL_CASE, 0, T, 0, column=True)
    assert "transpose" not in msg and "has shape (8, 5), expected (5, 8)" in msg


def _flops(case, t=1):
    b, k, n = case
    return 2 * b * k * n // t


def test_parallelism_accepted_when_split_and_communicated():
    assert checks.explain_parallelism({"all_gather": 1}, _flops(COL_CASE, T), COL_CASE, T, 0, True) is None
    assert checks.explain_parallelism({"all_reduce": 1}, _flops(ROW_CASE, T), ROW_CASE, T, 1, False) is None
    both = {"reduce_scatter": 1, "all_gather": 1}  # an all-reduce in two halves
    assert checks.explain_parallelism(both, _flops(ROW_CASE, T), ROW_CASE, T, 0, False) is None
    assert checks.explain_parallelism({}, _flops(COL_CASE), COL_CASE, 1, 0, True) is None  # t = 1


def test_plain_product_and_wrong_collective_are_named():
    msg = checks.explain_parallelism({}, _flops(COL_CASE), COL_CASE, T, 1, True)
    assert "computed the full product on every rank" in msg and "not accepted" in msg
    msg = checks.explain_parallelism({"all_reduce": 1}, _flops(COL_CASE, T), COL_CASE, T, 0, True)
    assert "all_reduce ×1 and no all-gather" in msg


# ---------------------------------------------------------------- exercise 1: attempts on ranks

def _gather_cat(X, A, rank, world_size):
    Y_i = X @ A.chunk(world_size, -1)[rank]
    blocks = [torch.empty_like(Y_i) for _ in range(world_size)]
    dist.all_gather(blocks, Y_i)
    return torch.cat(blocks, -1)


def _gather_into_tensor(X, A, rank, world_size):
    Y_i = X @ A.chunk(world_size, -1)[rank]                      # (b, n/t)
    out = torch.empty(world_size * Y_i.shape[0], Y_i.shape[1], device=Y_i.device)
    dist.all_gather_into_tensor(out, Y_i.contiguous())            # blocks stacked along dim 0
    return torch.cat(out.chunk(world_size, 0), -1)


def _gather_single_transposed(X, A, rank, world_size):
    Y_i = (X @ A.chunk(world_size, -1)[rank]).T.contiguous()     # (n/t, b): blocks of Yᵀ's rows
    out = torch.empty(world_size * Y_i.shape[0], Y_i.shape[1], device=Y_i.device)
    dist.all_gather_single(out, Y_i)
    return out.T


def _column_labsupport(X, A, rank, world_size):
    from labsupport.tensor_parallel import column_parallel_matmul, column_shard
    return column_parallel_matmul(X, column_shard(A, rank, world_size))


def _full_product(X, A, rank, world_size):
    return X @ A


def _full_product_then_gather(X, A, rank, world_size):
    Y_i = (X @ A).chunk(world_size, -1)[rank].contiguous()
    blocks = [torch.empty_like(Y_i) for _ in range(world_size)]
    dist.all_gather(blocks, Y_i)
    return torch.cat(blocks, -1)


def _gather_cat_dim0(X, A, rank, world_size):
    return torch.cat(_gather_list(X @ A.chunk(world_size, -1)[rank], world_size), 0)


def _gather_list(Y_i, world_size):
    blocks = [torch.empty_like(Y_i) for _ in range(world_size)]
    dist.all_gather(blocks, Y_i.contiguous())
    return blocks


def _gather_strided(X, A, rank, world_size):
    return torch.cat(_gather_list(X @ A[:, rank::world_size], world_size), -1)


def _gather_reversed(X, A, rank, world_size):
    return torch.cat(_gather_list(X @ A.chunk(world_size, -1)[rank], world_size)[::-1], -1)


def _reduce_in_place(X, A, rank, world_size):
    Y = X.chunk(world_size, -1)[rank] @ A.chunk(world_size, 0)[rank]
    dist.all_reduce(Y)
    return Y


def _reduce_scatter_then_gather(X, A, rank, world_size):
    Y = X.chunk(world_size, -1)[rank] @ A.chunk(world_size, 0)[rank]   # (b, n) partial
    flat = Y.reshape(-1)
    pad = (-flat.numel()) % world_size
    flat = torch.cat([flat, flat.new_zeros(pad)])
    mine = torch.empty(flat.numel() // world_size)
    dist.reduce_scatter(mine, list(flat.chunk(world_size)))
    pieces = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(pieces, mine)
    return torch.cat(pieces)[:Y.numel()].view_as(Y)


def _reduce_functional(X, A, rank, world_size):
    from torch.distributed import _functional_collectives as fc
    Y = X.chunk(world_size, -1)[rank] @ A.chunk(world_size, 0)[rank]
    return fc.wait_tensor(fc.all_reduce(Y, "sum", dist.group.WORLD))


def _reduce_of_full(X, A, rank, world_size):
    Y = X @ A / world_size  # the right sum, but every rank multiplied the whole of A
    dist.all_reduce(Y)
    return Y


def _reduce_averaged(X, A, rank, world_size):
    Y = X.chunk(world_size, -1)[rank] @ A.chunk(world_size, 0)[rank]
    dist.all_reduce(Y, op=dist.ReduceOp.AVG)
    return Y


def _row_no_reduce(X, A, rank, world_size):
    return X.chunk(world_size, -1)[rank] @ A.chunk(world_size, 0)[rank]


def _row_reduce_of_product_of_full_x(X, A, rank, world_size):
    Y = X @ A                         # summed over t ranks: t × Y
    dist.all_reduce(Y)
    return Y


# (function, column?, expected message or None for "accepted")
SPLIT_ATTEMPTS = {
    "column: all_gather + cat (the reference)": (_gather_cat, True, None),
    "column: all_gather_into_tensor": (_gather_into_tensor, True, None),
    "column: all_gather_single on Yᵀ": (_gather_single_transposed, True, None),
    "column: labsupport's column_parallel_matmul": (_column_labsupport, True, None),
    "column: plain X @ A": (_full_product, True, "computed the full product on every rank"),
    "column: full product, then gather": (_full_product_then_gather, True, "multiplied the full X·A"),
    "column: blocks joined along dim 0": (_gather_cat_dim0, True, "joined along dim 0"),
    "column: strided columns": (_gather_strided, True, "round-robin"),
    "column: blocks reversed": (_gather_reversed, True, r"order of ranks \[1, 0\]"),
    "row: all_reduce in place (the reference)": (_reduce_in_place, False, None),
    "row: reduce_scatter + all_gather": (_reduce_scatter_then_gather, False, None),
    "row: functional all_reduce": (_reduce_functional, False, None),
    "row: plain X @ A": (_full_product, False, "not accepted"),
    "row: all-reduce of full products / t": (_reduce_of_full, False, "multiplied the full X·A"),
    "row: averaged": (_reduce_averaged, False, "too small"),
    "row: no all-reduce": (_row_no_reduce, False, "local result before communication"),
    "row: all-reduce of the full product": (_row_reduce_of_product_of_full_x, False, "2× too large"),
}


def _split_attempts(rank, world_size):
    return {name: _split_checks._run_cases(
        rank, world_size, fn, (_split_checks.COLUMN_CASES if column else _split_checks.ROW_CASES)[world_size])
        for name, (fn, column, _) in SPLIT_ATTEMPTS.items()}


@pytest.fixture(scope="module")
def split_runs():
    per_rank = labsupport.launch(_split_attempts, T)
    return {name: [r[name] for r in per_rank] for name in SPLIT_ATTEMPTS}


@pytest.mark.parametrize("name", SPLIT_ATTEMPTS)
def test_split_attempts_are_judged(split_runs, name):
    _, column, message = SPLIT_ATTEMPTS[name]
    cases = (_split_checks.COLUMN_CASES if column else _split_checks.ROW_CASES)[T]
    if message is None:
        assert _split_checks._judge(split_runs[name], cases, T, name, column) == T * len(cases)
    else:
        with pytest.raises(CheckFailure, match=message):
            _split_checks._judge(split_runs[name], cases, T, name, column)


def _unfinished(X, A, rank, world_size):
    raise NotImplementedError()


def _column_shape_error(X, A, rank, world_size):
    Y_i = X @ A.chunk(world_size, 0)[rank]   # rows, not columns: (b, k) @ (k/t, n) fails
    return torch.cat(_gather_list(Y_i, world_size), -1)


def test_check_splits_judges_both_in_one_launch(capsys):
    """A finished column split passes and says so even while the row split is still a stub."""
    with pytest.raises(NotImplementedError, match="row_parallel is not implemented yet"):
        checks.check_splits(_gather_cat, _unfinished, world_sizes=(T,))
    assert "✔ column_parallel: correct" in capsys.readouterr().out


def test_check_splits_names_the_function_whose_rank_raised():
    with pytest.raises(CheckFailure, match=r"^column_parallel: .*multiplied a \(5, 6\) matrix by "
                                           r"a \(3, 8\) matrix"):
        checks.check_splits(_column_shape_error, _reduce_in_place, world_sizes=(T,))


# ---------------------------------------------------------------- exercise 2a: f and g

class RefF(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class RefG(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad


class MegatronF(torch.autograd.Function):  # returns its input, reduces the grad in place
    @staticmethod
    def forward(ctx, x):
        return x

    @staticmethod
    def backward(ctx, grad):
        dist.all_reduce(grad)
        return grad


class MegatronG(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad


class FunctionalF(torch.autograd.Function):  # functional collectives (what DTensor uses)
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        from torch.distributed import _functional_collectives as fc
        return fc.wait_tensor(fc.all_reduce(grad, "sum", dist.group.WORLD))


class AutogradAllReduceG(torch.autograd.Function):  # torch.distributed.nn's all_reduce inside
    @staticmethod
    def forward(ctx, x):
        import torch.distributed.nn.functional as dnn
        return dnn.all_reduce(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class ReduceForwardF(torch.autograd.Function):  # f that all-reduces in forward (f and g swapped)
    @staticmethod
    def forward(ctx, x):
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad


class NoReduceF(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class TimesWorldF(torch.autograd.Function):  # right only if every rank's grad were the same
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * dist.get_world_size()


class AveragingF(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.AVG)
        return grad


class BackwardReduceG(torch.autograd.Function):  # forgets g's backward identity
    @staticmethod
    def forward(ctx, x):
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class TimesWorldG(torch.autograd.Function):  # right only if every rank held the same x
    @staticmethod
    def forward(ctx, x):
        return x * dist.get_world_size()

    @staticmethod
    def backward(ctx, grad):
        return grad


class NoneGradG(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        return None


# (f, g, expected message or None)
FG_ATTEMPTS = {
    "view_as / clone (the reference)": (RefF, RefG, None),
    "Megatron's in-place all-reduces": (MegatronF, MegatronG, None),
    "functional collectives, torch.distributed.nn": (FunctionalF, AutogradAllReduceG, None),
    "f all-reduces in forward": (ReduceForwardF, RefG, r"CopyToTP \(f\) all-reduces in forward"),
    "f forgets the backward all-reduce": (NoReduceF, RefG, "returns this rank's gradient unchanged"),
    "f multiplies by t": (TimesWorldF, RefG, "multiplies this rank's gradient by world size 3"),
    "f averages": (AveragingF, RefG, "averages the ranks' gradients"),
    "g forgets the backward identity": (RefF, BackwardReduceG,
                                        r"all-reduces the gradient .*forgot that g's backward is "
                                        r"the identity.* 3× too large"),
    "g multiplies by t": (RefF, TimesWorldG, "multiplies this rank's partial sum by world size 3"),
    "g forgets the forward all-reduce": (RefF, NoReduceF, "returns this rank's partial sum unchanged"),
    "g returns no gradient": (RefF, NoneGradG, r"returned no gradient for its input \(None\)"),
}
FG_T = _fg_checks.WORLD_SIZE


def _fg_attempts(rank, world_size):
    return {name: _fg_checks.run_fg(rank, world_size, f, g) for name, (f, g, _) in FG_ATTEMPTS.items()}


@pytest.fixture(scope="module")
def fg_runs():
    per_rank = labsupport.launch(_fg_attempts, FG_T)
    return {name: [r[name] for r in per_rank] for name in FG_ATTEMPTS}


@pytest.mark.parametrize("name", FG_ATTEMPTS)
def test_f_g_attempts_are_judged(fg_runs, name):
    message = FG_ATTEMPTS[name][2]
    if message is None:
        _fg_checks.judge(fg_runs[name], FG_T)
    else:
        with pytest.raises(CheckFailure, match=message):
            _fg_checks.judge(fg_runs[name], FG_T)


def test_f_and_g_must_be_autograd_functions():
    with pytest.raises(CheckFailure, match=r"CopyToTP \(f\) must be a subclass of "
                                           r"torch.autograd.Function"):
        checks.check_f_g(lambda x: x, RefG)


def test_unfinished_f_is_not_implemented():
    class Stub(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            raise NotImplementedError()

        @staticmethod
        def backward(ctx, grad):
            raise NotImplementedError()

    with pytest.raises(NotImplementedError, match=r"CopyToTP \(f\) is not implemented yet"):
        _fg_checks._run_one("f", Stub, 0, 1)


# ---------------------------------------------------------------- exercise 2b: the MLP forward

def _mlp_reference(x, fc1, fc2, f, g):
    z = F.gelu(fc1(f(x)))
    return g(F.linear(z, fc2.weight)) + fc2.bias


def _mlp_manual_all_reduce(x, fc1, fc2, f, g):
    z = F.gelu(F.linear(f(x), fc1.weight, fc1.bias))
    y = torch.matmul(z, fc2.weight.t())
    dist.all_reduce(y)          # g by hand: autograd never sees it, and needs not (identity)
    return y + fc2.bias


def _mlp_labsupport(x, fc1, fc2, f, g):
    from labsupport.tensor_parallel import parallel_mlp_forward
    return parallel_mlp_forward(x, fc1, fc2, f, g)


def _mlp_bias_before_g(x, fc1, fc2, f, g):
    return g(fc2(F.gelu(fc1(f(x)))))


def _mlp_g_on_fc1(x, fc1, fc2, f, g):
    return fc2(g(F.gelu(fc1(f(x)))))


def _mlp_no_f(x, fc1, fc2, f, g):
    return g(F.linear(F.gelu(fc1(x)), fc2.weight)) + fc2.bias


def _mlp_f_on_fc1(x, fc1, fc2, f, g):
    return g(F.linear(F.gelu(f(fc1(x))), fc2.weight)) + fc2.bias


def _mlp_no_g(x, fc1, fc2, f, g):
    return fc2(F.gelu(fc1(f(x))))


def _mlp_f_twice(x, fc1, fc2, f, g):
    return g(F.linear(F.gelu(fc1(f(f(x)))), fc2.weight)) + fc2.bias


def _mlp_tanh_gelu(x, fc1, fc2, f, g):
    return g(F.linear(F.gelu(fc1(f(x)), approximate="tanh"), fc2.weight)) + fc2.bias


def _mlp_bias_divided(x, fc1, fc2, f, g):
    return g(F.linear(F.gelu(fc1(f(x))), fc2.weight) + fc2.bias / dist.get_world_size())


MLP_ATTEMPTS = {
    "f, g and the bias after g (the reference)": (_mlp_reference, None),
    "g as an in-place dist.all_reduce, matmul/linear spelled out": (_mlp_manual_all_reduce, None),
    "labsupport's parallel_mlp_forward": (_mlp_labsupport, None),
    "bias added before g": (_mlp_bias_before_g, r"\+ 1·b2: fc2's bias was added before g"),
    "g on fc1's output": (_mlp_g_on_fc1, r"g \(the forward all-reduce\) was applied to a tensor of "
                                         r"shape \(6, 30\) -- fc1's output"),
    "f missing": (_mlp_no_f, "f is missing -- wrap x with f before fc1"),
    "f on fc1's output": (_mlp_f_on_fc1, r"f was applied to fc1's output, not to x"),
    "g missing": (_mlp_no_g, "g is missing after fc2's matmul"),
    "f applied twice": (_mlp_f_twice, r"backward issued 2 all-reduces of dL/dx .* f was applied "
                                      r"2 times"),
    "tanh GELU": (_mlp_tanh_gelu, r"output y differs from the reference in \d+ of \d+ elements"),
    "bias divided by t before g": (_mlp_bias_divided, r"fc2.bias's gradient is 2× too small: on "
                                                      r"each rank the bias entered y as b2/2"),
}


def _mlp_attempts(rank, world_size):
    return {name: _mlp_checks.run_mlp(rank, world_size, fn, _mlp_checks.CASES[world_size])
            for name, (fn, _) in MLP_ATTEMPTS.items()}


@pytest.fixture(scope="module")
def mlp_runs():
    per_rank = labsupport.launch(_mlp_attempts, T)
    return {name: [r[name] for r in per_rank] for name in MLP_ATTEMPTS}


@pytest.mark.parametrize("name", MLP_ATTEMPTS)
def test_mlp_attempts_are_judged(mlp_runs, name):
    message = MLP_ATTEMPTS[name][1]
    cases = _mlp_checks.CASES[T]
    if message is None:
        assert _mlp_checks.judge(mlp_runs[name], cases, T) == T * len(cases)
    else:
        with pytest.raises(CheckFailure, match=message):
            _mlp_checks.judge(mlp_runs[name], cases, T)


def test_mlp_check_shapes_tell_the_tensors_apart():
    """The shape diagnoses need ffn/t ≠ h at every world size the check runs."""
    for t in _mlp_checks.CASES:
        assert _mlp_checks.FFN % t == 0 and _mlp_checks.FFN // t != _mlp_checks.H


def test_mlp_check_leaves_the_callers_random_stream_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    _mlp_checks.case_tensors((2,), 0)
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------- `labs grade`, every exercise

WRONG_ANSWERS = {  # a typical mistake per exercise cell, as a student would submit it
    "row_parallel": '''
def row_parallel(X, A, rank, world_size):
    return X.chunk(world_size, dim=-1)[rank] @ A.chunk(world_size, dim=0)[rank]
''',
    "f_and_g": '''
class CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad
''',
    "parallel_mlp_forward": '''
def parallel_mlp_forward(x, fc1, fc2, f, g):
    return g(fc2(F.gelu(fc1(f(x)))))
''',
}
# Three submissions, each exercise correct in one, wrong in another and blank in the third:
# exercise 1 (column_parallel + row_parallel, graded by check_splits), 2a, 2b. "correct" is the
# solution's answers, graded once for tests/test_grading_labs.py too.
EXERCISES = {"check_splits": ("column_parallel", "row_parallel"), "check_f_and_g": ("f_and_g",),
             "check_parallel_mlp": ("parallel_mlp_forward",)}
PLAN = {"correct": dict.fromkeys(EXERCISES, "correct"),
        "ben": {"check_splits": "wrong", "check_f_and_g": "blank", "check_parallel_mlp": "wrong"},
        "cleo": {"check_splits": "blank", "check_f_and_g": "wrong", "check_parallel_mlp": "blank"}}
VERDICTS = {
    ("check_splits", "wrong"): ("failed", "local result before communication"),
    ("check_f_and_g", "wrong"): ("failed", "forgot that g's backward is the identity"),
    ("check_parallel_mlp", "wrong"): ("failed", "fc2's bias was added before g"),
}


@pytest.fixture(scope="module")
def graded(lab_grades):
    from grading_helpers import solution_answers

    answers, out = solution_answers("01"), {"correct": lab_grades.correct("01")}
    for student, plan in PLAN.items():
        if student == "correct":
            continue
        # a wrong exercise: its cells' typical mistakes (a cell without one keeps the solution)
        out[student] = lab_grades.grade("01", student, {
            gid: WRONG_ANSWERS[gid].strip() if gid in WRONG_ANSWERS else answers[gid]
            for check, kind in plan.items() if kind == "wrong" for gid in EXERCISES[check]})
    return out


@pytest.mark.parametrize("student", PLAN)
def test_labs_grade_scores_each_exercise_correct_wrong_and_blank(graded, student):
    rows = graded[student]
    assert set(EXERCISES) <= set(rows), rows
    for check, kind in PLAN[student].items():
        row = rows[check]
        if kind == "correct":
            assert (row.status, row.points) == ("passed", row.max_points), row
        elif kind == "blank":
            assert (row.status, row.points) == ("not implemented", 0), row
            assert "is not implemented yet" in row.message, row
        else:
            status, words = VERDICTS[check, kind]
            assert (row.status, row.points) == (status, 0) and words in row.message, row
