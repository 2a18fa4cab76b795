"""VLAC's prompt strings, image preprocessing and answer parsing: pure functions, no model
(vlac.py runs them on the converted checkpoint; its docstring says where each rule comes from).

The strings are VLAC's own (evo_vlac's GAC_model and DataProcessor templates, the system prompt
of `set_system_prompt()`), in ms-swift's internvl2 chat markup, since those are the exact bytes
the model was trained on; tests/test_vlac.py holds them to golden strings byte for byte.
Shapes: N frames, H, W frame size.
"""

from __future__ import annotations

import re

import numpy as np
import torch

SYSTEM_PROMPT = (
    "You are a visual-language assistant designed to interpret spatial and task-related "
    "information from images and text. Provide precise, context-aware responses and actionable "
    "guidance to assist in achieving task objectives."
)
PAIR_QUERY = (
    "Image-1: <image>\nImage-2: <image>\nCompare two images and evaluate whether the second "
    "image is closer to achieving task objectives compared to the first image. + score means the "
    "second image is closer, - score means the first image is closer\nResponse the relative "
    "progressing of target task follow <score>. The target task is: <task> {} </task> <score>"
)
IN_CONTEXT_QUERY = (
    "0% <image>\nThis image is the trajectory beginning of the following two images\n" + PAIR_QUERY
)
DONE_QUERY = (
    "The 1 means yes, the 0 means no. Check if the robot has completed its task: <task> {} "
    "</task> <done>"
)
IMAGE_TAG, IMG_START, IMG_END, IMG_CONTEXT = "<image>", "<img>", "</img>\n", "<IMG_CONTEXT>"
IM_END = "<|im_end|>"
IMAGE_SIZE = 448  # VLAC resizes every frame to this square
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NUMBER = re.compile(r"\s*([+-]?\d+(?:\.\d+)?)\s*")


# ---- prompts ---------------------------------------------------------------------------------
def pair_query(task: str) -> str:
    """VLAC's zero-shot pair query (`prompt_templete['v3']` as GAC_model overrides it)."""
    return PAIR_QUERY.format(task)


def trajectory_query(task: str, num_reference: int) -> str:
    """VLAC's one-shot pair query: the reference trajectory's frames labelled with their percent
    of the way (int() of i / (R - 1) x 100, as VLAC computes it), then `IN_CONTEXT_QUERY`.
    Images: R reference frames, the episode's first frame, then the pair."""
    if num_reference < 2:
        raise ValueError(f"a reference trajectory needs at least 2 frames, got {num_reference}")
    last = num_reference - 1
    steps = "".join(f" {int((i / last) * 100)}% <image>\n" for i in range(num_reference))
    prefix = f"<trajectory> <task> {task} </task>:{steps}</trajectory>"
    return prefix + IN_CONTEXT_QUERY.format(task)


def done_query(task: str) -> str:
    """VLAC's done query (`task_done`), one image (prepended, it has no tag)."""
    return DONE_QUERY.format(task)


def chat_chunks(query: str, num_images: int, system: str = SYSTEM_PROMPT) -> list[str]:
    """The text around the images, as ms-swift's internvl2 template builds it: num_images + 1
    strings; image k's context tokens go between chunk k and chunk k + 1. Tags the query lacks
    are prepended to it (swift's `_add_default_tags`); each tag becomes `<img>` ... `</img>\\n`."""
    tags = query.count(IMAGE_TAG)
    if tags > num_images:
        raise ValueError(f"the query has {tags} {IMAGE_TAG} tags for {num_images} images")
    query = IMAGE_TAG * (num_images - tags) + query
    text = (f"<|im_start|>system\n{system}{IM_END}\n<|im_start|>user\n{query}{IM_END}\n"
            "<|im_start|>assistant\n")  # fmt: skip
    parts = text.split(IMAGE_TAG)
    if len(parts) == 1:
        return parts
    middle = [IMG_END + p + IMG_START for p in parts[1:-1]]
    return [parts[0] + IMG_START, *middle, IMG_END + parts[-1]]


def chat_text(query: str, num_images: int, tokens_per_image: int = 256,
              system: str = SYSTEM_PROMPT, bos: str = "<s>") -> str:  # fmt: skip
    """The whole prompt as one string (BOS text first, every image's context tokens spelled
    out): what the model reads, for golden tests and for reading by eye."""
    return bos + (IMG_CONTEXT * tokens_per_image).join(chat_chunks(query, num_images, system))


# ---- images ----------------------------------------------------------------------------------
def preprocess(frames: torch.Tensor | np.ndarray, size: int = IMAGE_SIZE) -> torch.Tensor:
    """uint8 frames (N, H, W, 3) -> float32 (N, 3, size, size): PIL LANCZOS resize (VLAC's
    `_process_image_to_pil`), then InternVL's transform: / 255, ImageNet mean and std (its
    448 x 448 resize and tiling leave a 448 x 448 image unchanged)."""
    from PIL import Image

    array = frames.cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    resized = [np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.LANCZOS))
               for f in array]  # fmt: skip
    x = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def sample_reference(frames: torch.Tensor, num: int) -> torch.Tensor:
    """VLAC's reference frames: the first, then frame int(i x (F - 1) / (num - 1)) for
    i = 1 .. num - 1 of the F given (num capped at F)."""
    num = min(num, len(frames))
    if num < 2:
        raise ValueError(f"a reference trajectory needs at least 2 frames, got {len(frames)}")
    step = (len(frames) - 1) / (num - 1)
    return frames[[0] + [int(i * step) for i in range(1, num)]]


# ---- answers ---------------------------------------------------------------------------------
def parse_percent(text: str) -> float | None:
    """VLAC's pair answer (a signed number, in percent) or None when `text` is anything else."""
    m = NUMBER.fullmatch(text)
    return float(m.group(1)) if m else None


def rich_text(tokens: list[str], top_tokens: list[list[str]], top_probs: list[list[float]]) -> str:
    """VLAC's `rich` answer: each digit token replaced by "%.1f" of the expectation over the
    digit tokens among its step's top candidates whose probability exceeds 0.1 x the top one
    (top_probs sorted descending); other tokens as they are."""
    out = []
    for token, names, probs in zip(tokens, top_tokens, top_probs):
        if not token.isdigit():
            out.append(token)
            continue
        kept = [(float(n), p) for n, p in zip(names, probs) if n.isdigit() and p > 0.1 * probs[0]]
        weight = sum(p for _, p in kept)
        out.append(f"{sum(v * p for v, p in kept) / weight:.1f}")
    return "".join(out)
