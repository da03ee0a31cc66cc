import math

import pytest
import torch
import torch.nn.functional as F
from advdistill_kernels import advdistill_loss_from_logits

from advdistill.config import LossConfig
from advdistill.losses import advantage_weights, group_loss, next_token_view, sft_loss


def test_hand_computed_two_response_group():
    # V=2, d=1, W=[[1],[0]] -> logits [h, 0]; each response has one target token 0.
    # Response 0 (correct): h=ln 3 -> p=3/4. Response 1 (wrong): h=0 -> p=1/2.
    weight = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    hidden = torch.tensor([[[math.log(3)], [0.0]], [[0.0], [0.0]]], dtype=torch.float64)
    labels = torch.tensor([[-100, 0], [-100, 0]])
    advantages = torch.tensor([1.0, -1.0])
    correct = torch.tensor([True, False])
    loss = group_loss(hidden, weight, labels, advantages, correct, LossConfig(backend="torch", tau=0.5, lam=0.5))
    w0, w1 = 1 / (1 + math.exp(-4)), 1 / (1 + math.exp(4))  # softmax([1, -1] / 0.5)
    expected = w0 * math.log(4 / 3) + w1 * math.log(2) + 0.5 * -math.log(1 - 0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_advantage_weights_are_a_softmax_over_the_group():
    weights = advantage_weights(torch.tensor([0.0, 1.0, 2.0]), tau=0.5)
    assert weights.sum().item() == pytest.approx(1.0)
    assert weights.tolist() == pytest.approx(torch.softmax(torch.tensor([0.0, 2.0, 4.0]), 0).tolist())


def test_sft_loss_equals_cross_entropy():
    torch.manual_seed(0)
    hidden, weight = torch.randn(3, 6, 4), torch.randn(11, 4)
    labels = torch.randint(0, 11, (3, 6))
    labels[:, :2] = -100
    labels[2, 4:] = -100
    expected = F.cross_entropy((hidden @ weight.T)[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1),
                               ignore_index=-100)
    for backend in ("torch", "cpp"):
        assert sft_loss(hidden, weight, labels, LossConfig(backend=backend)).item() == pytest.approx(
            expected.item(), rel=1e-5)


def test_group_loss_gradcheck_float64():
    torch.manual_seed(1)
    hidden = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 9, (3, 5))
    labels[:, 0] = -100
    labels[1, 3:] = -100
    advantages, correct = torch.tensor([0.5, -1.0, 0.2]), torch.tensor([True, False, False])
    cfg = LossConfig(backend="torch", lam=0.5, p_max=0.999)
    assert torch.autograd.gradcheck(lambda h, w: group_loss(h, w, labels, advantages, correct, cfg), (hidden, weight))


def test_next_token_view_shifts_labels():
    hidden = torch.arange(2 * 3 * 1, dtype=torch.float32).reshape(2, 3, 1)
    labels = torch.tensor([[-100, 5, 6], [-100, 7, -100]])
    flat, targets, rows = next_token_view(hidden, labels)
    assert flat.squeeze(1).tolist() == [0.0, 1.0, 3.0, 4.0]
    assert targets.tolist() == [5, 6, 7, -100]
    assert rows.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize(("ce_reduction", "contrastive_scale"), [("sum", "none"), ("mean", "per_response")])
def test_group_loss_passes_the_configured_reading_to_the_kernel(ce_reduction, contrastive_scale):
    """The training loss of a group under a reading equals the kernel's ground truth under that reading."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 6, 8, generator=generator, dtype=torch.float64)
    weight = torch.randn(20, 8, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 20, (3, 6), generator=generator)
    labels[:, :2] = -100
    labels[2, 4:] = -100
    advantages, correct = torch.tensor([1.0, -0.5, -0.5]), torch.tensor([True, False, False])
    cfg = LossConfig(backend="torch", ce_reduction=ce_reduction, contrastive_scale=contrastive_scale)
    flat, targets, rows = next_token_view(hidden, labels)
    expected = advdistill_loss_from_logits(flat @ weight.T, targets, rows, advantage_weights(advantages, cfg.tau,
                                           torch.float64), ~correct, lam=cfg.lam, p_max=cfg.p_max,
                                           ce_reduction=ce_reduction, contrastive_scale=contrastive_scale)
    default = group_loss(hidden, weight, labels, advantages, correct, LossConfig(backend="torch"))
    loss = group_loss(hidden, weight, labels, advantages, correct, cfg)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    assert loss.item() != pytest.approx(default.item(), rel=1e-3)
