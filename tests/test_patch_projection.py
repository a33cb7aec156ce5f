"""The vision tower's patch embedding computed as a matrix product (chexone/model/patch_projection.py) equals the
model's own Conv3d (the reference): outputs, weight gradients, state dict names and the whole image-feature path."""

import copy

import pytest
import torch
from torch import nn

from chexone.model import transformers_compat as compat
from chexone.model.patch_projection import PatchProjection, use_linear_patch_projection, why_not_linear


@pytest.mark.parametrize("channels", [16, 96])
def test_matches_the_convolution_and_its_weight_gradient(channels):
    torch.manual_seed(0)
    conv = nn.Conv3d(3, channels, kernel_size=(2, 14, 14), stride=(2, 14, 14), bias=False)
    proj = PatchProjection(copy.deepcopy(conv))
    x = torch.randn(37, 3, 2, 14, 14)
    ref, got = conv(x), proj(x)
    assert got.shape == ref.shape == (37, channels, 1, 1, 1)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    grad = torch.randn_like(ref)
    ref.backward(grad)
    got.backward(grad)
    torch.testing.assert_close(proj.weight.grad, conv.weight.grad, atol=1e-4, rtol=1e-5)
    assert list(proj.state_dict()) == list(conv.state_dict()) == ["weight"]


def test_only_exact_convolutions_are_replaced():
    assert why_not_linear(nn.Conv3d(3, 8, kernel_size=(2, 14, 14), stride=(2, 14, 14))) is None
    assert "differs from stride" in why_not_linear(nn.Conv3d(3, 8, kernel_size=(2, 14, 14), stride=(1, 7, 7)))
    assert "pads" in why_not_linear(nn.Conv3d(3, 8, kernel_size=2, stride=2, padding=1))
    assert "not nn.Conv3d" in why_not_linear(nn.Conv2d(3, 8, kernel_size=14, stride=14))
    with pytest.raises(ValueError, match="expects"):
        PatchProjection(nn.Conv3d(3, 8, kernel_size=(2, 14, 14), stride=(2, 14, 14)))(torch.randn(2, 3, 2, 28, 28))


def test_loaded_models_use_it_with_identical_image_features_and_weights(tiny_model, tiny_processor):
    # RELIES_ON: Qwen2_5_VLModel.visual.patch_embed.proj (chexone.model.transformers_compat.vision_patch_projection)
    from PIL import Image

    original = compat.vision_patch_projection(tiny_model)
    assert type(original) is nn.Conv3d  # the fixture's model as transformers builds it
    swapped = copy.deepcopy(tiny_model)
    names_before = list(swapped.state_dict())
    assert use_linear_patch_projection(swapped)
    proj = compat.vision_patch_projection(swapped)
    assert isinstance(proj, PatchProjection) and list(swapped.state_dict()) == names_before
    image = Image.fromarray(torch.randint(0, 255, (84, 112), generator=torch.Generator().manual_seed(1),
                                          dtype=torch.uint8).numpy())
    enc = tiny_processor.image_processor(images=[image], return_tensors="pt")
    with torch.no_grad():
        ref = compat.image_features(tiny_model, enc["pixel_values"], enc["image_grid_thw"])
        got = compat.image_features(swapped, enc["pixel_values"], enc["image_grid_thw"])
    torch.testing.assert_close(torch.cat(got), torch.cat(ref), atol=1e-5, rtol=1e-5)
    assert use_linear_patch_projection(swapped)  # idempotent


def test_load_pretrained_applies_it(tiny_dir):
    from chexone.config.load import load_config
    from chexone.model import load_pretrained

    cfg = load_config("stage1_sft", ["model=tiny", "data=demo", f"model.path={tiny_dir}"])
    loaded = load_pretrained(cfg.model, device_type="cpu")
    proj = compat.vision_patch_projection(loaded.model)
    assert isinstance(proj, PatchProjection)
    assert proj.weight.requires_grad == (not cfg.model.freeze.vision)
