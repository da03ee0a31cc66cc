"""Tests of the fused AdvDistill loss (``advdistill_kernels``) on small CPU problems.

Every backend is compared with :func:`advdistill_loss_from_logits` evaluated in float64 on the
same input values (the ground truth). Tolerances:

* float32 inputs: loss within 1e-6 relative; gradients within 1e-5 of the gradient's max-abs.
* bfloat16 and float16 inputs (CCE-style): error of a backend <= error of the naive computation
  done in that dtype (logits and autograd in it) + slack, slack = one rounding step of the dtype
  (2^-8 for bfloat16, 2^-11 for float16) x max-abs of the reference, for the loss and both
  gradients.

Accuracy runs over the table backend x dtype (``DTYPES``) x shape (``SHAPES``, odd sizes included).

Triton runs on CUDA tensors when a GPU is present. On CPU the Triton cases run under the
interpreter: ``test_triton_under_interpreter`` re-runs this file's ``triton`` cases in a
subprocess with ``TRITON_INTERPRET=1`` (it has to be set before triton is imported, and must
not leak into the other tests); in the parent session those cases show as skipped.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from advdistill_kernels import (
    AdvDistillLoss,
    BackendUnavailableError,
    LossInputs,
    advdistill_loss,
    advdistill_loss_from_logits,
    available_backends,
    backends,
    response_stats,
)
from advdistill_kernels.backends import cpp as cpp_backend
from advdistill_kernels.backends._tiles import Tile, plan_tiles

from advdistill.devices import BF16_DOT_PRODUCT_FLAGS, cpu_flags
from tests.helpers import loaded_script

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
CUDA = torch.cuda.is_available()
BENCHMARK = Path(__file__).resolve().parents[2] / "kernels" / "benchmarks" / "bench_fused_loss.py"
ROUNDING_STEP = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}
"""Relative size of one rounding step of each low-precision dtype: the slack of its tolerance."""


def _cpp_skip_reason() -> str | None:
    try:
        cpp_backend.load_extension()
    except BackendUnavailableError as exc:
        return f"cpp backend unavailable (no working C++ compiler?): {exc}"
    return None


def _backend_device_params() -> list:
    """(backend, device) pairs; the fixture skips, with a reason, those this session cannot run."""
    pairs = [("torch", "cpu"), ("cpp", "cpu")]
    if CUDA:
        pairs += [("torch", "cuda"), ("triton", "cuda")]
    pairs.append(("triton", "cpu"))
    return [pytest.param(pair, id="triton-cpu-interpreted" if pair == ("triton", "cpu") else "-".join(pair))
            for pair in pairs]


with_backends = pytest.mark.parametrize("backend_device", _backend_device_params(), indirect=True)


@pytest.fixture
def backend_device(request) -> tuple[str, str]:
    backend, device = request.param
    if backend == "cpp":
        reason = _cpp_skip_reason()
        if reason:
            pytest.skip(reason)
    if backend == "triton":
        if not TRITON_INSTALLED:
            pytest.skip("triton is not installed")
        if device == "cpu" and not INTERPRETED:
            pytest.skip("runs in the TRITON_INTERPRET=1 subprocess of test_triton_under_interpreter")
    return backend, device


def random_case(num_tokens=48, hidden_dim=32, vocab_size=300, num_responses=4, masked=6, seed=0) -> LossInputs:
    """Random group; the first ``masked`` tokens are masked (response index -1), responses in runs."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, vocab_size, (num_tokens,), generator=generator)
    response_index = torch.arange(num_tokens) * num_responses // num_tokens
    targets[:masked] = -100
    response_index[:masked] = -1
    return LossInputs(
        hidden=torch.randn(num_tokens, hidden_dim, generator=generator),
        weight=torch.randn(vocab_size, hidden_dim, generator=generator) / hidden_dim ** 0.5,
        targets=targets,
        response_index=response_index,
        response_weights=torch.softmax(torch.randn(num_responses, generator=generator), dim=0),
        wrong=torch.arange(num_responses) % 2 == 1,
    )


ODD_CASE = dict(num_tokens=37, hidden_dim=24, vocab_size=257, num_responses=3, masked=5, seed=1)
SHAPES = [
    pytest.param(dict(), id="N48-d32-V300"),
    pytest.param(ODD_CASE, id="N37-d24-V257"),
    pytest.param(dict(num_tokens=150, hidden_dim=40, vocab_size=515, num_responses=2, masked=0, seed=2),
                 id="N150-d40-V515-two-long-responses"),
]
DTYPES = [pytest.param(dtype, id=str(dtype).removeprefix("torch."))
          for dtype in (torch.float32, torch.bfloat16, torch.float16)]


def run_loss(case: LossInputs, backend: str, scale: float = 1.0, **options):
    """(loss, grad_hidden, grad_weight) of ``scale * loss`` through the public API."""
    hidden = case.hidden.detach().clone().requires_grad_()
    weight = case.weight.detach().clone().requires_grad_()
    loss = advdistill_loss(hidden, weight, case.targets, case.response_index, case.response_weights, case.wrong,
                           lam=case.lam, p_max=case.p_max, backend=backend, contrastive_mask=case.contrastive_mask,
                           **options)
    (scale * loss).backward()
    return loss.detach(), hidden.grad, weight.grad


def naive_loss(case: LossInputs, dtype: torch.dtype, scale: float = 1.0, **readings):
    """(loss, grad_hidden, grad_weight) of the materialised-logits loss with the matmul in ``dtype``."""
    hidden = case.hidden.detach().to(dtype).clone().requires_grad_()
    weight = case.weight.detach().to(dtype).clone().requires_grad_()
    loss = advdistill_loss_from_logits(hidden @ weight.T, case.targets, case.response_index, case.response_weights,
                                       case.wrong, lam=case.lam, p_max=case.p_max,
                                       contrastive_mask=case.contrastive_mask, **readings)
    (scale * loss).backward()
    return loss.detach(), hidden.grad, weight.grad


