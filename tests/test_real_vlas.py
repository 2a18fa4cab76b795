"""Real VLA bases on tiny checkpoints written in the published on-disk formats: loading through
`--base <family> --base-path`, OpenVLA's bins by hand, the timm -> transformers key mapping
against timm's ViT math, sampling, log_prob consistency, save/load, bad input, and one GRPO
update and one residual update on each family."""

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from toy_benchmark import ToyBenchmark

from vla_rl.cli import main
from vla_rl.core.benchmark import EnvConfig, group_episodes
from vla_rl.core.load_options import BaseLoadConfig
from vla_rl.core.policy import load_policy
from vla_rl.core.trajectories import Trajectories
from vla_rl.methods.on_policy import PolicyGradientConfig, policy_update
from vla_rl.policies.openvla import (
    OpenVLALoadOptions,
    tokens_to_unit,
    unit_to_tokens,
    unnormalize,
)
from vla_rl.policies.openvla_oft import OpenVLAOFTLoadOptions
from vla_rl.policies.openvla_tiny import build_openvla
from vla_rl.policies.pi0 import Pi0LoadOptions
from vla_rl.policies.pi0_tiny import build_pi0
from vla_rl.policies.prismatic import VisionTower, hf_to_timm, timm_to_hf, tower_specs
from vla_rl.policies.smolvla import SmolVLALoadOptions
from vla_rl.policies.smolvla_tiny import build_smolvla
from vla_rl.policies.vla_checkpoint import load_safetensors_dir
from vla_rl.rollout.engine import RolloutEngine

FAMILIES = ["openvla", "openvla-oft", "pi0", "smolvla"]
LOAD = {  # each family's own options
    "openvla": OpenVLALoadOptions(unnorm_key="bridge_orig"),
    "openvla-oft": OpenVLAOFTLoadOptions(unnorm_key="libero_spatial_no_noops", chunk_size=2),
    "pi0": Pi0LoadOptions(),
    "smolvla": SmolVLALoadOptions(),
}


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """One tiny checkpoint per family for the toy benchmark (Da = 1, Ds = 2)."""
    root = tmp_path_factory.mktemp("real_vlas")
    return {
        "openvla": build_openvla(root / "openvla", 1, 2),
        "openvla-oft": build_openvla(root / "oft", 1, 2, oft=True),
        "pi0": build_pi0(root / "pi0", 1, 2, chunk_size=2),
        "smolvla": build_smolvla(root / "smolvla", 1, 2, chunk_size=2),
    }


def toy_obs(batch=3, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 255, (batch, 1, 20, 20, 3), dtype=np.uint8),
            "state": rng.normal(size=(batch, 2)).astype(np.float32),
            "instruction": ["move to the left", "go right now", "move"][:batch],
            "task": ["left", "right", "left"][:batch]}  # fmt: skip


def load(family, checkpoints):
    torch.manual_seed(0)
    return load_policy(family, ToyBenchmark(), str(checkpoints[family]), LOAD[family])


# ---- OpenVLA's action tokens, by hand --------------------------------------------------------
def test_openvla_bins_by_hand():
    # 256 edges over [-1, 1] (step 2/255), 255 centres; token = 32000 - digitize(a).
    tokens = unit_to_tokens(torch.tensor([-1.0, 0.0, 1.0, 0.5]), 32000)
    assert tokens.tolist() == [31999, 31872, 31744, 31808]  # 0.5: edge 191 = 0.498 -> 192
    unit = tokens_to_unit(torch.tensor([31999, 31872, 31745, 31744]), 32000)
    expected = [-1 + 1 / 255, -1 + 127.5 * 2 / 255, 1 - 1 / 255, 1 - 1 / 255]  # 31744 clips
    torch.testing.assert_close(unit, torch.tensor(expected), rtol=0, atol=1e-6)
    assert abs(unit[1].item()) < 1e-6
    # q01 = -0.5, q99 = 0.5 on a masked dim; the unmasked (gripper) dim passes through.
    stats = {"q01": [-0.5, -0.5], "q99": [0.5, 0.5], "mask": [True, False]}
    out = unnormalize(torch.tensor([[1.0, 1.0], [-1.0, 0.3]]), stats)
    torch.testing.assert_close(out, torch.tensor([[0.5, 1.0], [-0.5, 0.3]]))


