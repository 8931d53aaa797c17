import torch

from taxonomist.data.schema import Schema
from taxonomist.models.heads import AttributeHeads, allowed_masks
from taxonomist.training.losses import masked_cross_entropy

SCHEMA = Schema(
    {
        "Shoes": {"color": ["red", "blue"], "size": ["S", "L"]},
        "Bags": {"color": ["blue", "green"]},
    }
)


def test_masks_follow_the_schema() -> None:
    masks = allowed_masks(SCHEMA, ["Shoes", "Bags"])
    assert masks["color"].tolist() == [[True, True, False], [False, True, True]]
    assert masks["size"].tolist() == [[True, True], [False, False]]


def test_disallowed_values_get_zero_probability_and_no_nan() -> None:
    torch.manual_seed(0)
    model = AttributeHeads(8, allowed_masks(SCHEMA, ["Shoes", "Bags"]), hidden=[16], category_dim=4)
    out = model(torch.randn(5, 8), torch.tensor([0, 1, 1, 0, 1]))
    probs = torch.softmax(out["color"], dim=1)
    assert torch.all(probs[[1, 2, 4], 0] == 0)  # Bags can never be red
    assert torch.all(probs[[0, 3], 2] == 0)  # Shoes can never be green
    size = torch.softmax(out["size"], dim=1)
    assert not torch.isnan(size).any()  # Bags have no size: a flat row, not NaN


def test_standardization_fitted_on_one_row_keeps_logits_finite() -> None:
    """Regression: the std of one training row is NaN (unbiased), and clamp_min kept it, so every logit of
    heads fitted on a single row was NaN; a feature without spread now divides by 1, as ListingHeads does."""
    model = AttributeHeads(8, allowed_masks(SCHEMA, ["Shoes", "Bags"]), hidden=[16], category_dim=4)
    model.set_standardization(torch.randn(1, 8))
    out = model(torch.randn(3, 8), torch.tensor([0, 1, 0]))
    assert torch.isfinite(model.feature_std).all()
    assert not any(torch.isnan(logits).any() for logits in out.values())


