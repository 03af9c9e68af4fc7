"""ONNX export: Q parity, the same CEM decision from torch and ONNX Runtime, loading, Wilson numbers."""
import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # several test processes share 2 cores

from rcan_grasp_policy.backends import (OrtQFunction, PolicyLoadError, TorchQFunction,  # noqa: E402
                                        load_qfunction, save_policy)
from rcan_grasp_policy.cem import CEMConfig, CEMPolicy  # noqa: E402
from rcan_grasp_policy.export import export_onnx, parity  # noqa: E402
from rcan_grasp_policy.qnet import QNetConfig, QNetwork  # noqa: E402
from rcan_common.stats import wilson_interval  # noqa: E402


@pytest.fixture(scope="module", params=[(16, False, True, False), (8, False, True, False), (16, True, True, False),
                                        (16, False, False, False), (16, False, True, True)],
                ids=["merge16", "merge8", "coordconv", "no-stem-pool", "yaw-state"])
def tiny(request, tmp_path_factory):
    torch.manual_seed(0)
    merge, coords, stem_pool, yaw_state = request.param
    net = QNetwork(QNetConfig(in_channels=6, image_size=32, width=8, fc_width=16, merge_downsample=merge,
                              coord_channels=coords, stem_pool=stem_pool, yaw_state=yaw_state))
    # Non-trivial BatchNorm statistics, as after training.
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(16, 6, 32, 32), torch.rand(16, net.cfg.state_dim), torch.randn(16, 1, 8))
    net.eval()
    d = tmp_path_factory.mktemp("export")
    export_onnx(net, {"variant": "rcan", "generator": "g.onnx"}, d / "q.onnx")
    save_policy(d / "q.safetensors", net, {"variant": "rcan", "generator": "g.onnx"})
    return net, d


def test_q_parity_and_cem_decision_parity(tiny):
    net, d = tiny
    checks = parity(net, d / "q.onnx", CEMConfig(), states=4, seed=3)
    assert checks["q_max_abs_diff"] < 1e-5
    assert checks["cem_same_actions"]
    # And directly: a batch of 4 states, same seed -> identical decisions and Q estimates.
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, 32, 32, 6), dtype=np.uint8)
    state = rng.random((4, net.cfg.state_dim)).astype(np.float32)
    assert OrtQFunction(d / "q.onnx").state_dim == net.cfg.state_dim
    a1, q1 = CEMPolicy(TorchQFunction(net), seed=11).act(images, state)
    a2, q2 = CEMPolicy(OrtQFunction(d / "q.onnx"), seed=11).act(images, state)
    np.testing.assert_allclose(a1, a2, atol=1e-6)
    np.testing.assert_allclose(q1, q2, atol=1e-5)


def test_dynamic_batch_and_candidates(tiny):
    net, d = tiny
    ort_qf = OrtQFunction(d / "q.onnx")
    rng = np.random.default_rng(2)
    for b, n in ((1, 1), (3, 64), (5, 7)):
        images = rng.integers(0, 256, (b, 32, 32, 6), dtype=np.uint8)
        state = rng.random((b, net.cfg.state_dim)).astype(np.float32)
        actions = rng.standard_normal((b, n, 8)).astype(np.float32)
        q = ort_qf.score(ort_qf.embed(images, state), actions)
        assert q.shape == (b, n) and ((q >= 0) & (q <= 1)).all()


def test_load_qfunction_dispatch_and_errors(tiny, tmp_path):
    net, d = tiny
    qf, meta = load_qfunction(d / "q.onnx")
    assert isinstance(qf, OrtQFunction) and meta["variant"] == "rcan" and meta["qnet"]["width"] == 8
    qf, meta = load_qfunction(d / "q.safetensors")
    assert isinstance(qf, TorchQFunction) and meta["generator"] == "g.onnx"
    assert (d / "q.safetensors").stat().st_mode & 0o044  # readable by others, like the ONNX beside it
    with pytest.raises(PolicyLoadError, match="not found"):
        load_qfunction(tmp_path / "missing.onnx")
    with pytest.raises(PolicyLoadError, match="unknown policy file type"):
        load_qfunction(tmp_path / "q.pt")
    (tmp_path / "bad.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(PolicyLoadError, match="cannot load"):
        load_qfunction(tmp_path / "bad.onnx")


def test_wilson_interval_numbers():
    # Reference values (z = 1.96) from the closed form.
    np.testing.assert_allclose(wilson_interval(5, 10), (0.2366, 0.7634), atol=1e-4)
    np.testing.assert_allclose(wilson_interval(0, 10), (0.0, 0.2775), atol=1e-4)
    np.testing.assert_allclose(wilson_interval(8, 10), (0.4902, 0.9433), atol=1e-4)
    lo, hi = wilson_interval(92, 102)
    assert lo < 92 / 102 < hi and hi - lo < 0.12


def test_card_command_is_quoted_and_elides_the_notes():
    from rcan_grasp_policy.export import command_line

    cmd = command_line(["--checkpoint", "runs/a b", "--notes", "long\ntext", "--out", "m.onnx"])
    assert cmd == "rcan export-policy --checkpoint 'runs/a b' --notes '<the Notes section above>' --out m.onnx"
    assert command_line(["--notes=x y"]) == "rcan export-policy '--notes=<the Notes section above>'"


def test_cards_name_the_acting_options_their_evaluations_ran_with():
    from rcan_grasp_policy.export import acting_options

    assert acting_options({"config": {"cem": {"samples": 64}}}) == \
        {"close_threshold": 0.0, "close_gate_last_steps": 0.0, "hold_check_threshold": 0.0}
    ran = {"config": {"cem": {"close_threshold": 0.55, "close_gate_last_steps": 6, "hold_check_threshold": 0.1}}}
    assert acting_options(ran) == {"close_threshold": 0.55, "close_gate_last_steps": 6.0, "hold_check_threshold": 0.1}