def max_error(actual, expected) -> list[float]:
    return [float((a.double() - e.double()).abs().max()) if a.numel() else 0.0 for a, e in zip(actual, expected)]


def assert_close_fp32(actual, expected) -> None:
    loss, grad_hidden, grad_weight = max_error(actual, expected)
    assert loss <= 1e-6 * max(1.0, abs(float(expected[0]))), f"loss error {loss}"
    gradients = (("grad_hidden", grad_hidden, expected[1]), ("grad_weight", grad_weight, expected[2]))
    for name, error, reference in gradients:
        bound = 1e-5 * max(float(reference.abs().max()), 1e-12)
        assert error <= bound, f"{name} error {error} > {bound}"


# ----------------------------------------------------------------------------------- accuracy


def assert_matches_ground_truth(candidate, case: LossInputs, dtype: torch.dtype, reference=None) -> None:
    """``candidate`` (loss, grad_hidden, grad_weight) against ``reference`` (default: the naive computation in
    float64), with ``dtype``'s tolerance: float32's fixed bounds, else the naive computation in ``dtype`` plus one
    rounding step."""
    if reference is None:
        reference = naive_loss(case, torch.float64)
    if dtype == torch.float32:
        assert_close_fp32(candidate, reference)
        return
    assert candidate[1].dtype == candidate[2].dtype == dtype
    naive_errors = max_error(naive_loss(case, dtype), reference)
    for name, error, naive_error, ref in zip(("loss", "grad_hidden", "grad_weight"), max_error(candidate, reference),
                                             naive_errors, reference):
        bound = naive_error + ROUNDING_STEP[dtype] * float(ref.abs().max())
        assert error <= bound, f"{name}: error {error} > naive-{dtype} error {naive_error} + slack"


@with_backends
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_float64_ground_truth(backend_device, dtype, shape):
    backend, device = backend_device
    case = random_case(**shape).to(device, dtype)
    assert_matches_ground_truth(run_loss(case, backend), case, dtype)


@with_backends
@pytest.mark.parametrize("dtype", DTYPES)
def test_small_chunks_match_float64_ground_truth(backend_device, dtype):
    """Many chunks: gradients accumulate across them and long responses are split."""
    backend, device = backend_device
    case = random_case(**ODD_CASE).to(device, dtype)
    assert_matches_ground_truth(run_loss(case, backend, chunk_size=5), case, dtype)


READINGS = [dict(ce_reduction="sum"), dict(contrastive_scale="per_response"),
            dict(ce_reduction="sum", contrastive_scale="per_response")]


@with_backends
@pytest.mark.parametrize("readings", READINGS, ids=["sum", "per-response", "sum-per-response"])
def test_every_reading_matches_float64_ground_truth(backend_device, readings):
    backend, device = backend_device
    case = random_case(**ODD_CASE).to(device)
    assert_close_fp32(run_loss(case, backend, **readings), naive_loss(case, torch.float64, **readings))


def written_out_loss(case: LossInputs, scale: float = 1.0):
    """(loss, grad_hidden, grad_weight) in float64 from the formula written out response by response, with a
    per-response ``lam`` (a tensor ``[R]`` or one number) and the contrastive mask (None: every token):
    ``sum_i w_i CE_i + sum_{i wrong, S_i > 0} lam_i C_i``, ``CE_i`` the mean of ``-logp`` over the response's
    tokens, ``C_i = -log(1 - min(p_mean_i, p_max))`` with ``p_mean_i`` the mean of ``p`` over its ``S_i`` tokens
    in the mask."""
    hidden = case.hidden.detach().double().cpu().requires_grad_()
    weight = case.weight.detach().double().cpu().requires_grad_()
    targets, responses = case.targets.cpu(), case.response_index.cpu()
    num_responses = case.response_weights.shape[0]
    lam = case.lam.double().cpu() if isinstance(case.lam, torch.Tensor) else torch.full((num_responses,), case.lam,
                                                                                         dtype=torch.float64)
    log_probs = torch.log_softmax(hidden @ weight.T, dim=-1)
    loss = hidden.new_zeros(())
    for i in range(num_responses):
        tokens = ((responses == i) & (targets != -100)).nonzero().squeeze(1)
        if tokens.numel() == 0:
            continue
        logp = log_probs[tokens, targets[tokens]]
        loss = loss + case.response_weights[i].double().cpu() * -logp.mean()
        in_mask = logp if case.contrastive_mask is None else logp[case.contrastive_mask.cpu()[tokens]]
        if case.wrong[i] and in_mask.numel() > 0:
            p_mean = in_mask.exp().mean()
            loss = loss + lam[i] * -torch.log(1 - torch.clamp(p_mean, max=case.p_max))
    (scale * loss).backward()
    return loss.detach(), hidden.grad, weight.grad


def per_response_lam_case(**shape) -> LossInputs:
    """:func:`random_case` with 4 responses, three of them wrong, each with its own lam (one of them 0)."""
    case = random_case(**shape)
    return replace(case, wrong=torch.tensor([True, True, False, True]),
                   lam=torch.tensor([0.7, 0.25, 0.9, 0.0], dtype=torch.float64))


