"""SAE architectures: shapes, sparsity mechanics, gradients, toy-feature recovery, configs, format."""

from __future__ import annotations

import json

import pytest
import torch

from mechflow.saes import build_sae
from mechflow.saes.config import SAEConfig

HOOK = "blocks.0.hook_resid_post"
ARCH_SETTINGS = {
    "relu": {"l1_coefficient": 0.3},
    "topk": {"k": 4},
    "batchtopk": {"k": 3},
    "jumprelu": {"l1_coefficient": 0.1},
}


def config(arch: str, **overrides) -> SAEConfig:
    settings = {
        "architecture": arch,
        "d_in": 16,
        "d_sae": 64,
        "hook_name": HOOK,
        "batch_size": 256,
        "total_tokens": 2560,
        **ARCH_SETTINGS[arch],
        **overrides,
    }
    return SAEConfig(**settings)


@pytest.mark.parametrize("arch", list(ARCH_SETTINGS))
def test_shapes_and_saelens_parameter_names(arch):
    sae = build_sae(config(arch))
    assert tuple(sae.W_enc.shape) == (16, 64) and tuple(sae.W_dec.shape) == (64, 16)
    assert tuple(sae.b_enc.shape) == (64,) and tuple(sae.b_dec.shape) == (16,)
    x = torch.randn(3, 5, 16)  # batch pos d_in
    recon, acts = sae(x)
    assert recon.shape == (3, 5, 16) and acts.shape == (3, 5, 64)
    torch.testing.assert_close(sae.decode(sae.encode(x)), recon)
    step = sae.training_loss(x.reshape(-1, 16), sparsity_coefficient=0.1, dead_mask=None)
    assert step.loss.ndim == 0 and step.feature_acts.shape == (15, 64)
    assert step.fired.shape == (64,) and step.fired.dtype == torch.bool
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))


def test_topk_keeps_exactly_k_latents_per_token():
    sae = build_sae(config("topk", k=5))
    acts = sae.encode(torch.randn(512, 16))
    assert ((acts != 0).sum(-1) == 5).all()
    step = sae.training_loss(torch.randn(512, 16), dead_mask=None)
    assert ((step.feature_acts != 0).sum(-1) == 5).all()


def test_batchtopk_averages_k_per_token_and_learns_a_threshold():
    sae = build_sae(config("batchtopk", k=3))
    x = torch.randn(512, 16)
    step = sae.training_loss(x, dead_mask=None)
    per_token = (step.feature_acts != 0).sum(-1)
    assert int(per_token.sum()) == 3 * 512  # k on average ...
    assert per_token.min() < 3 < per_token.max()  # ... but not per token
    acts = step.feature_acts.detach()
    kept = acts[acts != 0]
    assert float(sae.threshold) == pytest.approx(float(kept.min()))
    # Inference thresholds token by token at that value: the same batch keeps ~k per token.
    l0 = (sae.encode(x) != 0).sum(-1).float().mean()
    assert 2.5 <= float(l0) <= 3.5


def test_jumprelu_pseudo_gradients():
    from mechflow.saes.jumprelu import JumpReLUFunction, StepFunction

    z = torch.tensor([[0.1, 0.3, 0.5]], requires_grad=True)
    theta = torch.tensor([0.25, 0.25, 0.25], requires_grad=True)
    StepFunction.apply(z, theta, 0.2).sum().backward()
    # only z = 0.3 lies within bandwidth/2 of theta: d/dtheta H = -1/eps
    torch.testing.assert_close(theta.grad, torch.tensor([0.0, -5.0, 0.0]))
    assert z.grad is None or not z.grad.any()
    theta.grad = None
    out = JumpReLUFunction.apply(z, theta, 0.2)
    torch.testing.assert_close(out.detach(), torch.tensor([[0.0, 0.3, 0.5]]))
    out.sum().backward()
    torch.testing.assert_close(theta.grad, torch.tensor([0.0, -0.25 / 0.2, 0.0]))
    torch.testing.assert_close(z.grad, torch.tensor([[0.0, 1.0, 1.0]]))


def test_jumprelu_thresholds_get_gradients_in_training():
    sae = build_sae(config("jumprelu", jumprelu_bandwidth=0.5, jumprelu_init_threshold=0.2))
    step = sae.training_loss(torch.randn(256, 16), sparsity_coefficient=0.1)
    step.loss.backward()
    assert sae.threshold.grad is not None and torch.isfinite(sae.threshold.grad).all()
    assert (sae.threshold.grad != 0).sum() > 32


def test_jumprelu_threshold_starts_where_the_l0_penalty_balances():
    # firing at theta removes ~theta^2 of squared error against a cost of l1_coefficient
    cfg = config("jumprelu", l1_coefficient=2.25)
    assert cfg.jumprelu_init_threshold == pytest.approx(1.5)
    torch.testing.assert_close(build_sae(cfg).threshold.detach(), torch.full((64,), 1.5))
    assert SAEConfig.from_dict(cfg.to_dict()) == cfg
    assert config("jumprelu", jumprelu_init_threshold=0.001).jumprelu_init_threshold == 0.001
    assert config("topk").jumprelu_init_threshold is None