def test_openvla_samples_only_action_tokens_in_range(checkpoints):
    policy = load("openvla", checkpoints)
    sample = policy.sample_actions(toy_obs())
    assert sample.actions.shape == (3, 1, 1)
    assert (sample.actions.abs() <= 0.5 + 1e-6).all()  # inside [q01, q99] of bridge_orig
    ids = policy.prompt_ids(["pick up the cube"])[0][0].tolist()
    assert ids[-1] == 29871 and ids[0] != policy.tokenizer.bos_token_id  # "▁" last, BOS apart


# ---- the key mapping against timm's ViT math ---------------------------------------------------
def timm_vit(state, prefix, kind, heads, depth_used, pixels, registers=0):
    """timm's ViT forward (pre-norm blocks, fused qkv, layer scale for DINOv2), written out from
    the checkpoint's own tensors, up to block `depth_used` - 1; returns the patch tokens."""
    g = lambda n: state[prefix + n]  # noqa: E731
    x = torch.nn.functional.conv2d(pixels, g("patch_embed.proj.weight"), g("patch_embed.proj.bias"),
                                   stride=g("patch_embed.proj.weight").shape[-1])  # fmt: skip
    x = x.flatten(2).transpose(1, 2) + g("pos_embed")
    if kind == "dinov2":
        b = len(x)
        x = torch.cat([g("cls_token").expand(b, -1, -1), g("reg_token").expand(b, -1, -1), x], 1)
    d = x.shape[-1]
    act = torch.nn.functional.gelu if kind == "dinov2" else (
        lambda t: torch.nn.functional.gelu(t, approximate="tanh"))  # fmt: skip
    for i in range(depth_used):
        p = f"blocks.{i}."
        h = torch.nn.functional.layer_norm(
            x, (d,), g(p + "norm1.weight"), g(p + "norm1.bias"), 1e-6
        )
        q, k, v = (h @ g(p + "attn.qkv.weight").T + g(p + "attn.qkv.bias")).chunk(3, -1)
        split = lambda t: t.view(*t.shape[:2], heads, -1).transpose(1, 2)  # noqa: E731
        a = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
        a = a.transpose(1, 2).flatten(2) @ g(p + "attn.proj.weight").T + g(p + "attn.proj.bias")
        x = x + (a * g(p + "ls1.scale_factor") if kind == "dinov2" else a)
        h = torch.nn.functional.layer_norm(
            x, (d,), g(p + "norm2.weight"), g(p + "norm2.bias"), 1e-6
        )
        m = act(h @ g(p + "mlp.fc1.weight").T + g(p + "mlp.fc1.bias"))
        m = m @ g(p + "mlp.fc2.weight").T + g(p + "mlp.fc2.bias")
        x = x + (m * g(p + "ls2.scale_factor") if kind == "dinov2" else m)
    return x[:, (1 + registers) if kind == "dinov2" else 0 :]


