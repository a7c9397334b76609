"""A tiny Llama-architecture model and tokenizer built locally, with no download.

Tests, benchmarks and the local demo need a real causal LM that PEFT can train and vLLM can serve on
a CPU. Nothing can be fetched at run time, so the tokenizer is a word-level vocabulary generated from
a seed and the model is randomly initialised (optionally pretrained briefly by the caller). vLLM's CPU
attention needs ``head_dim >= 64``, hence ``hidden_size = 64 * num_attention_heads``.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
# Fixed words so that generated records, facts and prompts are always in the vocabulary.
BASE_WORDS = [
    "the", "a", "is", "of", "and", "to", "in", "what", "who", "where", "answer", "question",
    "user", "assistant", "fact", "agent", "task", "color", "city", "capital", "number", "likes",
    "lives", "works", "at", "with", "yes", "no", ":", "?", ".", ",",
] + [str(i) for i in range(100)]


@dataclass(frozen=True)
class TinyModelConfig:
    """Shape of the tiny model; defaults fit vLLM's CPU backend and run fast on 2 cores."""

    vocab_words: int = field(default=400, metadata={"help": "generated words besides BASE_WORDS"})
    hidden_size: int = field(default=128, metadata={"help": "model width; 64 * heads"})
    num_attention_heads: int = field(default=2, metadata={"help": "heads of 64 dims each"})
    num_key_value_heads: int = field(default=2, metadata={"help": "KV heads (GQA when fewer)"})
    intermediate_size: int = field(default=256, metadata={"help": "MLP width"})
    num_hidden_layers: int = field(default=2, metadata={"help": "decoder layers"})
    max_position_embeddings: int = field(default=512, metadata={"help": "context length"})
    seed: int = field(default=0, metadata={"help": "seed for vocabulary and weights"})
    extra_words: tuple[str, ...] = field(default=(), metadata={
        "help": "real words appended after the generated ones (e.g. country and city names), so data that is "
                "not pseudo-words still maps each word to one token"})
    head_scale: float = field(default=1.0, metadata={
        "help": "multiplier of the (random) output head: at 1 the largest reachable logit is about 2.5, so a "
                "small LoRA cannot make a learned fact's answer much likelier than the other words; 10 lets it "
                "learn facts in a few dozen steps (what the demo and the quality-gate tests need)"})

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        if self.hidden_size // self.num_attention_heads < 64:
            raise ValueError("vLLM's CPU attention needs head_dim >= 64")
        if not self.head_scale > 0:
            raise ValueError(f"head_scale must be > 0, got {self.head_scale}")
        # The pre-tokenizer splits on whitespace and punctuation: such a word could never be one token.
        bad = [w for w in self.extra_words if not w.isalnum()]
        if bad:
            raise ValueError(f"extra_words must be letters and digits only, got {bad[:5]}")


def vocabulary(cfg: TinyModelConfig) -> list[str]:
    """The deterministic vocabulary: special tokens, fixed words, seeded pseudo-words, then ``extra_words``.

    The extra words come last so that the ids of every other word do not depend on them; one that is
    already a word of the vocabulary is not repeated.
    """
    rng = random.Random(cfg.seed)
    words: list[str] = list(SPECIAL_TOKENS) + list(BASE_WORDS)
    seen = set(words)
    while len(words) < len(SPECIAL_TOKENS) + len(BASE_WORDS) + cfg.vocab_words:
        w = "".join(rng.choice(_LETTERS) for _ in range(rng.randint(3, 7)))
        if w not in seen:
            seen.add(w)
            words.append(w)
    for w in cfg.extra_words:
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def generated_words(cfg: TinyModelConfig) -> list[str]:
    """The seeded pseudo-words (useful as entity names and answers in synthetic data)."""
    start = len(SPECIAL_TOKENS) + len(BASE_WORDS)
    return vocabulary(cfg)[start:start + cfg.vocab_words]


def build_tokenizer(cfg: TinyModelConfig) -> Any:
    """A word-level fast tokenizer over :func:`vocabulary` (splits on whitespace and punctuation)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary(cfg))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )


def build_model(cfg: TinyModelConfig) -> Any:
    """A randomly initialised ``LlamaForCausalLM`` of the configured shape (float32)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    n_vocab = len(vocabulary(cfg))
    lcfg = LlamaConfig(
        vocab_size=n_vocab,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        dtype="float32",
    )
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(lcfg)
    if cfg.head_scale != 1.0:
        with torch.no_grad():
            model.lm_head.weight.mul_(cfg.head_scale)
    model.eval()
    return model


def save_tiny_model(path: str | Path, cfg: TinyModelConfig | None = None, model: Any = None) -> Path:
    """Write model weights, config and tokenizer to ``path`` in Hugging Face format.

    Args:
        path: target directory (created).
        cfg: model shape; defaults to :class:`TinyModelConfig`.
        model: an already built (e.g. pretrained) model to save instead of a fresh one.

    Returns:
        The directory, loadable by ``transformers``, PEFT and vLLM.
    """
    cfg = cfg or TinyModelConfig()
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else build_model(cfg)
    model.save_pretrained(out, safe_serialization=True)
    build_tokenizer(cfg).save_pretrained(out)
    (out / "dynamiclora-tiny.json").write_text(json.dumps(asdict(cfg), indent=2))
    return out


def ensure_tiny_model(path: str | Path, cfg: TinyModelConfig | None = None) -> Path:
    """Create the tiny model at ``path`` unless an identical one is already there."""
    cfg = cfg or TinyModelConfig()
    out = Path(path)
    marker = out / "dynamiclora-tiny.json"
    if marker.exists():
        # Compared through JSON (a tuple comes back as a list); a marker older than extra_words has none.
        stored = {"extra_words": [], **json.loads(marker.read_text())}
        if stored == json.loads(json.dumps(asdict(cfg))):
            return out
    return save_tiny_model(out, cfg)