@pytest.mark.parametrize("weighted", [False, True])
def test_fused_relu_loss_matches_autograd(weighted):
    from mechflow.saes.relu import ReluSAE

    sae = ReluSAE(8, 32, weighted_l1=weighted).double()
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(0, 0.5)
        sae.W_dec.mul_(torch.rand(32, 1, dtype=torch.float64) + 0.5)
    x = torch.randn(64, 8, dtype=torch.float64)
    step = sae.training_loss(x, sparsity_coefficient=0.7)
    step.loss.backward()
    fused = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad()
    acts = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    x_hat = acts @ sae.W_dec + sae.b_dec
    w = sae.W_dec.norm(dim=1) if weighted else torch.ones(32, dtype=torch.float64)
    reference = (x_hat - x).pow(2).sum(-1).mean() + 0.7 * (acts * w).sum(-1).mean()
    reference.backward()
    torch.testing.assert_close(step.loss.detach(), reference.detach())
    torch.testing.assert_close(step.feature_acts, acts.detach())
    for name, p in sae.named_parameters():
        torch.testing.assert_close(fused[name], p.grad, msg=name)


def test_encoder_function_matches_autograd():
    from mechflow.saes.base import _Encoder

    args = [torch.randn(*shape, dtype=torch.float64, requires_grad=True) for shape in
            ((10, 4), (4, 6), (6,), (4,))]  # fmt: skip
    assert torch.autograd.gradcheck(_Encoder.apply, args)


def test_decoder_norm_projection():
    sae = build_sae(config("relu"))
    sae.W_dec.grad = torch.randn_like(sae.W_dec)
    sae.remove_parallel_decoder_grad_()
    torch.testing.assert_close((sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(64))
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.post_step_(unit_decoder=True)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))


def test_fold_input_scale():
    sae = build_sae(config("jumprelu"))
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
    x = torch.randn(32, 16)
    recon_scaled, acts_scaled = sae(3.0 * x)
    sae.fold_input_scale_(3.0)
    recon, acts = sae(x)
    torch.testing.assert_close(acts, acts_scaled)
    torch.testing.assert_close(recon, recon_scaled / 3.0)


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ARCH_SETTINGS))
def test_recovers_ground_truth_features(arch):
    """Sparse sums of 64 random directions in 32 dims: >= 90% found with cosine >= 0.9."""
    from mechflow.saes.evaluate import feature_recovery
    from mechflow.saes.synthetic import sparse_feature_data
    from mechflow.saes.training import TensorSource, train_sae

    data = sparse_feature_data(n_tokens=50_000, d_in=32, n_features=64, p_active=0.03, seed=0)
    cfg = config(
        arch, d_in=32, d_sae=128, batch_size=1024, total_tokens=300_000, lr=1e-2,
        shuffle_buffer_tokens=16_384, dead_after_tokens=50_000,
    )  # fmt: skip
    result = train_sae(cfg, TensorSource(data.acts, chunk_tokens=4096), progress=False)
    found = feature_recovery(result.sae.W_dec.detach(), data.features)
    assert found["frac_recovered"] >= 0.9, found
    assert found["mmcs"] >= 0.9
    assert result.log["fvu"].iloc[-1] < 0.1


def test_feature_recovery_metric():
    from mechflow.saes.evaluate import feature_recovery

    true = torch.eye(4, 8)
    dec = torch.cat([true[:3] * 2.0, torch.ones(1, 8)])  # 3 found (any scale), 1 missed
    found = feature_recovery(dec, true)
    assert found["frac_recovered"] == 0.75
    torch.testing.assert_close(found["max_cosine"][:3], torch.ones(3))


