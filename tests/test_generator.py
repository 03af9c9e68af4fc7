"""Generator / discriminator architecture facts (paper Appendix A) and weight round trips."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from rcan_perception import model as M
from rcan_perception.model import (DiscriminatorConfig, Generator, GeneratorConfig, MultiScaleDiscriminator,
                                   load_generator, save_generator)
from rcan_common.config import ConfigError

TINY = GeneratorConfig(channels=(8, 12, 16, 16))


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_output_shapes_and_ranges():
    g = Generator(TINY)
    rgb, seg, depth = g(torch.randn(2, 3, 32, 32))
    assert rgb.shape == (2, 3, 32, 32) and seg.shape == (2, 5, 32, 32) and depth.shape == (2, 1, 32, 32)
    assert rgb.abs().max() <= 1.0  # tanh head


@pytest.mark.parametrize("hw", [(32, 48), (37, 45), (50, 50)])
def test_any_image_size(hw):
    rgb, seg, depth = Generator(TINY)(torch.randn(1, 3, *hw))
    assert rgb.shape[-2:] == hw and seg.shape[-2:] == hw and depth.shape[-2:] == hw


def test_downsampling_first_two_strided_then_avgpool():
    g = Generator(GeneratorConfig(channels=(8, 8, 8, 8, 8)))
    convs = [stage.conv[0] for stage in g.down]
    assert [c.stride for c in convs] == [(2, 2), (2, 2), (1, 1), (1, 1)]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert [type(stage.pool) for stage in g.down] == [nn.Identity, nn.Identity, nn.AvgPool2d, nn.AvgPool2d]
    # resolutions: 64 -> 32 -> 16 -> 8 -> 4
    feats, x = [], g.stem(torch.randn(1, 3, 64, 64))
    for stage in g.down:
        x = stage(x)
        feats.append(x.shape[-1])
    assert feats == [32, 16, 8, 4]


def test_every_layer_has_instancenorm_and_relu():
    g = Generator(TINY)
    blocks = [g.stem] + [s.conv for s in g.down] + [m for s in g.up for m in (s.conv, s.fuse)]
    for b in blocks:
        assert [type(m) for m in b] == [nn.Conv2d, nn.InstanceNorm2d, nn.ReLU]
    heads = {g.rgb_head, g.seg_head, g.depth_head}
    convs = [m for m in g.modules() if isinstance(m, nn.Conv2d) and m not in heads]
    assert len(convs) == len(blocks)


def test_upsampling_bilinear_then_3x3_and_1x1_skip_fusion(monkeypatch):
    g = Generator(TINY)
    modes = []
    real = M.F.interpolate

    def spy(x, *a, **kw):
        modes.append(kw.get("mode"))
        return real(x, *a, **kw)

    monkeypatch.setattr(M.F, "interpolate", spy)
    g(torch.randn(1, 3, 32, 32))
    assert modes == ["bilinear"] * len(g.up)
    for s in g.up:
        assert s.conv[0].kernel_size == (3, 3) and s.fuse[0].kernel_size == (1, 1)
        assert s.fuse[0].in_channels == 2 * s.conv[0].out_channels  # upsampled features ++ same-width skip


def test_skip_fusion_equals_1x1_conv_of_the_concatenation():
    """UpStage sums two 1x1 convs over the split weight; that must be the paper's concat -> 1x1 conv."""
    torch.manual_seed(0)
    stage = Generator(TINY).up[0].eval()
    x = torch.randn(2, stage.conv[0].in_channels, 5, 7)
    skip = torch.randn(2, stage.fuse[0].in_channels - stage.conv[0].out_channels, 11, 13)
    with torch.no_grad():
        up = stage.conv(M.F.interpolate(x, size=(11, 13), mode="bilinear", align_corners=False))
        expected = stage.fuse(torch.cat([up, skip], dim=1))
        torch.testing.assert_close(stage(x, skip), expected, rtol=1e-5, atol=1e-5)


def test_discriminator_three_scales_and_filters():
    d = MultiScaleDiscriminator(DiscriminatorConfig())
    outs = d(torch.randn(2, 3, 64, 64))
    assert len(outs) == 3
    assert [o.shape[1] for o in outs] == [1, 1, 1]
    assert [o.shape[-1] for o in outs] == [16, 8, 4]  # patch maps at full, 1/2, 1/4 input scale
    for net in d.nets:
        widths = [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
        assert widths == [32, 32, 64, 128]


def test_config_validation_names_field():
    with pytest.raises(ConfigError, match="channels"):
        GeneratorConfig(channels=(8, 8))
    with pytest.raises(ConfigError, match="num_scales"):
        DiscriminatorConfig(num_scales=0)


def test_save_load_round_trip_identical(tmp_path):
    torch.manual_seed(1)
    g = Generator(TINY).eval()
    save_generator(g, tmp_path / "g.safetensors")
    h = load_generator(tmp_path / "g.safetensors")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(g(x), h(x)):
            assert torch.equal(a, b)
    assert h.cfg == g.cfg


def test_load_missing_or_corrupt_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        load_generator(tmp_path / "nope.safetensors")
    save_generator(Generator(TINY), tmp_path / "g.safetensors")
    (tmp_path / "g.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        load_generator(tmp_path / "g.safetensors")
