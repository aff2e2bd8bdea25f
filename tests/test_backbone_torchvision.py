"""The torchvision family (added by following docs/backbones.md's recipe): a ResNet's checkpoint in
torchvision's own layout, its pooled features against torchvision's model with the classifier cut off,
and ResNet-50 at full size on the meta device against the parameter count torchvision publishes."""

import pytest
import torch
import torchvision

from medtune.backbones import registered
from medtune.models import BackboneError, load_backbone

pytestmark = pytest.mark.usefixtures("no_network")


def test_a_resnet_checkpoint_embeds_as_torchvisions_pooled_features(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).eval()
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    backbone = load_backbone("r18", {"family": "torchvision", "arch": "resnet18", "checkpoint": str(tmp_path / "resnet18.pth"),
                                     "image_size": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    assert not backbone.text_tower and backbone.image_size == 32
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        pooled = torch.flatten(reference.avgpool(reference.layer4(reference.layer3(reference.layer2(reference.layer1(
            reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))))))), 1)
        torch.testing.assert_close(backbone.model.encode_image(x), pooled, rtol=0, atol=0)


def test_a_checkpoint_of_another_resnet_is_one_line(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(BackboneError) as err:
        load_backbone("r50", {"family": "torchvision", "model": "resnet50-imagenet", "checkpoint": str(tmp_path / "resnet18.pth")})
    assert "\n" not in str(err.value) and "'r50'" in str(err.value)


def test_resnet50_at_full_size_has_torchvisions_published_count():
    from medtune.backbones import torchvision as family

    with torch.device("meta"):
        model = family.create({"model": "resnet50-imagenet"})
    published = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["num_params"]
    assert sum(p.numel() for p in model.parameters()) == published == registered()["torchvision"].presets["resnet50-imagenet"]["params"]
    assert set(model.state_dict()) >= {"conv1.weight", "bn1.running_mean", "layer4.2.conv3.weight", "fc.weight", "fc.bias"}