def test_prismatic_key_mapping_reproduces_timm_and_inverts_exactly(checkpoints):
    directory = checkpoints["openvla"]
    config = json.loads((directory / "config.json").read_text())
    state = load_safetensors_dir(directory)
    specs = tower_specs(config)
    hf, unused = timm_to_hf(state, specs)
    assert any(k.endswith("blocks.2.attn.qkv.weight") for k in unused)  # the last block: unused
    assert "vision_backbone.fused_featurizer.attn_pool.latent" in unused
    back = hf_to_timm(hf, specs, unused)
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)
    pixels = torch.randn(2, 3, 32, 32)
    prefixes = ("vision_backbone.featurizer.", "vision_backbone.fused_featurizer.")
    for t, (spec, prefix) in enumerate(zip(specs, prefixes)):
        tower = VisionTower(spec)
        own = {k.removeprefix(f"towers.{t}.vit."): v for k, v in hf.items()
               if k.startswith(f"towers.{t}.")}  # fmt: skip
        missing = tower.vit.load_state_dict(own, strict=False).missing_keys
        assert all(
            k.endswith(("mask_token", "layernorm.weight", "layernorm.bias")) for k in missing
        )
        ours = tower(pixels)
        # OpenVLA takes the second-to-last block's output: depth 3 -> blocks 0 and 1.
        ref = timm_vit(state, prefix, spec.kind, spec.heads, spec.depth - 1, pixels, spec.registers)
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_published_names_of_pi0_and_smolvla(checkpoints):
    """The tensor names the tiny checkpoints carry are the published ones (lerobot/pi0_base,
    lerobot/smolvla_base), including SmolVLA's cross-attention k/v widths."""
    from safetensors.torch import load_file

    pi0 = load_file(str(checkpoints["pi0"] / "model.safetensors"))
    for name in (
        "model.paligemma_with_expert.paligemma.model.language_model.layers.0.self_attn.q_proj.weight",
        "model.paligemma_with_expert.gemma_expert.model.layers.0.mlp.gate_proj.weight",
        "model.paligemma_with_expert.paligemma.lm_head.weight",
        "model.action_in_proj.weight",
        "model.state_proj.weight",
        "model.action_time_mlp_in.weight",
        "model.action_out_proj.weight",
    ):
        assert name in pi0, name
    smol = load_file(str(checkpoints["smolvla"] / "model.safetensors"))
    ex = "model.vlm_with_expert.lm_expert.layers"
    vlm_kv = smol["model.vlm_with_expert.vlm.model.text_model.layers.0.self_attn.k_proj.weight"]
    assert smol[f"{ex}.0.self_attn.k_proj.weight"].shape[1] == 48  # self-attn: expert width
    assert smol[f"{ex}.1.self_attn.k_proj.weight"].shape[1] == vlm_kv.shape[0]  # cross-attn
    for name in (
        "model.vlm_with_expert.vlm.model.connector.modality_projection.proj.weight",
        "model.vlm_with_expert.vlm.model.vision_model.post_layernorm.weight",
        "model.vlm_with_expert.lm_expert.norm.weight",
        "model.action_time_mlp_out.bias",
    ):
        assert name in smol, name
    assert not any("lm_expert.embed_tokens" in k for k in smol)


# ---- every family: the parts of log_prob, padded batches ---------------------------------------
# (shapes, re-scoring a sample and save/load round trips: tests/test_policy_contract.py)
@pytest.mark.parametrize("family", FAMILIES)
def test_family_log_prob_terms_and_padded_batches(family, checkpoints):
    policy = load(family, checkpoints)
    obs = toy_obs()
    torch.manual_seed(1)
    with torch.no_grad():
        sample = policy.sample_actions(obs)
        rescored = policy.log_prob(obs, sample)
        terms, entropy = policy.log_prob_terms(obs, sample)
    if family in ("pi0", "smolvla"):  # the chain's x^0 term has no parameters (not in terms)
        from vla_rl.policies.gaussian_chain import standard_normal_log_prob

        rescored = rescored - standard_normal_log_prob(sample.extras["chain"][:, 0])
    torch.testing.assert_close(terms.sum(-1), rescored, rtol=1e-4, atol=1e-3)
    assert torch.isfinite(entropy).all()
    # A row of a padded batch decodes as it does alone (different instruction lengths).
    with torch.no_grad():
        torch.manual_seed(2)
        batch = policy.sample_actions(obs, deterministic=True).actions
        single = policy.sample_actions({k: v[2:3] for k, v in obs.items()}, True).actions
    if family in ("openvla", "openvla-oft"):
        torch.testing.assert_close(batch[2:3], single, rtol=1e-4, atol=1e-4)


