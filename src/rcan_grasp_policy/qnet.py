"""The QT-Opt Q-network of RCAN (paper Appendix B), a pure ``nn.Module``.

    images (B, C, S, S) in [0, 1] ── 7 convs ─────────────► feats (B, W, S/M, S/M)
    [action, state] (B, N, 10) ── 2 FC ──► emb (B, N, W) ──(+ broadcast over space)──┘
    merged (B*N, W, S/M, S/M) ── 9 convs ── 2 FC ──► logit (B, N);  Q = sigmoid(logit)

M (`merge_downsample`, 16 or 8) is how far the trunk pools before the action is merged.

Every layer except the last has BatchNorm + ReLU.  The image trunk does not depend on the
action, so `trunk` runs once per state and `head_logits` scores N candidate actions against
those features: that is what keeps CEM (64 candidates x 2 iterations) cheap.
C = 6 for RCAN ([x, G(x)]), 3 for the baselines.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from rcan_common.action import ACTION_DIM, STATE_DIM, YAW_STATE_DIM
from rcan_common.config import require

TRUNK_CONVS = 7
HEAD_CONVS = 9


@dataclass(frozen=True)
class QNetConfig:
    in_channels: int = 6
    """Image channels: 6 for RCAN ([x_source, G(x_source)]), 3 for canonical / domain-randomized baselines."""
    image_size: int = 64
    """Square input size in pixels; a multiple of 32."""
    width: int = 32
    """Channels of every convolution."""
    fc_width: int = 64
    """Units of the hidden fully connected layers (action/state embedding and output)."""
    merge_downsample: int = 16
    """Image downsampling where the action joins the trunk features: 16 (4x4 at 64 px) or 8 (8x8, finer
    localisation for small images; the per-candidate head then works on 4x the positions)."""
    stem_pool: bool = True
    """Max-pool right after the stride-2 first convolution (the paper's layout: the first stage works at S/4).
    False (NOT in the paper) keeps the first stage at S/2 and pools once more before the merge: the same merge
    grid, features that keep an object of a few pixels apart from its neighbours (4x the trunk's cost)."""
    trunk_width: int = 0
    """Channels of the image trunk's convolutions but its last, which still gives `width` features to the merge
    (0: `width`, the paper's network).  NOT in the paper: a wider trunk for an RCAN student that has to see the
    randomized scene as a canonical network of `width` sees the canonical one (LabelTrainConfig.feature_teacher);
    started from that network (`--init-from`), the extra channels begin with no effect on the output."""
    coord_channels: bool = False
    """Append two constant channels (pixel x and y in [-1, 1]) to the trunk's input (CoordConv, Liu et al.
    2018): every position then knows where it is, so the head can compare a candidate's motion with where
    things are in the frame.  A deviation from the paper; off reproduces its network."""
    yaw_state: bool = False
    """Give the network the gripper's yaw as two more state numbers, sin and cos of twice the angle
    (rcan_common.action.YAW_STATE_DIM).  NOT in the paper, whose state is the gripper's opening and height:
    at 128 px the fingers are a pixel or two wide, so the image barely shows which way the gripper
    points, and a policy that cannot see its yaw cannot turn it onto an object's narrow axis.  The
    robot knows its yaw from the joint angles, as it knows its height."""

    def __post_init__(self) -> None:
        require(self.in_channels in (3, 6), "in_channels", f"must be 3 or 6, got {self.in_channels}")
        require(self.image_size >= 32 and self.image_size % 32 == 0, "image_size",
                f"must be a multiple of 32 (>= 32), got {self.image_size}")
        require(self.width >= 1, "width", f"must be >= 1, got {self.width}")
        require(self.fc_width >= 1, "fc_width", f"must be >= 1, got {self.fc_width}")
        require(self.merge_downsample in (8, 16), "merge_downsample", f"must be 8 or 16, got {self.merge_downsample}")
        require(self.trunk_width >= 0, "trunk_width", f"must be >= 0 (0: width), got {self.trunk_width}")

    @property
    def trunk_channels(self) -> int:
        """Channels of the trunk's convolutions but its last."""
        return self.trunk_width or self.width

    @property
    def state_dim(self) -> int:
        """Numbers in the state vector the network reads."""
        return YAW_STATE_DIM if self.yaw_state else STATE_DIM

    @property
    def head_side(self) -> int:
        """Side of the head's last feature map: the merge grid after two ceil-mode 2x2 pools."""
        merge_side = self.image_size // self.merge_downsample
        return math.ceil(math.ceil(merge_side / 2) / 2)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    # Conv bias is redundant before BatchNorm.
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _fc(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Linear(cin, cout, bias=False), nn.BatchNorm1d(cout), nn.ReLU(inplace=True)]


class QNetwork(nn.Module):
    """Q(s, a) in [0, 1] for a grasping state (image + gripper state) and an 8-d action."""

    def __init__(self, cfg: QNetConfig = QNetConfig()):
        super().__init__()
        self.cfg = cfg
        w, t = cfg.width, cfg.trunk_channels
        # The head runs once per CEM candidate, so the merge resolution sets the cost of a
        # decision and of a Bellman target; the last trunk pool is dropped for a merge at S/8.
        last_pool = [nn.MaxPool2d(2)] if cfg.merge_downsample == 16 else []
        stem_pool, late_pool = ([nn.MaxPool2d(2)], []) if cfg.stem_pool else ([], [nn.MaxPool2d(2)])
        self.trunk = nn.Sequential(
            *_conv(cfg.in_channels + 2 * cfg.coord_channels, t, stride=2), *stem_pool,  # S/4 (S/2 unpooled)
            *_conv(t, t), *_conv(t, t), *_conv(t, t), nn.MaxPool2d(2),          # S/8 (S/4)
            *_conv(t, t), *_conv(t, t), *_conv(t, w), *late_pool, *last_pool,   # S/16 or S/8
        )
        self.action_state = nn.Sequential(*_fc(ACTION_DIM + cfg.state_dim, cfg.fc_width), *_fc(cfg.fc_width, w))
        self.head_convs = nn.Sequential(
            *_conv(w, w), *_conv(w, w), *_conv(w, w), nn.MaxPool2d(2, ceil_mode=True),
            *_conv(w, w), *_conv(w, w), *_conv(w, w), nn.MaxPool2d(2, ceil_mode=True),
            *_conv(w, w), *_conv(w, w), *_conv(w, w),
        )
        self.head_fc = nn.Sequential(nn.Flatten(), *_fc(w * cfg.head_side ** 2, cfg.fc_width),
                                     nn.Linear(cfg.fc_width, 1))
        if cfg.coord_channels:
            ramp = torch.linspace(-1.0, 1.0, cfg.image_size)
            grid = torch.stack([ramp.expand(cfg.image_size, -1), ramp[:, None].expand(-1, cfg.image_size)])
            self.register_buffer("coords", grid[None], persistent=False)  # (1, 2, S, S): x, y

    def centred_input(self, images: torch.Tensor) -> torch.Tensor:
        """The trunk's input: images (B, C, S, S) scaled to [0, 1], shape-checked and centred."""
        c, s = self.cfg.in_channels, self.cfg.image_size
        if images.dim() != 4 or images.shape[1:] != (c, s, s):
            raise ValueError(f"images must have shape (B, {c}, {s}, {s}), got {tuple(images.shape)}")
        # Centre the [0, 1] input; the first BatchNorm does the rest.
        x = images - 0.5
        if self.cfg.coord_channels:
            x = torch.cat([x, self.coords.expand(x.shape[0], -1, -1, -1)], dim=1)
        return x

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Image features (B, W, S/M, S/M) from images (B, C, S, S) scaled to [0, 1]."""
        return self.trunk(self.centred_input(images))

    def head_logits(self, feats: torch.Tensor, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Logits (B, N) of N candidate actions (B, N, 8) per state, reusing the trunk features."""
        b, n = actions.shape[0], actions.shape[1]
        if actions.dim() != 3 or actions.shape[2] != ACTION_DIM:
            raise ValueError(f"actions must have shape (B, N, {ACTION_DIM}), got {tuple(actions.shape)}")
        d = self.cfg.state_dim
        if state.shape != (b, d):
            raise ValueError(f"state must have shape ({b}, {d}), got {tuple(state.shape)}")
        a_s = torch.cat([actions, state.unsqueeze(1).expand(b, n, d)], dim=2).reshape(b * n, -1)
        emb = self.action_state(a_s)
        merged = feats.unsqueeze(1) + emb.reshape(b, n, -1, 1, 1)  # broadcast over space and candidates
        x = self.head_convs(merged.reshape((b * n,) + tuple(feats.shape[1:])))
        return self.head_fc(x).reshape(b, n)

    def forward(self, images: torch.Tensor, state: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Logits (B, N) for images (B, C, S, S), state (B, cfg.state_dim), actions (B, N, 8); Q = sigmoid(logits)."""
        return self.head_logits(self.embed(images), state, actions)


def count_convs(module: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in module.modules())
