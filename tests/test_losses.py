import math

import pytest
import torch
import torch.nn.functional as F
from advdistill_kernels import advdistill_loss_from_logits

from advdistill.config import LossConfig
from advdistill.losses import advantage_weights, group_loss, group_loss_terms, next_token_view, sft_loss


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


def test_advantage_weights_are_a_softmax_within_each_group():
    advantages = torch.tensor([0.0, 1.0, 2.0, 5.0, -1.0])
    group_index = torch.tensor([0, 0, 0, 1, 1])
    weights = advantage_weights(advantages, 0.5, torch.float64, group_index)
    torch.testing.assert_close(weights[:3], advantage_weights(advantages[:3], 0.5, torch.float64))
    torch.testing.assert_close(weights[3:], advantage_weights(advantages[3:], 0.5, torch.float64))


def several_groups(sizes=(3, 2, 4), seed=0):
    """A micro-batch of groups of ``sizes`` responses (rows), each group with at least one wrong response."""
    generator = torch.Generator().manual_seed(seed)
    rows = sum(sizes)
    hidden = torch.randn(rows, 7, 8, generator=generator, dtype=torch.float64)
    weight = torch.randn(20, 8, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 20, (rows, 7), generator=generator)
    labels[:, :2] = -100
    labels[1, 5:] = -100  # responses of different lengths
    labels[4, 3:] = -100
    advantages = torch.randn(rows, generator=generator)
    group_index = torch.cat([torch.full((n,), g) for g, n in enumerate(sizes)])
    correct = torch.tensor([i % 2 == 0 for n in sizes for i in range(n)])
    return hidden, weight, labels, advantages, correct, group_index


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize(("ce_reduction", "contrastive_scale"),
                         [("mean", "none"), ("sum", "none"), ("mean", "per_response"), ("sum", "per_response")])
def test_a_micro_batch_of_groups_is_the_mean_of_their_group_losses(backend, ce_reduction, contrastive_scale):
    """k groups in one fused call give the mean of the k one-group losses and its gradients, under every reading:
    per_response is lam / n_g with each group's own n_g (3, 2 and 4 responses here), not lam / (all responses)."""
    hidden, weight, labels, advantages, correct, group_index = several_groups()
    cfg = LossConfig(backend=backend, ce_reduction=ce_reduction, contrastive_scale=contrastive_scale, lam=0.7)

    def gradients(loss_of):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        loss = loss_of(h, w)
        loss.backward()
        return loss.detach(), h.grad, w.grad

    together = gradients(lambda h, w: group_loss(h, w, labels, advantages, correct, cfg, group_index))
    spans = [(group_index == g).nonzero().squeeze(1) for g in range(3)]
    separately = gradients(lambda h, w: sum(group_loss(h[rows], w, labels[rows], advantages[rows], correct[rows], cfg)
                                            for rows in spans) / 3)
    for actual, expected in zip(together, separately):
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    one_group = group_loss(hidden, weight, labels, advantages, correct, cfg)  # every row as a single group
    assert one_group.item() != pytest.approx(together[0].item(), rel=1e-3)


def test_loss_terms_of_a_micro_batch_add_up_to_its_loss():
    hidden, weight, labels, advantages, correct, group_index = several_groups()
    cfg = LossConfig(backend="torch", contrastive_scale="per_response", ce_reduction="sum")
    terms = group_loss_terms(hidden, weight, labels, advantages, correct, cfg, group_index)
    loss = group_loss(hidden, weight, labels, advantages, correct, cfg, group_index)
    assert terms["weighted_ce"] + terms["contrastive"] == pytest.approx(loss.item(), rel=1e-10)
    assert terms["contrastive"] > 0 and 0 < terms["wrong_p_mean"] < 1


def test_divergent_contrastive_tokens_follow_the_mask_of_the_labels():
    """With contrastive_tokens: divergent, p_mean_i of a wrong response is the mean over the label positions its
    contrastive_mask marks (the target tokens labels[:, t], predicted from hidden[:, t - 1]), written out in float64:
    response 1 counts its last two tokens, response 2 none (no contrastive term), CE is unchanged."""
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(3, 6, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(20, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 20, (3, 6), generator=generator)
    labels[:, :2] = -100
    advantages, correct = torch.tensor([1.0, -0.5, -0.7]), torch.tensor([True, False, False])
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[1, 4:] = True
    cfg = LossConfig(backend="torch", lam=0.6, contrastive_tokens="divergent")
    loss = group_loss(hidden, weight, labels, advantages, correct, cfg, contrastive_mask=mask)
    logp = torch.log_softmax(hidden[:, :-1] @ weight.T, dim=-1).gather(2, labels[:, 1:].clamp(min=0).unsqueeze(2))
    logp = logp.squeeze(2)[:, 1:]  # label positions 2..5, the response tokens
    w = advantage_weights(advantages, cfg.tau, torch.float64)
    expected = (w * -logp.mean(dim=1)).sum() + 0.6 * -torch.log1p(-logp[1, 2:].exp().mean())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    grads = torch.autograd.grad(loss, (hidden, weight))
    for actual, wanted in zip(grads, torch.autograd.grad(expected, (hidden, weight))):
        torch.testing.assert_close(actual, wanted, rtol=1e-10, atol=1e-12)
    terms = group_loss_terms(hidden, weight, labels, advantages, correct, cfg, contrastive_mask=mask)
    assert terms["weighted_ce"] + terms["contrastive"] == pytest.approx(loss.item(), rel=1e-10)
    assert terms["wrong_p_mean"] == pytest.approx(logp[1, 2:].exp().mean().item(), rel=1e-10)  # response 2 left out
    with pytest.raises(ValueError, match="contrastive_tokens: divergent needs the contrastive_mask"):
        group_loss(hidden, weight, labels, advantages, correct, cfg)
