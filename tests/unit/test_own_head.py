"""`head: own`: the readout kinds scored through the 1000-way fc of published weights, fed the features that fc was
trained on (global average pooling of layer4 for a torchvision ResNet-50), its columns ImageNet's sorted wnids."""

from __future__ import annotations

import pytest
import torch

from vito.eval.datasets.imagenet_classes import IMAGENET_WNIDS, imagenet_columns
from vito.eval.datasets.shape_bias import CATEGORY_INDICES
from vito.eval.fixtures.images import FIXTURE_WNIDS
from vito.eval.foreign_weights import ForeignResNet, foreign_state_dict, load_foreign
from vito.eval.protocols.class_subset import score_subset
from vito.eval.protocols.corruptions import corruption_top1
from vito.eval.protocols.image_folder import OwnHead


def _network(fc_outputs: int = 1000, a: int = 3, b: int = 5):
    torch.manual_seed(0)
    state = foreign_state_dict(ForeignResNet(8, num_classes=fc_outputs))  # torchvision names, width 8
    # By hand: logit of column 404 (airliner) = feature a, of 766 (rotisserie) = feature b, the rest -1.
    state["fc.weight"] = torch.zeros_like(state["fc.weight"])
    state["fc.bias"] = torch.full_like(state["fc.bias"], -1.0)
    if fc_outputs == 1000:
        state["fc.weight"][404, a] = 1.0
        state["fc.weight"][766, b] = 1.0
        state["fc.bias"][[404, 766]] = 0.0
    return load_foreign(state, "torchvision")


def test_the_own_head_scores_the_global_average_pooled_layer4_feature_with_the_hand_set_fc() -> None:
    images = torch.randn(6, 3, 32, 32)
    a, b = _network().features(images).var(dim=0).topk(2).indices.tolist()  # two features that vary here
    network = _network(a=a, b=b)
    features = network.features(images)
    with torch.no_grad():
        pooled = network.module.backbone(images)[5].mean(dim=(2, 3))  # torchvision: avgpool + flatten
    torch.testing.assert_close(features, pooled)
    head = OwnHead(network.module.fc.weight.detach(), network.module.fc.bias.detach(), "file.pth")
    logits = head.logits(features)
    torch.testing.assert_close(logits, network.logits(images))
    expected = [404 if f[a] >= f[b] else 766 for f in features.tolist()]  # ReLU features are >= 0 > -1
    assert logits.argmax(dim=1).tolist() == expected and len(set(expected)) == 2, features[:, [a, b]]
    assert head.classes == list(IMAGENET_WNIDS) and head.head == "own_fc"
    # The readout kinds on those logits: corruptions' unrestricted argmax, class_subset's restricted one.
    labels = torch.tensor([IMAGENET_WNIDS.index("n02690373")] * 6)  # every image labelled airliner
    assert corruption_top1(logits, labels) == pytest.approx(expected.count(404) / 6)
    wnids = ["n02690373", "n03041632"]  # airliner, cleaver: the cleaver column (-1) never wins the restricted argmax
    metrics, rows = score_subset("a", logits, torch.zeros(6, dtype=torch.long), imagenet_columns(wnids), wnids)
    assert metrics["eval/a/top1"] == 1.0 and rows[0]["readout_column"] == 404


def test_a_file_without_a_1000_way_fc_cannot_score_through_its_own_head() -> None:
    assert _network().own_head_problem() is None
    assert "10 outputs" in _network(10).own_head_problem()
    torch.manual_seed(0)
    assert "holds no fc" in load_foreign(foreign_state_dict(ForeignResNet(8)), "torchvision").own_head_problem()


def test_the_wnid_list_and_the_fixture_wnids_agree_with_the_16_class_mapping() -> None:
    assert len(IMAGENET_WNIDS) == 1000 and list(IMAGENET_WNIDS) == sorted(set(IMAGENET_WNIDS))
    anchors = {0: "n01440764", 404: "n02690373", 409: "n02708093", 499: "n03041632", 530: "n03196217",
               766: "n04111531", 892: "n04548280", 999: "n15075141"}  # tench, airliner, clocks, cleaver, rotisserie
    assert {i: IMAGENET_WNIDS[i] for i in anchors} == anchors
    columns = imagenet_columns(FIXTURE_WNIDS)
    assert columns == sorted(columns) and columns[:4] == [385, 404, 499, 766]
    categories = [[c for c, indices in CATEGORY_INDICES.items() if column in indices] for column in columns]
    assert categories == [["elephant"], ["airplane"], ["knife"], ["oven"], [], [], [], []]
    assert imagenet_columns(["n00000001"]) is None