def test_activation_metrics():
    from mechflow.saes.evaluate import activation_metrics

    sae = build_sae(config("topk", k=4))
    x = torch.randn(300, 16)
    metrics = activation_metrics(sae, [x[:100], x[100:]], dense_threshold=0.05)
    recon = sae(x).reconstruction.detach()
    fvu = ((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert metrics["fvu"] == pytest.approx(float(fvu), rel=1e-5)
    assert metrics["l0"] == pytest.approx(4.0)
    assert metrics["n_tokens"] == 300
    fires = (sae.encode(x) != 0).float().mean(0)
    assert metrics["n_dead"] == int((fires == 0).sum())
    assert metrics["n_dense"] == int((fires > 0.05).sum())
    torch.testing.assert_close(metrics["mean_activation"], x.mean(0))


def test_ce_loss_recovered_is_one_for_a_perfect_sae(tiny_model):
    """relu(x) - relu(-x) = x: a 2*d_in ReLU SAE that reconstructs exactly."""
    from mechflow.saes.evaluate import ce_loss_recovered
    from mechflow.saes.relu import ReluSAE

    d = tiny_model.cfg.d_model
    sae = ReluSAE(d, 2 * d)
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
    tokens = torch.randint(1, 20, (6, 12)).numpy()
    hook = "blocks.0.hook_resid_post"
    out = ce_loss_recovered(tiny_model, sae, hook, tokens, batch_size=4, mean_act=torch.zeros(d))
    assert out["ce_sae"] == pytest.approx(out["ce_clean"], abs=1e-5)
    assert out["ce_recovered_zero"] == pytest.approx(1.0, abs=1e-3)
    assert out["ce_mean_ablated"] == pytest.approx(out["ce_zero_ablated"], abs=1e-6)
    assert not tiny_model.hook_dict[hook].fwd_hooks  # nothing left attached


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"k": 65}, "sae.k"),
        ({"k": 0}, "sae.k"),
        ({"architecture": "relu", "l1_coefficient": 0.0}, "sae.l1_coefficient"),
        ({"architecture": "jumprelu", "l1_coefficient": -1.0}, "sae.l1_coefficient"),
        ({"architecture": "relu", "l1_coefficient": None}, "sae.l1_coefficient"),
        ({"l1_coefficient": 0.1}, "sae.l1_coefficient"),  # topk takes no penalty
        ({"architecture": "gated"}, "sae.architecture"),
        ({"hook_name": "resid_post_0"}, "sae.hook_name"),
        ({"decoder_norm": "free"}, "sae.decoder_norm"),
        ({"dead_latents": "resample"}, "sae.dead_latents"),
        ({"aux_k": 100}, "sae.aux_k"),
        ({"expansion_factor": 3}, "sae.expansion_factor"),
        ({"total_tokens": 10}, "sae.total_tokens"),
        ({"lr": 0.0}, "sae.lr"),
        ({"lr_warmup_fraction": 0.9, "lr_decay_fraction": 0.2}, "sae.lr_decay_fraction"),
    ],
)
def test_bad_configs_name_the_key(overrides, key):
    data = {"architecture": "topk", "d_in": 16, "d_sae": 64, "hook_name": HOOK, "k": 4}
    data.update(overrides)
    with pytest.raises(ValueError, match=key):
        SAEConfig.from_dict(data)


def test_config_from_dict():
    with pytest.raises(ValueError, match="unknown key.*l1_coef"):
        SAEConfig.from_dict({"architecture": "relu", "d_in": 4, "hook_name": HOOK, "l1_coef": 1})
    cfg = SAEConfig.from_dict(
        {"architecture": "relu", "d_in": 16, "expansion_factor": 8, "hook_name": HOOK,
         "l1_coefficient": 1.0}
    )  # fmt: skip
    assert cfg.d_sae == 128 and cfg.dead_latent_method == "resample"
    assert SAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("arch", list(ARCH_SETTINGS))
def test_saelens_layout_roundtrip(arch, tmp_path):
    from safetensors.torch import load_file

    from mechflow.saes.saelens_format import load_sae, save_sae

    sae = build_sae(config(arch))
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(0, 0.1)
    if arch == "batchtopk":
        sae.training_loss(torch.randn(256, 16), dead_mask=None)  # sets the threshold
    out = save_sae(sae, tmp_path / "sae", hook_name=HOOK, model_name="tiny", context_size=24)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]  # no temporary left behind
    cfg = json.loads((out / "cfg.json").read_text())
    expected_arch = {"relu": "standard", "batchtopk": "jumprelu"}.get(arch, arch)
    assert cfg["architecture"] == expected_arch
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"]) == (16, 64, "float32")
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert cfg["metadata"]["hook_name"] == HOOK and cfg["metadata"]["model_name"] == "tiny"
    assert cfg["metadata"]["mechflow"]["architecture"] == arch
    assert cfg["metadata"]["sae_lens_version"].startswith("6.")
    if arch == "topk":
        assert cfg["k"] == 4 and cfg["rescale_acts_by_decoder_norm"] is False
    weights = load_file(str(out / "sae_weights.safetensors"))
    names = {"W_enc", "b_enc", "W_dec", "b_dec"} | ({"threshold"} if "jumprelu" in
                                                     expected_arch else set())  # fmt: skip
    assert set(weights) == names
    loaded, _ = load_sae(out)
    x = torch.randn(50, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).reconstruction, sae(x).reconstruction)


@pytest.mark.parametrize("arch", list(ARCH_SETTINGS))
def test_saelens_loads_our_saes(arch, tmp_path):
    """Only where sae-lens is installed (it is not a dependency): same reconstruction."""
    sae_lens = pytest.importorskip("sae_lens")
    from mechflow.saes.saelens_format import save_sae

    sae = build_sae(config(arch))
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(0, 0.1)
    if arch == "batchtopk":
        sae.training_loss(torch.randn(256, 16), dead_mask=None)
    out = save_sae(sae, tmp_path / "sae", hook_name=HOOK)
    theirs = sae_lens.SAE.load_from_disk(str(out), device="cpu")
    assert theirs.cfg.metadata.hook_name == HOOK
    x = torch.randn(100, 16)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), sae(x).reconstruction, atol=1e-5, rtol=1e-5)
        assert torch.equal(theirs.encode(x) != 0, sae.encode(x) != 0)