@with_backends
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk_size", [None, 5], ids=["default-chunks", "chunks-of-5"])
def test_per_response_lam_matches_the_written_out_formula(backend_device, dtype, chunk_size):
    """``lam`` as a tensor ``[R]`` (several groups in one call, each with its lam / n_g): every backend against the
    float64 formula written out response by response, with the dtype's tolerance; a number is the same as a tensor
    repeating it."""
    backend, device = backend_device
    case = per_response_lam_case().to(device, dtype)
    reference = written_out_loss(case)
    torch.testing.assert_close(naive_loss(case, torch.float64)[0], reference[0].to(device), rtol=1e-12, atol=0)
    assert_matches_ground_truth(run_loss(case, backend, chunk_size=chunk_size), case, dtype, reference)
    repeated = replace(case, lam=torch.full((4,), 0.5, dtype=torch.float64, device=device))
    for expected, actual in zip(run_loss(replace(case, lam=0.5), backend, chunk_size=chunk_size),
                                run_loss(repeated, backend, chunk_size=chunk_size)):
        torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_per_response_lam_gradcheck_float64(backend):
    if backend == "cpp" and (reason := _cpp_skip_reason()):
        pytest.skip(reason)
    case = random_case(num_tokens=9, hidden_dim=3, vocab_size=7, num_responses=3, masked=2, seed=5).to(
        "cpu", torch.float64)
    lam, wrong = torch.tensor([0.9, 0.3, 0.0], dtype=torch.float64), torch.tensor([True, True, True])

    def loss(hidden, weight):
        return advdistill_loss(hidden, weight, case.targets, case.response_index, case.response_weights, wrong,
                               lam=lam, p_max=0.999, backend=backend, chunk_size=2)

    inputs = (case.hidden.clone().requires_grad_(), case.weight.clone().requires_grad_())
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def contrastive_mask_case(**shape) -> LossInputs:
    """:func:`per_response_lam_case` with a contrastive mask: response 0 (wrong) counts its tokens after the
    first three, response 1 (wrong) none (no contrastive term), response 3 (wrong, lam 0.5 here) every other
    token; the correct response 2 has a mask too, which changes nothing."""
    case = random_case(**shape)
    response_index = case.response_index
    position = torch.zeros_like(response_index)
    for i in range(4):
        tokens = (response_index == i).nonzero().squeeze(1)
        position[tokens] = torch.arange(tokens.numel())
    mask = torch.where(response_index == 0, position >= 3,
                       torch.where(response_index == 3, position % 2 == 1, response_index == 2))
    return replace(case, wrong=torch.tensor([True, True, False, True]),
                   lam=torch.tensor([0.7, 0.25, 0.9, 0.5], dtype=torch.float64), contrastive_mask=mask)


@with_backends
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk_size", [None, 5], ids=["default-chunks", "chunks-of-5"])
@pytest.mark.parametrize("shape", [pytest.param(dict(), id="N48-d32-V300"),
                                   pytest.param(dict(num_tokens=150, hidden_dim=40, vocab_size=515, masked=0, seed=2),
                                                id="N150-d40-V515")])
def test_contrastive_mask_matches_the_written_out_formula(backend_device, dtype, chunk_size, shape):
    """``contrastive_mask``: p_mean_i of each wrong response over its tokens in the mask only, nothing for a wrong
    response without any, CE unchanged; every backend against the float64 formula written out, with the dtype's
    tolerance (the naive computation in that dtype plus one rounding step)."""
    backend, device = backend_device
    case = contrastive_mask_case(**shape).to(device, dtype)
    reference = written_out_loss(case)
    torch.testing.assert_close(naive_loss(case, torch.float64)[0], reference[0].to(device), rtol=1e-12, atol=0)
    assert_matches_ground_truth(run_loss(case, backend, chunk_size=chunk_size), case, dtype, reference)
    unmasked = run_loss(replace(case, contrastive_mask=None), backend, chunk_size=chunk_size)
    assert abs(float(unmasked[0]) - float(reference[0])) > 1e-5 * abs(float(reference[0]))  # the mask matters


@with_backends
def test_contrastive_mask_of_every_token_is_no_mask_and_an_empty_one_no_contrastive_term(backend_device):
    backend, device = backend_device
    case = per_response_lam_case(**ODD_CASE | dict(num_responses=4)).to(device)
    every = torch.ones_like(case.targets, dtype=torch.bool)
    assert_close_fp32(run_loss(replace(case, contrastive_mask=every), backend), naive_loss(case, torch.float64))
    nothing = replace(case, contrastive_mask=torch.zeros_like(every))
    assert_close_fp32(run_loss(nothing, backend), naive_loss(replace(case, lam=0.0), torch.float64))


@with_backends
def test_response_stats_take_p_mean_over_the_contrastive_mask(backend_device):
    backend, device = backend_device
    case = contrastive_mask_case().to(device)
    stats = response_stats(case.hidden, case.weight, case.targets, case.response_index, 4, backend=backend,
                           contrastive_mask=case.contrastive_mask)
    plain = response_stats(case.hidden, case.weight, case.targets, case.response_index, 4, backend=backend)
    logp = torch.log_softmax(case.hidden.double() @ case.weight.double().T, dim=-1)
    for response in range(4):
        tokens = (case.response_index == response) & (case.targets != -100)
        in_mask = tokens & case.contrastive_mask
        token_logp = logp[in_mask].gather(1, case.targets[in_mask].unsqueeze(1)).squeeze(1)
        assert int(stats.contrastive_tokens[response]) == int(in_mask.sum())
        assert int(stats.num_tokens[response]) == int(tokens.sum())
        assert float(stats.ce[response]) == pytest.approx(float(plain.ce[response]), rel=1e-5)
        expected = token_logp.exp().mean().item() if token_logp.numel() else 0.0
        assert float(stats.p_mean[response]) == pytest.approx(expected, rel=1e-5, abs=1e-12)
    assert plain.contrastive_tokens is None


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_contrastive_mask_gradcheck_float64(backend):
    if backend == "cpp" and (reason := _cpp_skip_reason()):
        pytest.skip(reason)
    case = random_case(num_tokens=9, hidden_dim=3, vocab_size=7, num_responses=3, masked=2, seed=5).to(
        "cpu", torch.float64)
    wrong = torch.tensor([True, True, True])
    mask = torch.tensor([False, False, True, False, True, True, False, False, True])

    def loss(hidden, weight):
        return advdistill_loss(hidden, weight, case.targets, case.response_index, case.response_weights, wrong,
                               lam=0.8, p_max=0.999, backend=backend, chunk_size=2, contrastive_mask=mask)

    inputs = (case.hidden.clone().requires_grad_(), case.weight.clone().requires_grad_())
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def two_response_case() -> LossInputs:
    """V=3, d=2, W = [e1, e2, 0]: token probabilities 1/2, 1/3 (response 0) and 3/5 (response 1, wrong)."""
    ln2, ln3 = math.log(2.0), math.log(3.0)
    return LossInputs(
        hidden=torch.tensor([[ln2, 0.0], [0.0, 0.0], [0.0, ln3], [5.0, -5.0]], dtype=torch.float64),
        weight=torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64),
        targets=torch.tensor([0, 2, 1, -100]),
        response_index=torch.tensor([0, 0, 1, -1]),
        response_weights=torch.tensor([0.4, 0.6], dtype=torch.float64),
        wrong=torch.tensor([False, True]),
        lam=0.5,
    )


