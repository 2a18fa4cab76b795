"""InternLM2's tokenizer, rebuilt from the checkpoint's own files without its remote code.

The published VLAC / InternVL2-2B directory ships a SentencePiece BPE model (`tokenizer.model`),
`tokenizer_config.json` (added tokens, BOS / EOS), `added_tokens.json` (InternVL's `<img>`,
`<IMG_CONTEXT>`, ...) and `tokenization_internlm2.py`, a slow tokenizer that needs the
`sentencepiece` library and `trust_remote_code`. Neither is used here: the model file is a
protobuf, parsed with the `protobuf` package (already installed for tensorboard) through
transformers' bundled schema, and turned into a `tokenizers` BPE the way transformers converts
Llama's SentencePiece models (merges ranked by piece score, byte fallback). The normalizer follows
the model's own `normalizer_spec` flags (dummy "▁" prefix, whitespace escaping, extra-whitespace
removal, a precompiled character map) instead of assuming Llama's, so the same code serves
whatever InternLM2's file sets.

Like the slow tokenizer, text is split at added tokens first and each piece between them is
encoded on its own (so each gets the dummy prefix); ms-swift, which VLAC was trained and is run
with, tokenizes its prompt chunks with add_special_tokens=False and adds BOS itself
(`vlac.chat_ids`). A `tokenizer.json`, where a directory has one, is used as it is.

Exact token-id equality with the remote tokenizer on VLAC's prompts is a parity check to run where
the real files are (see vlac.py's docstring): it cannot be checked from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vla_rl.core.policy import PolicyCheckpointError, read_json_object

NORMAL, CONTROL, USER_DEFINED, BYTE = 1, 3, 4, 6  # SentencePiece piece types
BPE = 2  # trainer_spec.model_type


def read_sentencepiece(path: Path):
    """The ModelProto in a SentencePiece `.model` file (protobuf; nothing executes)."""
    from transformers.convert_slow_tokenizer import import_protobuf

    proto = import_protobuf("VLAC's tokenizer.model is a protobuf").ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as err:  # protobuf's DecodeError and friends
        raise PolicyCheckpointError(f"{path}: not a SentencePiece model ({err})") from None
    return proto


def _normalizer(spec):
    from tokenizers import Regex, normalizers

    steps = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:  # SentencePiece: only the space character
        steps.append(normalizers.Replace(Regex("^ +| +$"), ""))
        steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    return normalizers.Sequence(steps)


def _added_tokens(directory: Path, proto) -> dict[int, tuple[str, bool]]:
    """id -> (content, special) of every added token: the model's control and user-defined
    pieces, tokenizer_config.json's added_tokens_decoder, added_tokens.json, special names."""
    added = {i: (p.piece, p.type == CONTROL) for i, p in enumerate(proto.pieces)
             if p.type in (CONTROL, USER_DEFINED)}  # fmt: skip
    config_path = directory / "tokenizer_config.json"
    config = read_json_object(config_path) if config_path.is_file() else {}
    for key, entry in (config.get("added_tokens_decoder") or {}).items():
        added[int(key)] = (entry["content"], bool(entry.get("special", True)))
    path = directory / "added_tokens.json"
    if path.is_file():
        for content, i in read_json_object(path).items():
            added.setdefault(int(i), (content, True))
    return added


class InternLM2Tokenizer:
    """Encode text to ids (no special tokens added) and decode ids, as InternLM2's tokenizer
    does. bos_id, eos_id: from tokenizer_config.json; add_bos: whether prompts start with BOS
    (its `add_bos_token`, InternLM2's default True)."""

    def __init__(self, tokenizer: Any, config: dict[str, Any]):
        self.tk = tokenizer
        self.add_bos = bool(config.get("add_bos_token", True))
        self.bos_id = self.token_id(_content(config.get("bos_token", "<s>")))
        self.eos_id = self.token_id(_content(config.get("eos_token", "</s>")))
        pad = config.get("pad_token")
        self.pad_id = self.token_id(_content(pad)) if pad else self.eos_id

    def __len__(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tk.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_id(self, content: str) -> int:
        i = self.tk.token_to_id(content)
        if i is None:
            raise PolicyCheckpointError(f"the VLAC tokenizer has no token {content!r}")
        return i


def _content(token: Any) -> str:
    return token["content"] if isinstance(token, dict) else str(token)


def load_tokenizer(directory: str | Path) -> InternLM2Tokenizer:
    """The tokenizer of a VLAC / InternVL2 directory: tokenizer.json when present, else
    tokenizer.model (+ the added tokens) converted as described in the module docstring."""
    from tokenizers import AddedToken, Tokenizer, decoders, models

    directory = Path(directory)
    config_path = directory / "tokenizer_config.json"
    config = read_json_object(config_path) if config_path.is_file() else {}
    if (directory / "tokenizer.json").is_file():
        return InternLM2Tokenizer(Tokenizer.from_file(str(directory / "tokenizer.json")), config)
    path = directory / "tokenizer.model"
    if not path.is_file():
        raise PolicyCheckpointError(
            f"{directory}: no tokenizer.model (nor tokenizer.json); expected InternLM2's "
            "SentencePiece model, as the published VLAC checkpoint has"
        )
    proto = read_sentencepiece(path)
    if proto.trainer_spec.model_type != BPE:
        kind = proto.trainer_spec.model_type
        raise PolicyCheckpointError(f"{path}: a SentencePiece model of type {kind}, not BPE (2)")
    from transformers.tokenization_utils_base import generate_merges

    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    scores = {p.piece: p.score for p in proto.pieces}
    # SentencePiece never merges into or out of control, user-defined, byte or unknown pieces.
    special = [p.piece for p in proto.pieces if p.type != NORMAL]
    merges = generate_merges(vocab, scores, skip_tokens=special)
    unk = proto.pieces[proto.trainer_spec.unk_id].piece
    tk = Tokenizer(models.BPE(vocab, merges, unk_token=unk, fuse_unk=True,
                              byte_fallback=proto.trainer_spec.byte_fallback))  # fmt: skip
    tk.normalizer = _normalizer(proto.normalizer_spec)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if proto.normalizer_spec.add_dummy_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    tk.decoder = decoders.Sequence(steps)
    # In id order, so tokens beyond the model's pieces get exactly their published ids.
    for i, (content, is_special) in sorted(_added_tokens(directory, proto).items()):
        token = AddedToken(content, special=is_special, normalized=False)
        (tk.add_special_tokens if is_special else tk.add_tokens)([token])
        if tk.token_to_id(content) != i:
            raise PolicyCheckpointError(
                f"{directory}: added token {content!r} is listed with id {i} but lands on "
                f"{tk.token_to_id(content)}; tokenizer.model and the added-token files disagree"
            )
    return InternLM2Tokenizer(tk, config)