def test_bad_input_names_the_choices(checkpoints, tmp_path, capsys):
    with pytest.raises(ValueError, match="bridge_orig, fractal20220817_data"):
        load_policy("openvla", ToyBenchmark(), str(checkpoints["openvla"]), BaseLoadConfig())
    with pytest.raises(ValueError, match="valid choices: bridge_orig"):
        load_policy("openvla", ToyBenchmark(), str(checkpoints["openvla"]),
                    BaseLoadConfig(unnorm_key="libero"))  # fmt: skip
    with pytest.raises(KeyError, match="openvla, openvla-oft, pi0, smolvla"):
        load_policy("metaworld-flow", None, str(checkpoints["openvla"]))
    out = tmp_path / "run"
    code = main(["eval", "--policy", "pi0", "--base-path", str(checkpoints["pi0"]),
                 "--benchmark", "metaworld", "--output-dir", str(out)])  # fmt: skip
    assert code == 2 and not out.exists()
    assert "1-D actions but benchmark 'metaworld' takes 4-D" in capsys.readouterr().err
    # An option of another family: one line naming the ones this family takes.
    code = main(["bench-policy", "--policy", "pi0", "--base-path", str(checkpoints["pi0"]),
                 "--base-load.unnorm-key", "bridge_orig", "--output", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and not out.exists() and err.count("\n") == 1
    assert "--base-load.unnorm-key: not an option of pi0; pi0 takes --base-load.dtype," in err
    assert main(["eval", "--policy", "openvla", "--base-path", str(tmp_path / "nope")]) == 2
    assert main(["tiny-checkpoint", "--family", "rt2", "--output-dir", str(out)]) == 2
    assert not out.exists()


@pytest.mark.parametrize("command", ["finetune", "eval", "bench_policy"])
def test_every_base_load_flag_reaches_the_family(command):
    """Every `--base-load.<field>` parses on every command that loads a base, and each family
    gets the ones it takes."""
    import importlib

    from vla_rl.core.config import parse_cli

    module = importlib.import_module(f"vla_rl.commands.{command}")
    config = {"finetune": "FinetuneConfig", "eval": "EvalConfig",
              "bench_policy": "PolicyBenchConfig"}[command]  # fmt: skip
    values = {"unnorm_key": "libero_10_no_noops", "dtype": "float32", "center_crop": True,
              "num_images": 2, "chunk_size": 3, "scale_head": "laplace", "init_scale": 0.1,
              "tokenizer": "/tok", "chain_std": 0.2, "num_steps": 4}  # fmt: skip
    assert set(values) == {f.name for f in dataclasses.fields(BaseLoadConfig)}

    def flags(names):
        out = []
        for name in names:
            flag = f"--base-load.{name.replace('_', '-')}"
            out += [flag] if values[name] is True else [flag, str(values[name])]  # tyro: a bool
        return out  # is a flag without value

    cfg = parse_cli(getattr(module, config), flags(values), prog="vla-rl")
    assert dataclasses.asdict(cfg.base_load) == values
    for family, options in LOAD.items():
        own = [f.name for f in dataclasses.fields(options)]
        cfg = parse_cli(getattr(module, config), flags(own), prog="vla-rl")
        chosen = cfg.base_load.for_family(family, type(options))
        assert chosen == type(options)(**{name: values[name] for name in own})


def test_loading_gets_the_options_set_and_the_family_defaults_otherwise(checkpoints):
    assert BaseLoadConfig().for_family("smolvla", SmolVLALoadOptions) == SmolVLALoadOptions()
    policy = load_policy("smolvla", None, str(checkpoints["smolvla"]),
                         BaseLoadConfig(num_steps=2, chain_std=0.1))  # fmt: skip
    assert (policy.num_steps, policy.chain_std, policy.options.dtype) == (2, 0.1, "auto")


# ---- the methods run unchanged on these bases ---------------------------------------------------
def image_rollouts(policy, episodes_per_state=2):
    bench = ToyBenchmark(horizon=4)
    tasks = bench.tasks("train")
    episodes = group_episodes(tasks, 1, episodes_per_state, np.random.default_rng(0))
    venv = policy.wrap_env(
        bench.make_env(tasks, EnvConfig(num_envs=2, num_workers=0, images=True, image_size=20))
    )
    try:
        return RolloutEngine(venv).run(policy, episodes, keep_steps=True, seed=0)
    finally:
        venv.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_one_grpo_update_changes_the_weights(family, checkpoints):
    policy = load(family, checkpoints)
    traj = Trajectories.from_episodes(image_rollouts(policy))
    adv = torch.linspace(-1, 1, traj.batch_size)[None].expand_as(traj.rewards) * traj.valid
    before = copy.deepcopy(policy.state_dict())
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-2)
    pg = PolicyGradientConfig(minibatch_size=64, epochs=1)
    keep = torch.ones(traj.batch_size, dtype=torch.bool)
    metrics = policy_update(
        policy, opt, traj, adv, keep, pg, None, torch.Generator().manual_seed(0)
    )
    assert metrics["grad_norm"] > 0 and np.isfinite(metrics["grad_norm"])
    assert any(not torch.equal(v, policy.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("family", FAMILIES)
def test_one_residual_update_on_the_frozen_base(family, checkpoints):
    from vla_rl.methods.residual.config import ResidualConfig
    from vla_rl.methods.residual.learner import Residual
    from vla_rl.methods.residual.policy import ResidualPolicy

    base = load(family, checkpoints)
    torch.manual_seed(0)
    policy = ResidualPolicy(base, 2, 1, ["left", "right"], [-1.0], [1.0], hidden=32)
    records = image_rollouts(policy, episodes_per_state=1)
    seen = np.concatenate([np.asarray(o["base_action"]) for r in records for o in r.observations])
    seen = seen.reshape(len(seen), -1)
    assert seen.shape[1] == 1 and np.isfinite(seen).all()  # the base ran inside the queue
    n = len(seen)
    rng = np.random.default_rng(0)
    batch = {
        "state": rng.normal(size=(n, 2)).astype(np.float32),
        "task": np.zeros(n, np.int64),
        "base": seen.astype(np.float32),
        "action": seen.astype(np.float32),
        "ret": np.ones(n, np.float32),
        "next_state": rng.normal(size=(n, 2)).astype(np.float32),
        "next_base": seen.astype(np.float32),
        "discount": np.full(n, 0.9, np.float32),
    }
    agent = Residual(policy, ResidualConfig(hidden=32, num_critics=2))
    base_before = {k: v.clone() for k, v in base.state_dict().items()}
    actor_before = {k: v.clone() for k, v in policy.actor.state_dict().items()}
    agent.update(batch, update_actor=False)
    agent.update(batch, update_actor=True)
    assert any(not torch.equal(v, policy.actor.state_dict()[k]) for k, v in actor_before.items())
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in base_before.items())


def test_lora_on_openvla_merges_back_into_its_own_format(checkpoints, tmp_path):
    from vla_rl.rl.lora import add_lora, merge_lora

    policy = load("openvla", checkpoints)
    obs = toy_obs()
    sample = policy.sample_actions(obs)
    trainable = add_lora(policy, rank=2, alpha=4)
    assert 0 < trainable < sum(p.numel() for p in policy.parameters())
    opt = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=0.5)
    (-policy.log_prob(obs, sample).sum()).backward()
    opt.step()
    with torch.no_grad():
        after = policy.log_prob(obs, sample)
    assert not torch.allclose(after, sample.log_prob.detach(), atol=1e-3)
    merge_lora(policy)
    policy.save_pretrained(tmp_path / "merged")
    loaded = load_policy(str(tmp_path / "merged"))
    with torch.no_grad():
        torch.testing.assert_close(loaded.log_prob(obs, sample), after, rtol=1e-4, atol=1e-4)
    saved = load_safetensors_dir(tmp_path / "merged")
    assert set(saved) == set(load_safetensors_dir(checkpoints["openvla"]))  # the published names