def test_hand_computed_two_responses():
    """The group of :func:`two_response_case`, by hand."""
    ln2, ln3 = math.log(2.0), math.log(3.0)
    case = two_response_case()
    # CE_0 = (ln 2 + ln 3) / 2, CE_1 = ln(5/3), contrastive = -ln(1 - 3/5) = ln(5/2)
    expected_loss = 0.4 * (ln2 + ln3) / 2 + 0.6 * math.log(5 / 3) + 0.5 * math.log(5 / 2)
    # token 2: c = -0.6/1 + 0.5 * (3/5) / (1 * (1 - 3/5)) = 0.15; dz = c (onehot(1) - [1/5, 3/5, 1/5])
    expected_grad_token2 = torch.tensor([-0.03, 0.06], dtype=torch.float64)
    backends = ["torch"] + (["cpp"] if _cpp_skip_reason() is None else [])
    for backend in backends:
        loss, grad_hidden, _ = run_loss(case, backend)
        assert loss.item() == pytest.approx(expected_loss, rel=1e-12), backend
        torch.testing.assert_close(grad_hidden[2], expected_grad_token2, rtol=1e-12, atol=1e-14)
        assert torch.equal(grad_hidden[3], torch.zeros(2, dtype=torch.float64))
    assert advdistill_loss_from_logits(case.hidden @ case.weight.T, case.targets, case.response_index,
                                       case.response_weights, case.wrong).item() == pytest.approx(expected_loss)


@pytest.mark.parametrize("ce_reduction", ["mean", "sum"])
@pytest.mark.parametrize("contrastive_scale", ["none", "per_response"])
def test_hand_computed_readings_of_eqs_5_and_6(ce_reduction, contrastive_scale):
    """The group of :func:`two_response_case` under each reading: token sums weigh response 0 (two
    tokens) twice, ``per_response`` halves lam (n = 2 responses). Token 2's coefficient, per reading:
    c = -0.6 * (T_1 = 1) + (lam' * (3/5) / (1 - 3/5) = 1.5 lam'), and dz_2 = c * [-1/5, 2/5] on its two
    hidden coordinates."""
    ln2, ln3 = math.log(2.0), math.log(3.0)
    case = two_response_case()
    ce_0 = (ln2 + ln3) if ce_reduction == "sum" else (ln2 + ln3) / 2
    lam = 0.25 if contrastive_scale == "per_response" else 0.5
    expected_loss = 0.4 * ce_0 + 0.6 * math.log(5 / 3) + lam * math.log(5 / 2)
    coefficient = -0.6 + 1.5 * lam
    expected_grad_token2 = coefficient * torch.tensor([-0.2, 0.4], dtype=torch.float64)
    readings = dict(ce_reduction=ce_reduction, contrastive_scale=contrastive_scale)
    naive = naive_loss(case, torch.float64, **readings)
    assert naive[0].item() == pytest.approx(expected_loss, rel=1e-12)
    torch.testing.assert_close(naive[1][2], expected_grad_token2, rtol=1e-12, atol=1e-14)
    for backend in ["torch"] + (["cpp"] if _cpp_skip_reason() is None else []):
        loss, grad_hidden, _ = run_loss(case, backend, **readings)
        assert loss.item() == pytest.approx(expected_loss, rel=1e-12), backend
        torch.testing.assert_close(grad_hidden[2], expected_grad_token2, rtol=1e-12, atol=1e-14)


def test_unknown_reading_is_rejected_naming_it():
    case = random_case()
    with pytest.raises(ValueError, match="ce_reduction: expected one of"):
        run_loss(case, "torch", ce_reduction="token")
    with pytest.raises(ValueError, match="contrastive_scale: expected one of"):
        AdvDistillLoss(contrastive_scale="1/n")


# ----------------------------------------------------------------------------------- edge cases


@with_backends
def test_all_tokens_masked_gives_zero_loss_and_exactly_zero_grads(backend_device):
    backend, device = backend_device
    case = random_case(masked=48).to(device)
    loss, grad_hidden, grad_weight = run_loss(case, backend)
    assert loss.item() == 0.0
    assert torch.equal(grad_hidden, torch.zeros_like(grad_hidden))
    assert torch.equal(grad_weight, torch.zeros_like(grad_weight))


@with_backends
@pytest.mark.parametrize("masked", [10, 48])
def test_backend_function_handles_masked_tokens_itself(backend_device, masked):
    """The backends are also correct without the entry point's masked-token removal."""
    backend, device = backend_device
    case = random_case(masked=masked).to(device)
    function = backends.load(backend).fused_loss
    hidden = case.hidden.clone().requires_grad_()
    weight = case.weight.clone().requires_grad_()
    loss = function(hidden, weight, case.targets, case.response_index, case.response_weights, case.wrong,
                    lam=case.lam, p_max=case.p_max, ignore_index=-100, chunk_size=None)
    loss.backward()
    assert_close_fp32((loss.detach(), hidden.grad, weight.grad), naive_loss(case, torch.float64))
    assert torch.equal(hidden.grad[:masked], torch.zeros_like(hidden.grad[:masked]))


