"""Metric math against hand-computed cosines."""

import math

import pytest
import torch

from dbexp.metrics import diversity, mean_pairwise_similarity, real_reference, text_alignment, within_set_similarity

E1, E2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
DIAG = torch.tensor([[1.0, 1.0]])  # 45°: cosine 1/√2 with E1 and E2


def test_mean_pairwise_similarity_by_hand():
    generated = torch.cat([E1, DIAG])
    real = torch.cat([E1, E2])
    # pairs: (E1,E1)=1, (E1,E2)=0, (D,E1)=1/√2, (D,E2)=1/√2
    assert mean_pairwise_similarity(generated, real) == pytest.approx((1 + 0 + 2 / math.sqrt(2)) / 4)


def test_scale_does_not_matter_and_identical_sets_score_one():
    images = torch.randn(5, 8)
    assert mean_pairwise_similarity(images * 3, images[:1].repeat(5, 1)) != pytest.approx(1.0)
    same = images[:1].repeat(4, 1)
    assert mean_pairwise_similarity(same, same * 7) == pytest.approx(1.0)
    assert diversity([same, same]) == pytest.approx(0.0, abs=1e-12)


def test_text_alignment_pairs_each_image_with_its_prompt():
    images = torch.cat([E1, E2])
    texts = torch.cat([E1, DIAG])
    assert text_alignment(images, texts) == pytest.approx((1 + 1 / math.sqrt(2)) / 2)
    with pytest.raises(ValueError):
        text_alignment(images, texts[:1])


def test_diversity_and_the_leave_one_out_reference():
    spread = torch.cat([E1, E2, DIAG])
    # distinct pairs: (E1,E2)=0, (E1,D)=(E2,D)=1/√2 → mean (0 + 2/√2)/3
    within = (2 / math.sqrt(2)) / 3
    assert within_set_similarity(spread) == pytest.approx(within)
    assert real_reference(spread) == pytest.approx(within)
    # leave-one-out by hand: photo i against the other two, averaged over i
    loo = [(0 + 1 / math.sqrt(2)) / 2, (0 + 1 / math.sqrt(2)) / 2, (2 / math.sqrt(2)) / 2]
    assert real_reference(spread) == pytest.approx(sum(loo) / 3)
    assert diversity([spread, torch.cat([E1, E1])]) == pytest.approx(((1 - within) + 0.0) / 2)


def test_dreambench_prompt_sets_substitute_token_and_class():
    from dbexp.dreambench import prompt_set_for, read_prompt_templates

    sets = read_prompt_templates()
    assert len(sets["object"]) == len(sets["live"]) == 25
    assert prompt_set_for("dog") == "live" and prompt_set_for("stuffed animal") == "object"
    assert "a {token} {class_noun} in a purple wizard outfit" in sets["live"]
    assert "a {token} {class_noun} in a purple wizard outfit" not in sets["object"]
    assert sets["object"][2].format(token="sks", class_noun="backpack") == "a sks backpack on the beach"


def test_metric_models_load_offline_and_embed(tmp_path):
    from PIL import Image

    from dbexp.eval_protocol import EvalConfig
    from dbexp.metric_models import load_metric_models

    models = load_metric_models("tiny", EvalConfig(), tmp_path)
    images = [Image.new("RGB", (48, 40), (60 * i, 90, 30)) for i in range(3)]
    assert models.dino_embed(images).shape == (3, 32)
    assert models.clip_image_embed(images).shape == (3, 32)
    assert models.clip_text_embed(["a dog", "a dog on the beach"]).shape == (2, 32)
    assert models.description["clip_preprocessing"]["crop_size"] == {"height": 32, "width": 32}
    assert load_metric_models("tiny", EvalConfig(), tmp_path) is models  # once per process


def test_missing_metric_weights_are_one_clear_line(tmp_path):
    from dbexp.errors import UserInputError
    from dbexp.eval_protocol import EvalConfig
    from dbexp.metric_models import load_metric_models

    with pytest.raises(UserInputError, match=r"eval.dino_model=\./nowhere/dino: folder does not exist"):
        load_metric_models("dreambench", EvalConfig(dino_model="./nowhere/dino"), tmp_path)
