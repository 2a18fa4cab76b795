"""The VLAC adapter on a tiny random checkpoint written in the published layout (vlac_tiny.py):
VLAC's prompt strings byte for byte, swift's chunked tokenization, the tokenizer rebuilt from
tokenizer.model, the key mapping (a split by hand, a round trip, and the native model against
InternVL2's published math written out from the checkpoint's own tensors), the 448 px
preprocessing, scoring pairs, done and trajectories through `ProgressCritic`, answers parsed from
a model rigged to say a number, and the one-line errors."""

import json
import shutil
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vla_rl.rewards.progress_critic import ProgressCritic, chain_progress
from vla_rl.rewards.vlac import VLACCritic, is_vlac_dir, load_critic, read_weights
from vla_rl.rewards.vlac_mapping import FusedShapes, to_native, to_published
from vla_rl.rewards.vlac_prompts import (
    chat_chunks,
    chat_text,
    done_query,
    pair_query,
    parse_percent,
    preprocess,
    rich_text,
    sample_reference,
    trajectory_query,
)
from vla_rl.rewards.vlac_tiny import REMOTE_CODE, build_vlac, tokenizer_files
from vla_rl.rewards.vlac_tokenizer import load_tokenizer

TASK = "pick up the red cube"
SYSTEM = (
    "You are a visual-language assistant designed to interpret spatial and task-related "
    "information from images and text. Provide precise, context-aware responses and actionable "
    "guidance to assist in achieving task objectives."
)
IMG = "<img>" + "<IMG_CONTEXT>" * 256 + "</img>\n"  # one 448 px image: one tile, 256 tokens
HEAD = "<s><|im_start|>system\n" + SYSTEM + "<|im_end|>\n<|im_start|>user\n"
TAIL = "<|im_end|>\n<|im_start|>assistant\n"
COMPARE = (
    "Compare two images and evaluate whether the second image is closer to achieving task "
    "objectives compared to the first image. + score means the second image is closer, - score "
    "means the first image is closer\nResponse the relative progressing of target task follow "
    "<score>. The target task is: <task> pick up the red cube </task> <score>"
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_vlac(tmp_path_factory.mktemp("vlac") / "VLAC")


@pytest.fixture(scope="module")
def critic(tiny):
    return load_critic(tiny, device="cpu", batch_size=4)


def frames(n, seed=0, size=40):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# ---- prompts, byte for byte -------------------------------------------------------------------
def test_prompt_strings_are_vlacs_byte_for_byte():
    pair = HEAD + "Image-1: " + IMG + "\nImage-2: " + IMG + "\n" + COMPARE + TAIL
    assert chat_text(pair_query(TASK), 2) == pair
    done = (HEAD + IMG + "The 1 means yes, the 0 means no. Check if the robot has completed its "
            "task: <task> pick up the red cube </task> <done>" + TAIL)  # fmt: skip
    assert chat_text(done_query(TASK), 1) == done  # the tag-less image goes first
    # One-shot, 4 reference frames: int(i / 3 * 100) gives 0, 33, 66, 100.
    ref = "".join(f" {p}% " + IMG + "\n" for p in (0, 33, 66, 100))
    one_shot = (HEAD + "<trajectory> <task> pick up the red cube </task>:" + ref
                + "</trajectory>0% " + IMG + "\nThis image is the trajectory beginning of the "
                "following two images\nImage-1: " + IMG + "\nImage-2: " + IMG + "\n" + COMPARE
                + TAIL)  # fmt: skip
    assert chat_text(trajectory_query(TASK, 4), 7) == one_shot
    assert trajectory_query(TASK, 9).count("%") == 10  # 9 references + the "0%" beginning
    assert " 12% " in trajectory_query(TASK, 9) and " 87% " in trajectory_query(TASK, 9)
    with pytest.raises(ValueError, match="3 <image> tags for 2 images"):
        chat_chunks(pair_query(TASK) + "<image>", 2)


def test_prompt_ids_are_swifts_chunks_and_equal_the_whole_text(critic):
    vlac, tok = critic.vlac, critic.vlac.tokenizer
    ids = vlac.prompt_ids(pair_query(TASK), 2)
    assert ids[:2] == [1, 92543]  # BOS, <|im_start|>
    assert ids.count(92546) == 512 and ids.count(92544) == 2 and ids.count(92545) == 2
    start = ids.index(92546)
    assert ids[start - 1] == 92544 and ids[start : start + 256] == [92546] * 256
    assert ids[start + 256] == 92545
    assert ids[-3:] == tok.encode("<|im_end|>\n<|im_start|>assistant\n")[-3:]
    # swift tokenizes chunk by chunk; since every chunk border is an added token, tokenizing the
    # whole string gives the same ids.
    assert [1] + tok.encode(chat_text(pair_query(TASK), 2, bos="")) == ids


# ---- the tokenizer rebuilt from tokenizer.model ------------------------------------------------
def test_tokenizer_from_sentencepiece_model(tmp_path, critic):
    tok = critic.vlac.tokenizer
    assert len(tok) == 92553 and (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 2)
    assert [tok.token_id(t) for t in ("<|im_end|>", "<|im_start|>", "<img>", "<IMG_CONTEXT>",
                                      "</box>")] == [92542, 92543, 92544, 92546, 92552]  # fmt: skip
    pieces = lambda s: [tok.tk.id_to_token(i) for i in tok.encode(s)]  # noqa: E731
    assert pieces("the image") == ["▁the", "▁image"]  # BPE merges, by piece score
    assert pieces("<|im_start|>user") == [
        "<|im_start|>",
        "▁",
        "u",
        "s",
        "e",
        "r",
    ]  # prefix per segment
    assert pieces("é") == ["▁", "<0xC3>", "<0xA9>"]  # byte fallback
    assert tok.decode(tok.encode("-37 task")) == "-37 task"
    # The normalizer follows the model's own flags: without the dummy prefix no "▁" is added.
    tokenizer_files(tmp_path, add_dummy_prefix=False)
    plain = load_tokenizer(tmp_path)
    assert [plain.tk.id_to_token(i) for i in plain.encode("ab c")] == ["a", "b", "▁", "c"]


# ---- the key mapping ----------------------------------------------------------------------------
def test_gqa_split_by_hand():
    """InternLM2's wqkv rows per kv head h: its `groups` query heads, then k_h, then v_h."""
    rows = ["q0", "q1", "k0", "v0", "q2", "q3", "k1", "v1"]  # 4 heads on 2 kv heads, head_dim 1
    fused = torch.arange(8.0)[:, None].expand(8, 3).clone()
    state = {"language_model.model.layers.0.attention.wqkv.weight": fused}
    native = to_native(state, FusedShapes(heads=4, kv_heads=2))
    base = "model.language_model.layers.0.self_attn."
    names = {x: native[base + f"{x}_proj.weight"][:, 0].int().tolist() for x in "qkv"}
    assert names == {"q": [0, 1, 4, 5], "k": [2, 6], "v": [3, 7]}
    assert [rows[i] for i in names["q"]] == ["q0", "q1", "q2", "q3"]
    assert torch.equal(to_published(native, FusedShapes(4, 2))[next(iter(state))], fused)


def test_mapping_round_trip_covers_the_native_model_exactly(tiny, critic):
    published = read_weights(tiny)
    shapes = FusedShapes(heads=4, kv_heads=2)
    native = to_native(published, shapes)
    expected = critic.vlac.model.state_dict()
    assert set(native) == set(expected)
    assert all(native[k].shape == expected[k].shape for k in native)
    back = to_published(native, shapes)
    assert set(back) == set(published)
    assert all(torch.equal(back[k], published[k]) for k in published)  # bit for bit
    with pytest.raises(ValueError, match=r"1 published tensor name\(s\) outside") as err:
        to_native({**published, "vision_model.extra.weight": torch.zeros(1)}, shapes)
    assert "\n" not in str(err.value)


def _rms(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rotate(x, positions, theta):
    """InternLM2's rotary embedding (rotate-half), x (1, heads, L, d)."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    angles = positions[:, None].float() * inv[None]
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    half = torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1)
    return x * cos + half * sin


def published_logits(state, config, ids, pixels):
    """InternVL2-2B's forward, written out from the published tensors: InternViT (fused qkv,
    layer scale), the v2 pixel shuffle of the last layer's patches, mlp1, and InternLM2 (the
    grouped wqkv rearrange, RoPE, SwiGLU w1 w3 w2). Returns the last position's logits."""
    g = lambda n: state[n].float()  # noqa: E731
    v, t = config["vision_config"], config["llm_config"]
    d, vh = v["hidden_size"], v["num_attention_heads"]
    patch = "vision_model.embeddings.patch_embedding."
    x = F.conv2d(pixels, g(patch + "weight"), g(patch + "bias"), stride=v["patch_size"])
    x = x.flatten(2).transpose(1, 2)
    cls = g("vision_model.embeddings.class_embedding").expand(len(x), 1, d)
    x = torch.cat([cls, x], 1) + g("vision_model.embeddings.position_embedding")
    b, n = x.shape[:2]
    for i in range(v["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        h = F.layer_norm(x, (d,), g(p + "norm1.weight"), g(p + "norm1.bias"), 1e-6)
        qkv = (h @ g(p + "attn.qkv.weight").T + g(p + "attn.qkv.bias")).view(b, n, 3, vh, -1)
        q, k, val = qkv.permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, val).transpose(1, 2).reshape(b, n, d)
        x = x + g(p + "ls1") * (a @ g(p + "attn.proj.weight").T + g(p + "attn.proj.bias"))
        h = F.layer_norm(x, (d,), g(p + "norm2.weight"), g(p + "norm2.bias"), 1e-6)
        m = F.gelu(h @ g(p + "mlp.fc1.weight").T + g(p + "mlp.fc1.bias"))
        x = x + g(p + "ls2") * (m @ g(p + "mlp.fc2.weight").T + g(p + "mlp.fc2.bias"))
    side = int((n - 1) ** 0.5)
    x = x[:, 1:].reshape(b, side, side, d)  # (n, w, h, c) as InternVL names it
    x = x.reshape(b, side, side // 2, d * 2).permute(0, 2, 1, 3)
    x = x.reshape(b, side // 2, side // 2, d * 4).permute(0, 2, 1, 3).reshape(b, -1, d * 4)
    x = F.layer_norm(x, (d * 4,), g("mlp1.0.weight"), g("mlp1.0.bias"), 1e-5)
    img = F.gelu(x @ g("mlp1.1.weight").T + g("mlp1.1.bias")) @ g("mlp1.3.weight").T
    img = img + g("mlp1.3.bias")
    e = g("language_model.model.tok_embeddings.weight")[ids].clone()
    e[ids == 92546] = img.reshape(-1, img.shape[-1])
    heads, kv = t["num_attention_heads"], t["num_key_value_heads"]
    hd, groups, length = t["hidden_size"] // heads, heads // kv, len(ids)
    pos, x = torch.arange(length), e[None]
    for i in range(t["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        h = _rms(x, g(p + "attention_norm.weight"))
        qkv = (h @ g(p + "attention.wqkv.weight").T).view(1, length, kv, groups + 2, hd)
        q = qkv[:, :, :, :groups].reshape(1, length, heads, hd).transpose(1, 2)
        k, val = qkv[:, :, :, -2].transpose(1, 2), qkv[:, :, :, -1].transpose(1, 2)
        q, k = _rotate(q, pos, t["rope_theta"]), _rotate(k, pos, t["rope_theta"])
        k, val = k.repeat_interleave(groups, 1), val.repeat_interleave(groups, 1)
        a = F.scaled_dot_product_attention(q, k, val, is_causal=True)
        x = x + a.transpose(1, 2).reshape(1, length, -1) @ g(p + "attention.wo.weight").T
        h = _rms(x, g(p + "ffn_norm.weight"))
        w1, w3 = g(p + "feed_forward.w1.weight"), g(p + "feed_forward.w3.weight")
        x = x + (F.silu(h @ w1.T) * (h @ w3.T)) @ g(p + "feed_forward.w2.weight").T
    x = _rms(x, g("language_model.model.norm.weight"))
    return (x[0, -1] @ g("language_model.output.weight").T).float()


def test_native_model_computes_the_published_math(tiny, critic):
    config = json.loads((tiny / "config.json").read_text())
    state = read_weights(tiny)
    vlac = critic.vlac
    pixels = vlac.pixels(frames(2))
    ids = torch.tensor(vlac.prompt_ids(pair_query(TASK), 2))
    ref = published_logits(state, config, ids, pixels)
    with torch.no_grad():
        ours = vlac._forward(ids[None], torch.ones_like(ids)[None], pixels).logits[0, -1]
    torch.testing.assert_close(ours.float(), ref, rtol=1e-4, atol=1e-4)
    assert ref.std() > 0.1  # not a degenerate comparison


# ---- images -------------------------------------------------------------------------------------
def test_preprocess_is_448_lanczos_with_imagenet_stats():
    flat = np.full((1, 30, 50, 3), 128, dtype=np.uint8)  # any size and aspect: squashed to 448
    x = preprocess(flat)
    assert x.shape == (1, 3, 448, 448)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(x[0, :, 100, 200], (128 / 255 - mean) / std)
    from PIL import Image

    img = frames(1, size=64)[0]
    by_hand = np.array(Image.fromarray(img).resize((448, 448), Image.Resampling.LANCZOS))
    want = torch.from_numpy(by_hand).permute(2, 0, 1).float() / 255 - mean[:, None, None]
    torch.testing.assert_close(preprocess(img[None])[0], want / std[:, None, None])


def test_reference_frames_are_sampled_as_vlac_does():
    ref = torch.arange(11)[:, None, None, None].expand(11, 2, 2, 3).to(torch.uint8)
    picked = sample_reference(ref, 9)[:, 0, 0, 0].tolist()
    assert picked == [0, 1, 2, 3, 5, 6, 7, 8, 10]  # int(i * 10 / 8)
    assert sample_reference(ref[:3], 9)[:, 0, 0, 0].tolist() == [0, 1, 2]


# ---- answers -------------------------------------------------------------------------------------
def test_answer_parsing():
    assert [parse_percent(s) for s in ("12", "-5", " +30 ", "7.5", "100")] == [12, -5, 30, 7.5, 100]
    assert [parse_percent(s) for s in ("", "abc", "12 apples", "1.02.0", "--3")] == [None] * 5
    # rich: a digit token becomes its expectation over the top digit tokens above 0.1 x top
    tokens, tops = ["-", "3"], [["-", "+", "x"], ["3", "4", "a", "9"]]
    probs = [[0.9, 0.05, 0.05], [0.6, 0.3, 0.05, 0.05]]  # "9" at 0.05 < 0.06 is dropped
    assert rich_text(tokens, tops, probs) == f"-{(3 * 0.6 + 4 * 0.3) / 0.9:.1f}"


# ---- scoring through ProgressCritic --------------------------------------------------------------
def test_critic_scores_pairs_done_and_trajectories(tiny, critic):
    assert isinstance(critic, ProgressCritic) and isinstance(critic, VLACCritic)
    assert all(name.removesuffix(".py") not in sys.modules for name in REMOTE_CODE)  # never run
    assert all((tiny / name).is_file() for name in REMOTE_CODE)  # the stubs raise if imported
    a, b = frames(3, 1), frames(3, 2)
    before = critic.vlac.answers
    d = critic.delta(a, b, [TASK, "open the drawer", "x"])
    assert d.shape == (3,) and d.dtype == torch.float32 and (d.abs() <= 1).all()
    assert critic.vlac.answers - before == 3  # each pair decoded once
    p = critic.done(a, TASK)
    assert p.shape == (3,) and ((p > 0) & (p < 1)).all()
    episode = np.concatenate([a, b])
    for mode in ("anchored", "chained"):
        progress = critic.progress(episode, TASK, mode)
        assert (
            progress.shape == (6,)
            and progress[0] == 0
            and ((progress >= 0) & (progress <= 1)).all()
        )


def test_left_padded_batches_answer_as_single_queries(tiny):
    critic = load_critic(tiny, device="cpu", batch_size=3, cache_size=0)
    x = frames(3, 5)
    tasks = ["a", "pick up the red cube and put it in the bowl", "open it"]  # lengths differ
    batched = critic.done(x, tasks)
    alone = torch.cat([critic.done(x[i : i + 1], tasks[i]) for i in range(3)])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)


def rig(vlac, transitions):
    """Make the decoder say a fixed token after each given token: with every attention and MLP
    output zeroed, the last hidden state is the current token's normalised embedding, and
    lm_head row `nxt` points along it."""
    lm = vlac.model.model.language_model
    with torch.no_grad():
        for layer in lm.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        head = torch.zeros_like(vlac.model.lm_head.weight)
        for cur, nxt in transitions.items():
            h = _rms(lm.embed_tokens.weight[cur], lm.norm.weight)
            head[nxt] += 50 * h / h.norm()
        vlac.model.lm_head.weight.copy_(head)


def test_answers_of_a_model_rigged_to_say_a_number(tiny):
    critic = load_critic(tiny, device="cpu", batch_size=2, rich=True)
    tok = critic.vlac.tokenizer
    t = {s: tok.encode(s)[-1] for s in ("\n", "-", "3", "4", "2", "7", "1")}
    end, space = tok.token_id("<|im_end|>"), tok.encode("1")[0]  # "▁", the answers' shared prefix
    rig(critic.vlac, {t["\n"]: t["4"], t["4"]: t["2"], t["2"]: end, space: t["1"]})  # "42", done 1
    episode = frames(4, 3)
    d = critic.delta(episode[:3], episode[1:], TASK)
    torch.testing.assert_close(d, torch.full((3,), 0.42))
    # "4" and "2" are separate tokens here, so the rich form "4.02.0" is no number: plain "42"
    assert critic.vlac.rich_fallbacks == 3 and critic.vlac.parse_failures == 0
    anchored = critic.progress(episode, TASK, "anchored")
    torch.testing.assert_close(anchored, torch.tensor([0.0, 0.42, 0.42, 0.42]))
    chained = critic.progress(episode, TASK, "chained")
    torch.testing.assert_close(chained, chain_progress(torch.full((3,), 0.42)))
    assert (critic.done(episode, TASK) > 0.999).all()
    # "-37": a loss; then an answer that never stops scores 0 and is counted.
    rig(critic.vlac, {t["\n"]: t["-"], t["-"]: t["3"], t["3"]: t["7"], t["7"]: end})
    critic.clear_cache()
    torch.testing.assert_close(critic.delta(episode[:1], episode[1:2], TASK), torch.tensor([-0.37]))
    rig(critic.vlac, {t["\n"]: t["4"], t["4"]: t["4"]})  # "4444..." past max_new_tokens
    critic.clear_cache()
    assert critic.delta(episode[:1], episode[1:2], TASK).tolist() == [0.0]
    assert critic.vlac.parse_failures == 1 and critic.vlac.last_failure is None


def test_one_shot_reference_trajectory(tiny):
    critic = load_critic(tiny, device="cpu", batch_size=2, reference=frames(5, 9), ref_num=3)
    assert critic.reference.shape == (3, 3, 448, 448)
    ids = critic.vlac.prompt_ids(trajectory_query(TASK, 3), 6)
    assert ids.count(92546) == 6 * 256  # 3 references, the beginning, the pair
    d = critic.delta(frames(2, 1), frames(2, 2), TASK)
    assert d.shape == (2,) and (d.abs() <= 1).all()


# ---- the one-line errors ---------------------------------------------------------------------
def test_a_directory_of_another_kind_is_refused_in_one_line(tmp_path, tiny):
    (tmp_path / "empty").mkdir()
    (tmp_path / "openvla").mkdir()
    (tmp_path / "openvla" / "config.json").write_text('{"model_type": "openvla"}')
    (tmp_path / "fitted").mkdir()
    (tmp_path / "fitted" / "config.json").write_text('{"format": "vla-rl-pairwise-critic/1"}')
    for name, found in (("empty", "no config.json"), ("openvla", "model_type 'openvla'"),
                        ("fitted", "model_type None")):  # fmt: skip
        assert not is_vlac_dir(tmp_path / name)
        with pytest.raises(ValueError, match="expected a VLAC checkpoint directory") as err:
            load_critic(tmp_path / name)
        assert found in str(err.value) and "\n" not in str(err.value)
    assert is_vlac_dir(tiny)
    # Tensors outside the mapping, or missing: one line each, never random weights.
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(tiny, bad)
    state = load_file(str(tiny / "model.safetensors"))
    save_file(
        {**state, "vision_model.extra.weight": torch.zeros(2)}, str(bad / "model.safetensors")
    )
    with pytest.raises(ValueError, match="vision_model.extra.weight") as err:
        load_critic(bad, device="cpu")
    assert "\n" not in str(err.value)
    save_file(
        {k: v for k, v in state.items() if k != "mlp1.3.bias"}, str(bad / "model.safetensors")
    )
    with pytest.raises(ValueError, match="missing tensor.*linear_2.bias") as err:
        load_critic(bad, device="cpu")
    assert "\n" not in str(err.value)
    config = json.loads((tiny / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "ps_version": "v1"}))
    with pytest.raises(ValueError, match=r"ps_version 'v1' \(v2\)"):
        load_critic(bad, device="cpu")