@with_backends
def test_no_wrong_responses_is_weighted_cross_entropy(backend_device):
    backend, device = backend_device
    case = replace(random_case(), wrong=torch.zeros(4, dtype=torch.bool)).to(device)
    result = run_loss(case, backend)
    assert_close_fp32(result, naive_loss(case, torch.float64))
    assert_close_fp32(result, naive_loss(replace(case, lam=0.0), torch.float64))


@with_backends
def test_one_token_responses(backend_device):
    backend, device = backend_device
    case = random_case(num_tokens=6, num_responses=6, masked=0, seed=3)
    case = replace(case, response_index=torch.arange(6), wrong=torch.tensor([True, False] * 3)).to(device)
    assert_close_fp32(run_loss(case, backend), naive_loss(case, torch.float64))


@with_backends
def test_response_without_tokens_contributes_nothing(backend_device):
    backend, device = backend_device
    case = random_case(num_responses=3)
    # response 3 (wrong, weight > 0) has no token at all
    case = replace(case, response_weights=torch.tensor([0.2, 0.3, 0.1, 0.4]),
                   wrong=torch.tensor([False, True, False, True])).to(device)
    loss, grad_hidden, grad_weight = run_loss(case, backend)
    assert torch.isfinite(loss) and torch.isfinite(grad_hidden).all() and torch.isfinite(grad_weight).all()
    assert_close_fp32((loss, grad_hidden, grad_weight), naive_loss(case, torch.float64))
    without = replace(case, response_weights=case.response_weights[:3], wrong=case.wrong[:3])
    assert_close_fp32((loss, grad_hidden, grad_weight), naive_loss(without, torch.float64))


@with_backends
def test_clamp_at_p_max_kills_contrastive_gradient(backend_device):
    """A wrong response with p_mean above p_max: its contrastive term is the constant -log(1 - p_max)."""
    backend, device = backend_device
    case = random_case(masked=0, seed=4)
    confident = case.weight[case.targets] * 40.0  # target logit far above the others: p_t ~ 1
    in_response_1 = case.response_index == 1
    hidden = torch.where(in_response_1.unsqueeze(1), confident, case.hidden)
    case = replace(case, hidden=hidden, p_max=0.9, wrong=torch.tensor([False, True, False, False])).to(device)
    stats = response_stats(case.hidden, case.weight, case.targets, case.response_index, 4, backend="torch")
    assert stats.p_mean[1] > case.p_max
    loss, grad_hidden, grad_weight = run_loss(case, backend)
    ce_only = naive_loss(replace(case, lam=0.0), torch.float64)
    assert loss.item() == pytest.approx(ce_only[0].item() - case.lam * math.log1p(-case.p_max), rel=1e-6)
    assert_close_fp32((ce_only[0], grad_hidden, grad_weight), ce_only)
    assert_close_fp32((loss, grad_hidden, grad_weight), naive_loss(case, torch.float64))


@with_backends
def test_loss_scaled_by_two_scales_gradients(backend_device):
    backend, device = backend_device
    case = random_case().to(device)
    assert_close_fp32(run_loss(case, backend, scale=2.0), naive_loss(case, torch.float64, scale=2.0))


@with_backends
def test_no_grad_and_frozen_weight(backend_device):
    backend, device = backend_device
    case = random_case().to(device)
    expected = naive_loss(case, torch.float64)
    with torch.no_grad():
        loss = advdistill_loss(case.hidden, case.weight, case.targets, case.response_index, case.response_weights,
                               case.wrong, backend=backend)
    assert not loss.requires_grad
    assert loss.item() == pytest.approx(expected[0].item(), rel=1e-6)
    hidden = case.hidden.clone().requires_grad_()
    advdistill_loss(hidden, case.weight, case.targets, case.response_index, case.response_weights, case.wrong,
                    backend=backend).backward()
    assert_close_fp32((expected[0], hidden.grad, expected[2]), expected)


@with_backends
def test_response_stats_match_ground_truth(backend_device):
    backend, device = backend_device
    case = random_case(**ODD_CASE).to(device)
    stats = response_stats(case.hidden, case.weight, case.targets, case.response_index, 3, backend=backend)
    logp = torch.log_softmax(case.hidden.double() @ case.weight.double().T, dim=-1)
    for response in range(3):
        tokens = (case.response_index == response) & (case.targets != -100)
        token_logp = logp[tokens].gather(1, case.targets[tokens].unsqueeze(1)).squeeze(1)
        assert int(stats.num_tokens[response]) == int(tokens.sum())
        assert float(stats.ce[response]) == pytest.approx(-token_logp.mean().item(), rel=1e-5)
        assert float(stats.p_mean[response]) == pytest.approx(token_logp.exp().mean().item(), rel=1e-5)


def test_autocast_computes_in_autocast_dtype():
    """Under autocast float32 (or mixed) inputs are cast like nn.Linear inputs; outside, mixed dtypes fail."""
    case = random_case()
    as_bf16 = run_loss(case.to("cpu", torch.bfloat16), "torch")
    hidden = case.hidden.clone().requires_grad_()
    weight = case.weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = advdistill_loss(hidden, weight.bfloat16(), case.targets, case.response_index, case.response_weights,
                               case.wrong, backend="torch")
    loss.backward()
    assert loss.dtype == torch.float32 and hidden.grad.dtype == torch.float32
    assert loss.item() == as_bf16[0].item()
    torch.testing.assert_close(hidden.grad, as_bf16[1].float())
    with pytest.raises(TypeError, match="same dtype"):
        advdistill_loss(case.hidden, case.weight.bfloat16(), case.targets, case.response_index,
                        case.response_weights, case.wrong)


# ----------------------------------------------------------------------------------- chunking, gradcheck


