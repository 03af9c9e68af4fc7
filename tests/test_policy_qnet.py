"""Q-network architecture facts (paper Appendix B) and the trunk-once scoring path."""
import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # several test processes share 2 cores; OpenMP spinning makes >1 thread slower
from torch import nn

from rcan_common.config import ConfigError
from rcan_grasp_policy.backends import TorchQFunction
from rcan_grasp_policy.inputs import images_to_nchw
from rcan_grasp_policy.qnet import HEAD_CONVS, TRUNK_CONVS, QNetConfig, QNetwork, count_convs


def _net(**kw):
    torch.manual_seed(0)
    return QNetwork(QNetConfig(image_size=32, width=8, fc_width=16, **kw))


def test_layer_counts_follow_the_paper():
    net = _net()
    assert (TRUNK_CONVS, HEAD_CONVS) == (7, 9)
    assert count_convs(net.trunk) == 7
    assert count_convs(net.head_convs) == 9
    assert sum(isinstance(m, nn.Linear) for m in net.action_state.modules()) == 2
    assert sum(isinstance(m, nn.Linear) for m in net.head_fc.modules()) == 2
    # BatchNorm after every conv and every hidden FC, none after the output layer.
    bns = [m for m in net.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    assert len(bns) == 7 + 9 + 2 + 1
    assert isinstance(net.head_fc[-1], nn.Linear)


def test_input_channels_from_config():
    assert _net(in_channels=6).trunk[0].in_channels == 6
    assert _net(in_channels=3).trunk[0].in_channels == 3
    with pytest.raises(ConfigError, match="in_channels"):
        QNetConfig(in_channels=4)
    with pytest.raises(ConfigError, match="image_size"):
        QNetConfig(image_size=48)


def test_q_is_a_probability_and_shapes_are_checked():
    net = _net().eval()
    x = torch.rand(3, 6, 32, 32)
    logits = net(x, torch.rand(3, 2), 10 * torch.randn(3, 5, 8))
    q = torch.sigmoid(logits)
    assert q.shape == (3, 5) and bool(((q >= 0) & (q <= 1)).all())
    with pytest.raises(ValueError, match="images must have shape"):
        net(torch.rand(3, 3, 32, 32), torch.rand(3, 2), torch.rand(3, 5, 8))
    with pytest.raises(ValueError, match="state must have shape"):
        net(x, torch.rand(2, 2), torch.rand(3, 5, 8))


def test_trunk_once_equals_per_candidate_evaluation():
    net = _net().eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 32, 32, 6), dtype=np.uint8)
    state = rng.random((2, 2), dtype=np.float32)
    actions = rng.standard_normal((2, 7, 8)).astype(np.float32)
    qf = TorchQFunction(net)
    batched = qf.score(qf.embed(images, state), actions)
    x = torch.from_numpy(images_to_nchw(images))
    with torch.no_grad():
        naive = np.array([[torch.sigmoid(net(x[b:b + 1], torch.from_numpy(state[b:b + 1]),
                                             torch.from_numpy(actions[b:b + 1, n:n + 1]))).item()
                           for n in range(7)] for b in range(2)])
    np.testing.assert_allclose(batched, naive, atol=1e-5)
    # Different actions must be able to change Q (the merge is really used).
    assert batched.std() > 0


@pytest.mark.parametrize("image_size, merge, grid, side", [(64, 16, 4, 1), (64, 8, 8, 2), (96, 16, 6, 2), (96, 8, 12, 3)])
def test_merge_resolution_and_head_size_for_every_image_size(image_size, merge, grid, side):
    # 96 px used to build a head FC for a 1x1 map while the pooled map was 2x2.
    net = QNetwork(QNetConfig(image_size=image_size, width=4, fc_width=8, merge_downsample=merge)).eval()
    feats = net.embed(torch.rand(2, 6, image_size, image_size))
    assert feats.shape[2:] == (grid, grid) and net.cfg.head_side == side
    assert net.head_logits(feats, torch.rand(2, 2), torch.rand(2, 3, 8)).shape == (2, 3)
    with pytest.raises(ConfigError, match="merge_downsample"):
        QNetConfig(merge_downsample=4)


def test_coord_channels_carry_the_pixel_position():
    """CoordConv: the trunk's input gains x and y ramps in [-1, 1], so a blank frame gives features that vary
    over the frame; without them (the paper's network) a blank frame's interior features are all alike."""
    net = _net(coord_channels=True).eval()
    assert net.trunk[0].in_channels == 6 + 2
    x = net.centred_input(torch.full((2, 6, 32, 32), 0.5))
    assert x.shape == (2, 8, 32, 32) and torch.all(x[:, :6] == 0)
    assert torch.allclose(x[0, 6, 5], torch.linspace(-1, 1, 32)) and torch.allclose(x[0, 7, :, 5], torch.linspace(-1, 1, 32))
    blank = torch.full((1, 6, 32, 32), 0.5)
    with torch.no_grad():
        plain_inner = _net().eval().trunk[:4](_net().centred_input(blank))[0, :, 2:-2, 2:-2]
        coord_inner = net.trunk[:4](net.centred_input(blank))[0, :, 2:-2, 2:-2]
    assert plain_inner.std((1, 2)).max() < 1e-5 < coord_inner.std((1, 2)).max()


def test_without_the_stem_pool_the_first_stage_is_finer_and_the_merge_grid_the_same():
    plain, fine = _net().eval(), _net(stem_pool=False).eval()
    x = torch.rand(2, 6, 32, 32)
    with torch.no_grad():
        assert plain.trunk[:4](plain.centred_input(x)).shape[2:] == (8, 8)  # stem conv + pool: S/4
        assert fine.trunk[:3](fine.centred_input(x)).shape[2:] == (16, 16)  # stem conv only: S/2
        assert fine.embed(x).shape == plain.embed(x).shape
    assert count_convs(fine) == count_convs(plain)