def test_missing_labels_add_no_loss_or_gradient() -> None:
    torch.manual_seed(0)
    model = AttributeHeads(8, allowed_masks(SCHEMA, ["Shoes", "Bags"]), hidden=[16], category_dim=4)
    x, cat = torch.randn(4, 8), torch.tensor([0, 0, 1, 1])
    labels = {"color": torch.tensor([0, -1, 2, -1]), "size": torch.tensor([-1, -1, -1, -1])}
    loss = masked_cross_entropy(model(x, cat), labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.heads[1].weight.grad is None or torch.all(model.heads[1].weight.grad == 0)
    # Changing an unlabelled row's features does not change the loss.
    x2 = x.clone()
    x2[1] += 10
    model.eval()
    assert torch.allclose(
        masked_cross_entropy(model(x, cat), labels), masked_cross_entropy(model(x2, cat), labels)
    )


def test_label_smoothing_spreads_only_over_allowed_values() -> None:
    """Smoothing once spread onto masked (-1e9) values: a one-row loss read ~5e7 instead of ~0.2."""
    torch.manual_seed(0)
    model = AttributeHeads(8, allowed_masks(SCHEMA, ["Shoes", "Bags"]), hidden=[16], category_dim=4)
    with torch.no_grad():
        out = model(torch.randn(2, 8), torch.tensor([0, 1]))
    labels = {"color": torch.tensor([0, 2]), "size": torch.tensor([1, -1])}
    smoothed = masked_cross_entropy(out, labels, label_smoothing=0.1)
    plain = masked_cross_entropy(out, labels)
    assert torch.isfinite(smoothed) and 0 < float(smoothed) < float(plain) + 1.0


def test_ensemble_predicts_the_mean_probability_of_its_members() -> None:
    from taxonomist.models.heads import NEG_INF, HeadsEnsemble

    masks = allowed_masks(SCHEMA, ["Shoes", "Bags"])
    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        members.append(AttributeHeads(8, masks, hidden=[16], category_dim=4).eval())
    ensemble = HeadsEnsemble(members)
    x, cat = torch.randn(6, 8), torch.tensor([0, 1, 1, 0, 1, 0])
    out = ensemble(x, cat)
    for attribute in ("color", "size"):
        expected = torch.stack([torch.softmax(m(x, cat)[attribute], 1) for m in members]).mean(0)
        torch.testing.assert_close(torch.softmax(out[attribute], 1), expected)
    assert torch.all(out["color"][[1, 2, 4], 0] == NEG_INF)  # Bags can never be red, in every member
    assert torch.all(out["size"][[1, 2, 4]] == NEG_INF)  # Bags have no size: as a member, no NaN
    assert ensemble.attributes == ["color", "size"]
    assert torch.equal(ensemble.mask("color"), masks["color"])


def test_class_balance_on_dev_picks_each_attributes_strength_and_the_weaker_on_a_tie() -> None:
    import numpy as np

    from taxonomist.training.heads import BALANCE_CHOICES, FeatureSet, balance_adjustment, predict_logits

    masks = allowed_masks(SCHEMA, ["Shoes", "Bags"])
    torch.manual_seed(0)
    model = AttributeHeads(8, masks, hidden=[16], category_dim=4).eval()
    rng = np.random.default_rng(0)
    category = rng.integers(0, 2, 40)
    labels = {"color": np.where(category == 0, rng.integers(0, 3, 40), 2), "size": rng.integers(-1, 2, 40)}
    train = FeatureSet.build(rng.normal(size=(40, 8)), category, labels)
    dev = FeatureSet.build(rng.normal(size=(12, 8)), category[:12], {a: v[:12] for a, v in labels.items()})
    probs = {a: torch.softmax(z, 1) for a, z in predict_logits(model, dev).items()}
    fixed, half = balance_adjustment(0.5, train, probs, model, lambda z: 0.0)
    target = torch.log(probs["color"]) + torch.tensor(fixed["color"])
    allowed = torch.isfinite(target)  # log 0 = -inf where a category rules a colour out
    assert allowed.any() and not allowed.all()

    def score(z: dict[str, torch.Tensor]) -> float:
        """Wants colour corrected at strength 0.5; blind to size."""
        return -float((z["color"] - target)[allowed].abs().sum())

    adjustment, chosen = balance_adjustment("dev", train, probs, model, score)
    assert chosen == {"color": 0.5, "size": 0.0} and set(chosen.values()) <= set(BALANCE_CHOICES)
    assert set(adjustment) == {"color"}  # a strength of 0 adds no correction
    counts = torch.bincount(train.labels["color"], minlength=3).double() + 1
    expected = (-0.5 * torch.log(counts / counts.sum())).float()
    torch.testing.assert_close(torch.tensor(adjustment["color"]), expected)
    assert half == {"color": 0.5, "size": 0.5}
    assert balance_adjustment(0.0, train, probs, model, lambda z: 0.0) == ({}, {"color": 0.0, "size": 0.0})


def test_prior_correction_chooses_the_value_and_leaves_its_calibrated_probability() -> None:
    from taxonomist.models.checkpoint import calibrated_probs, decision_scores
    from taxonomist.models.heads import NEG_INF

    logits = {"color": torch.tensor([[1.0, 0.2, NEG_INF], [0.0, 1.0, 2.0]])}
    present = torch.tensor([[True, True], [True, False]])  # the second row has no title
    probs = calibrated_probs(logits, {"color": 2.0}, by_inputs={"image": {"color": 4.0}}, present=present)
    torch.testing.assert_close(probs["color"][0], torch.softmax(logits["color"][0] / 2.0, 0))
    torch.testing.assert_close(probs["color"][1], torch.softmax(logits["color"][1] / 4.0, 0))
    assert probs["color"][0, 2] == 0  # a value the category rules out

    scores = decision_scores(probs, {"color": [0.0, 1.0, 0.0]})
    assert scores["color"][0, 2] == -torch.inf
    torch.testing.assert_close(scores["color"][:, 1], torch.log(probs["color"][:, 1]) + 1.0)
    # The correction moves row 0 to the rarer value; its confidence is that value's own probability.
    assert scores["color"].argmax(1).tolist() == [1, 1] and probs["color"].argmax(1).tolist() == [0, 2]
    assert decision_scores(probs, {})["color"].argmax(1).tolist() == [0, 2]


def test_rows_missing_an_input_take_the_correction_chosen_for_them() -> None:
    from taxonomist.models.checkpoint import decision_scores

    probs = {"color": torch.tensor([[0.5, 0.3, 0.2]] * 3), "size": torch.tensor([[0.6, 0.4]] * 3)}
    present = torch.tensor([[True, True], [True, False], [False, True]])  # both, image only, text only
    adjustment = {"color": [0.0, 1.0, 0.0], "size": [0.0, 1.0]}
    by_inputs = {"image": {"color": [0.0, 0.0, 2.0]}}  # no size correction for rows without a title
    scores = decision_scores(probs, adjustment, by_inputs=by_inputs, present=present)
    log = {a: torch.log(p) for a, p in probs.items()}
    torch.testing.assert_close(scores["color"][0], log["color"][0] + torch.tensor(adjustment["color"]))
    torch.testing.assert_close(scores["color"][1], log["color"][1] + torch.tensor([0.0, 0.0, 2.0]))
    torch.testing.assert_close(scores["size"][1], log["size"][1])
    # "text" rows have no set of their own here: they keep the correction of rows with both inputs.
    torch.testing.assert_close(scores["size"][2], log["size"][2] + torch.tensor(adjustment["size"]))
    assert [int(z.argmax(1)[1]) for z in scores.values()] == [2, 0]