def test_tile_plan_packs_whole_responses_and_splits_long_ones():
    """Responses of 3, 2 and 6 tokens (the last one wrong) with tiles of 4 tokens: [0, 3) and [3, 5) hold
    whole responses; the 6-token wrong response needs its p_mean first, so a statistics-only pass over
    [5, 9) and [9, 11) precedes the gradient pass over the same pieces."""
    response_index = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2, -1])
    targets = torch.where(response_index >= 0, 1, -100)
    wrong = torch.tensor([False, False, True])
    plan = plan_tiles(targets, response_index, wrong, 0.5, -100, 4, 4, need_gradients=True)
    assert plan.tiles == [Tile(0, 3, True, True), Tile(3, 5, True, True), Tile(5, 9, True, False),
                          Tile(9, 11, True, False), Tile(5, 9, False, True), Tile(9, 11, False, True)]
    assert plan.order.tolist() == list(range(11))
    without_contrastive = plan_tiles(targets, response_index, wrong, 0.0, -100, 4, 4, need_gradients=True)
    assert [tile.compute_gradients for tile in without_contrastive.tiles] == [True] * 4
    default = plan_tiles(targets, response_index, wrong, 0.5, -100, None, 4, need_gradients=True)
    assert default.tiles == [Tile(0, 5, True, True), Tile(5, 11, True, True)]
    no_lam_for_it = plan_tiles(targets, response_index, wrong, torch.tensor([0.5, 0.5, 0.0]), -100, 4, 4,
                               need_gradients=True)
    assert [tile.compute_gradients for tile in no_lam_for_it.tiles] == [True] * 4
    nothing_in_mask = plan_tiles(targets, response_index, wrong, 0.5, -100, 4, 4, need_gradients=True,
                                 contrastive_mask=response_index < 2)
    assert [tile.compute_gradients for tile in nothing_in_mask.tiles] == [True] * 4


@with_backends
def test_interleaved_responses_match_float64_ground_truth(backend_device):
    """Tokens of different responses interleaved (and masked ones among them): the backends reorder them."""
    backend, device = backend_device
    case = random_case(**ODD_CASE)
    permutation = torch.randperm(37, generator=torch.Generator().manual_seed(7))
    case = replace(case, hidden=case.hidden[permutation], targets=case.targets[permutation],
                   response_index=case.response_index[permutation]).to(device)
    function = backends.load(backend).fused_loss
    hidden = case.hidden.clone().requires_grad_()
    weight = case.weight.clone().requires_grad_()
    loss = function(hidden, weight, case.targets, case.response_index, case.response_weights, case.wrong,
                    lam=case.lam, p_max=case.p_max, ignore_index=-100, chunk_size=7)
    loss.backward()
    assert_close_fp32((loss.detach(), hidden.grad, weight.grad), naive_loss(case, torch.float64))


CHUNK_SIZES = {"torch": (1, 5, 37, 64), "cpp": (1, 5, 11, 32, 4096), "triton": (7, 16, 64)}


@with_backends
def test_chunk_size_invariance(backend_device):
    """``chunk_size`` (tokens whose logits are alive at once) only changes memory use.

    The sizes include 1, sizes that divide no response length of N=37, and sizes above N (for cpp
    11 splits every response, 32 holds whole responses but not all of them).
    """
    backend, device = backend_device
    case = random_case(**ODD_CASE).to(device)
    results = [run_loss(case, backend, chunk_size=chunk) for chunk in CHUNK_SIZES[backend]]
    for result in results[1:]:
        assert_close_fp32(result, results[0])
    assert_close_fp32(results[0], naive_loss(case, torch.float64))


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpp_gemm_providers_agree(dtype, monkeypatch):
    """oneDNN and at::mm tiles (``ADVDISTILL_CPP_GEMM``) both meet the dtype's tolerance; a typo is rejected."""
    if reason := _cpp_skip_reason():
        pytest.skip(reason)
    case = random_case(**ODD_CASE).to("cpu", dtype)
    for provider in cpp_backend.GEMM_PROVIDERS:
        monkeypatch.setenv("ADVDISTILL_CPP_GEMM", provider)
        if provider == "onednn" and not cpp_backend.onednn_runs(dtype):
            with pytest.raises(BackendUnavailableError, match="oneDNN matmul does not take"):
                run_loss(case, "cpp")
            continue
        assert_matches_ground_truth(run_loss(case, "cpp", chunk_size=11), case, dtype)
    monkeypatch.setenv("ADVDISTILL_CPP_GEMM", "blas")
    with pytest.raises(ValueError, match="ADVDISTILL_CPP_GEMM: expected one of"):
        run_loss(case, "cpp")


@pytest.mark.parametrize("aten_share, chosen", [(0.5, "aten"), (0.95, "onednn"), (2.0, "onednn")])
def test_cpp_gemm_provider_is_the_faster_one_for_the_shape(aten_share, chosen, monkeypatch, tmp_path):
    """Where oneDNN takes the dtype, the tiles run on whichever provider's tiles ran faster in the kernel's step (at::mm
    by a margin), timed once per machine and kept; ADVDISTILL_CPP_GEMM still decides when set. The step's fixed
    work, the same for both, cancels: timed as whole one-tile steps, at::mm at half oneDNN's tile time would lose
    the margin (5.5 s against 6)."""
    if reason := _cpp_skip_reason():
        pytest.skip(reason)
    if not cpp_backend.onednn_runs(torch.float32):
        pytest.skip("oneDNN does not take float32 on this CPU: at::mm is the only provider")
    timed = []

    def fake_seconds(hidden, weight, tile_tokens, use_onednn):
        timed.append((tuple(hidden.shape), tuple(weight.shape), tile_tokens, use_onednn))
        return 5.0 + hidden.shape[0] / tile_tokens * (1.0 if use_onednn else aten_share)

    monkeypatch.setattr(cpp_backend, "step_seconds", fake_seconds)
    monkeypatch.setenv("ADVDISTILL_KERNELS_CACHE", str(tmp_path))  # the choices file lives in the build folder
    monkeypatch.delenv("ADVDISTILL_CPP_GEMM", raising=False)
    cpp_backend.fastest_gemm.cache_clear()
    try:
        assert cpp_backend.gemm_provider(torch.float32, (24, 1000)) == chosen
        tile = cpp_backend.default_tile_tokens(1000)
        assert set(timed) == {((tokens, 24), (1000, 24), tile, onednn)
                              for tokens in (tile, 3 * tile) for onednn in (True, False)}
        assert len(timed) == 2 + 5 * 4
        cpp_backend.fastest_gemm.cache_clear()  # a new process: it reads the kept choice and times nothing
        monkeypatch.setattr(cpp_backend, "step_seconds", lambda *_: pytest.fail("timed again"))
        assert cpp_backend.gemm_provider(torch.float32, (24, 1000)) == chosen
        (kept,) = tmp_path.rglob(cpp_backend.GEMM_CHOICES_FILE)
        key = f"float32 d=24 V=1000 tile={tile} threads={torch.get_num_threads()}"
        assert json.loads(kept.read_text()) == {key: chosen}
        for provider in cpp_backend.GEMM_PROVIDERS:
            monkeypatch.setenv("ADVDISTILL_CPP_GEMM", provider)
            assert cpp_backend.gemm_provider(torch.float32, (24, 1000)) == provider
    finally:
        cpp_backend.fastest_gemm.cache_clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cpp_providers_are_timed_on_the_kernels_own_step(dtype):
    """The provider timing runs the extension's step, for each provider that takes the dtype: a broken call to the
    kernel fails here, not in a user's first step, and more tiles take longer."""
    if reason := _cpp_skip_reason():
        pytest.skip(reason)
    tile = cpp_backend.MIN_TILE_TOKENS
    hidden = torch.randn(8 * tile, 64).to(dtype)
    weight = torch.randn(4000, 64).to(dtype)
    for use_onednn in [False] + ([True] if cpp_backend.onednn_runs(dtype) else []):
        one, eight = (min(cpp_backend.step_seconds(hidden[:n * tile], weight, tile, use_onednn) for _ in range(3))
                      for n in (1, 8))
        assert 0.0 < one < eight


@pytest.mark.parametrize("provider", ["onednn", "aten"])
def test_cpp_bfloat16_weight_gradient_sums_its_tiles_in_float32(provider, monkeypatch):
    """Over 128 tiles, cpp's bfloat16 grad_weight stays within 2x the floor (the float64 gradient rounded to
    bfloat16); summed in bfloat16, as it was, it was 8.5x the floor at this size."""
    if reason := _cpp_skip_reason():
        pytest.skip(reason)
    if provider == "onednn" and not cpp_backend.onednn_runs(torch.bfloat16):
        pytest.skip("oneDNN does not take bfloat16 on this CPU")
    monkeypatch.setenv("ADVDISTILL_CPP_GEMM", provider)
    case = random_case(num_tokens=4096, hidden_dim=32, vocab_size=1024, num_responses=32, masked=0, seed=3).to(
        "cpu", torch.bfloat16)
    _, _, grad_weight = run_loss(case, "cpp", chunk_size=32)
    _, _, exact = run_loss(case.to("cpu", torch.float64), "torch")
    floor = (exact.bfloat16().double() - exact).norm() / exact.norm()
    error = (grad_weight.double() - exact).norm() / exact.norm()
    assert grad_weight.dtype == torch.bfloat16 and error < 2 * floor, (error.item(), floor.item())


def test_cpp_brgemm_runs_where_the_cpu_has_bfloat16_dot_products(monkeypatch):
    """The extension's probe finds oneDNN's batch-reduce micro-kernel on CPUs with bfloat16 dot products (AMX or
    AVX-512-BF16); ATen's could_pack, its gate before, said no on AVX-512-BF16 EPYCs, where it runs."""
    if reason := _cpp_skip_reason():
        pytest.skip(reason)
    if not cpu_flags() & BF16_DOT_PRODUCT_FLAGS:
        pytest.skip("this CPU has no bfloat16 dot products (avx512_bf16, amx_bf16)")
    if not cpp_backend.onednn_runs(torch.bfloat16):
        pytest.skip("oneDNN does not take bfloat16 on this CPU")
    assert cpp_backend.brgemm_runs()
    monkeypatch.setenv("ADVDISTILL_CPP_GEMM", "onednn")
    assert cpp_backend.gemm_description(torch.bfloat16, (64, 1000)) == "onednn + brgemm"


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpp_step_peak_memory_is_its_outputs_accumulator_and_one_tile(dtype):
    """A full cpp step at the benchmark's small size (measured as the benchmark does, in a fresh process) holds
    the gradient outputs, the float32 grad_weight accumulator and one logits tile (float32 for float16 inputs,
    which run float32 GEMMs), plus 8 MB: no float32 copy of a float16 weight (V d 4 bytes, which put float16 at
    99 MB here against this bound of 88; 71 MB without it)."""
    if reason := _cpp_skip_reason():
        pytest.skip(reason)
    if dtype == torch.bfloat16 and not cpp_backend.onednn_runs(dtype):
        pytest.skip("bfloat16 GEMMs take ATen's slow path on this CPU (kernels/README.md), whose buffers are its own")
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("/proc/self/clear_refs is not writable here: the benchmark cannot measure a CPU peak")
    with loaded_script(BENCHMARK) as bench:
        size = bench.SIZES["small"]
        peak_mb = bench.memory_in_subprocess("cpp", "small", str(dtype).removeprefix("torch."), None)
    assert peak_mb is not None, "the memory worker failed (its error is printed above)"
    elements = {"outputs": (size.vocab_size + size.num_tokens) * size.hidden_dim,
                "tile": cpp_backend.default_tile_tokens(size.vocab_size) * size.vocab_size}
    output_bytes = dtype.itemsize * elements["outputs"]
    accumulator_bytes = 0 if dtype == torch.float32 else 4 * size.vocab_size * size.hidden_dim
    tile_bytes = (2 if dtype == torch.bfloat16 else 4) * elements["tile"]
    bound_mb = (output_bytes + accumulator_bytes + tile_bytes) / 2**20 + 8
    assert peak_mb <= bound_mb, (peak_mb, bound_mb)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_gradcheck_float64(backend):
    if backend == "cpp" and (reason := _cpp_skip_reason()):
        pytest.skip(reason)
    case = random_case(num_tokens=9, hidden_dim=3, vocab_size=7, num_responses=3, masked=2, seed=5).to(
        "cpu", torch.float64)
    hidden = case.hidden.clone().requires_grad_()
    weight = case.weight.clone().requires_grad_()

    def loss(hidden, weight):
        return advdistill_loss(hidden, weight, case.targets, case.response_index, case.response_weights, case.wrong,
                               lam=0.7, p_max=0.999, backend=backend, chunk_size=2)

    assert torch.autograd.gradcheck(loss, (hidden, weight), eps=1e-6, atol=1e-7, rtol=1e-5)


# ----------------------------------------------------------------------------------- API


def test_module_matches_function_and_reports_options():
    case = random_case()
    module = AdvDistillLoss(lam=0.3, p_max=0.95, backend="torch", chunk_size=16)
    expected = advdistill_loss(case.hidden, case.weight, case.targets, case.response_index, case.response_weights,
                               case.wrong, lam=0.3, p_max=0.95, backend="torch")
    actual = module(case.hidden, case.weight, case.targets, case.response_index, case.response_weights, case.wrong)
    assert actual.item() == pytest.approx(expected.item(), rel=1e-6)
    assert "lam=0.3" in repr(module) and "backend='torch'" in repr(module)


def test_available_backends_and_auto():
    backends = available_backends("cpu")
    assert backends[0] == "torch"
    assert ("cpp" in backends) == (_cpp_skip_reason() is None)
    case = random_case()
    auto = run_loss(case, "auto")
    assert_close_fp32(auto, naive_loss(case, torch.float64))


@pytest.mark.failure_mode(
    "loss backend requested where it cannot run (triton without CUDA)",
    sees="an error naming the backend and why",
    kept="nothing computed")
@pytest.mark.skipif(INTERPRETED, reason="the interpreter makes triton usable on CPU")
def test_unavailable_backend_raises_naming_it():
    case = random_case()
    with pytest.raises(BackendUnavailableError, match="'triton'"):
        advdistill_loss(case.hidden, case.weight, case.targets, case.response_index, case.response_weights,
                        case.wrong, backend="triton")
    with pytest.raises(ValueError, match="'cuda_magic'"):
        advdistill_loss(case.hidden, case.weight, case.targets, case.response_index, case.response_weights,
                        case.wrong, backend="cuda_magic")


@pytest.mark.failure_mode(
    "fused loss called with malformed tensors",
    sees="TypeError/ValueError naming the argument, what was expected and what was passed",
    kept="nothing computed")
@pytest.mark.parametrize("change, error, message", [
    (dict(hidden=torch.randn(48, 31)), ValueError, r"weight: expected shape \[V, 31\]"),
    (dict(weight=torch.randn(300, 32, dtype=torch.float64)), TypeError, "same dtype"),
    (dict(targets=torch.zeros(47, dtype=torch.int64)), ValueError, r"targets: expected shape \[48\]"),
    (dict(targets=torch.full((48,), 300)), ValueError, r"targets\[0\].*\[0, 300\).*got 300"),
    (dict(response_index=torch.full((48,), 4)), ValueError, r"response_index\[6\].*\[0, 4\).*got 4"),
    (dict(wrong=torch.zeros(3, dtype=torch.bool)), ValueError, r"wrong: expected shape \[4\]"),
    (dict(wrong=torch.zeros(4)), TypeError, "wrong: expected dtype in \\(bool\\)"),
    (dict(targets=torch.zeros(48, dtype=torch.int32)), TypeError, "targets: expected dtype in \\(int64\\)"),
    (dict(p_max=1.0), ValueError, r"p_max: expected a value in \(0, 1\)"),
    (dict(lam=torch.ones(3)), ValueError, r"lam: expected shape \[4\] \(R from response_weights\) or a number"),
    (dict(lam=torch.ones(4, dtype=torch.int64)), TypeError, r"lam: expected dtype in"),
    (dict(lam=torch.tensor([0.5, float("nan"), 0.5, 0.5])), ValueError, r"lam: expected finite values"),
    (dict(contrastive_mask=torch.ones(47, dtype=torch.bool)), ValueError, r"contrastive_mask: expected shape \[48\]"),
    (dict(contrastive_mask=torch.ones(48)), TypeError, r"contrastive_mask: expected dtype in \(bool\)"),
], ids=["hidden-dim", "dtype-mismatch", "targets-shape", "target-range", "response-range", "wrong-shape",
        "wrong-dtype", "targets-dtype", "p_max", "lam-shape", "lam-dtype", "lam-nan", "mask-shape", "mask-dtype"])
def test_invalid_inputs_are_rejected_with_expected_and_actual(change, error, message):
    case = replace(random_case(), **change)
    with pytest.raises(error, match=message):
        advdistill_loss(case.hidden, case.weight, case.targets, case.response_index, case.response_weights,
                        case.wrong, lam=case.lam, p_max=case.p_max, backend="torch",
                        contrastive_mask=case.contrastive_mask)


# ----------------------------------------------------------------------------------- triton on CPU


@pytest.mark.skipif(INTERPRETED, reason="already inside the interpreter subprocess")
@pytest.mark.skipif(not TRITON_INSTALLED, reason="triton is not installed")
def test_triton_under_interpreter():
    """Runs this file's triton-cpu cases in a subprocess with TRITON_INTERPRET=1."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "triton-cpu-interpreted",
               str(Path(__file__))]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    assert " passed" in output and "skipped" not in output.splitlines()[-1], output[-2000:]
