"""Random CLIP checkpoints in the layout of OpenAI's `openai/clip-vit-large-patch14-336` on Hugging Face.

A folder holds `config.json` (a `CLIPConfig`), `model.safetensors` (the `CLIPModel` state dict, key for key
as the official file), `vocab.json` + `merges.txt` (CLIP's byte-level BPE) and `tokenizer_config.json`.
Tests and the `--random-weights` demo use it, because no weights can be downloaded here. The tokenizer is a
real, working one: a small BPE vocabulary learnt on a face-prompt corpus, laid out exactly like CLIP's
(256 byte symbols, the same 256 with `</w>`, the merged symbols, then `<|startoftext|>` and `<|endoftext|>`).

A `RANDOM_WEIGHTS` marker file in the folder tells every loader that the model is random, so it is logged
and recorded in provenance.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel

RANDOM_MARKER = "RANDOM_WEIGHTS"
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"

# The published configuration of OpenAI CLIP ViT-L/14@336px, as found in the Hugging Face folder.
FULL_SIZE_CONFIG: dict = {
    "projection_dim": 768,
    "logit_scale_init_value": 2.6592,
    "text_config": {
        "vocab_size": 49408,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "projection_dim": 768,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1,
    },
    "vision_config": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "image_size": 336,
        "patch_size": 14,
        "hidden_act": "quick_gelu",
        "projection_dim": 768,
    },
}

# Words the tiny tokenizer learns merges from: SFHQ-style prompt vocabulary (docs/sfhq-format.md, "Prompt templates").
_CORPUS = """
a portrait photo of a young old man woman boy girl baby toddler teenage with smiling happy sad angry
surprised neutral calm thoughtful worried expression and long short curly straight wavy bald afro bob cut
black blond blue brown gray green orange pink purple white yellow red hair beard goatee glasses makeup
high resolution image taken with dslr camera sharp focus dramatic lighting face faces person people
asian african european indian latino middle eastern year month years months the in on at background
eyes nose mouth lips smile skin light dark painting render stable diffusion realistic photoreal
"""


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible byte -> printable-character table (the same one GPT-2 uses).

    Printable Latin-1 bytes map to themselves; the others are shifted past 255 so that every byte has a
    visible character and BPE never sees whitespace or control characters.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    # Keep CLIP's ordering: the printable bytes first, then the shifted ones.
    return {b: table[b] for b in printable + [b for b in range(256) if b not in printable]}


def learn_bpe_merges(corpus: str, num_merges: int) -> list[tuple[str, str]]:
    """Learn byte-level BPE merges on `corpus` the way CLIP's vocabulary was built (words end in `</w>`)."""
    byte_chars = bytes_to_unicode()
    words: Counter[tuple[str, ...]] = Counter()
    for word in corpus.lower().split():
        symbols = [byte_chars[b] for b in word.encode("utf-8")]
        symbols[-1] += END_OF_WORD
        words[tuple(symbols)] += 1

    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in words.items():
            for pair in zip(symbols, symbols[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        # Most frequent pair; ties broken alphabetically so the vocabulary is deterministic.
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged_words: Counter[tuple[str, ...]] = Counter()
        for symbols, count in words.items():
            out: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged_words[tuple(out)] += count
        words = merged_words
    return merges


def build_tokenizer_files(num_merges: int = 300) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Return (vocab, merges) in CLIP's layout: bytes, bytes+`</w>`, merged symbols, then the two specials."""
    byte_symbols = list(bytes_to_unicode().values())
    merges = learn_bpe_merges(_CORPUS, num_merges)
    tokens = byte_symbols + [s + END_OF_WORD for s in byte_symbols]
    for left, right in merges:
        merged = left + right
        if merged not in tokens:  # a merge can recreate an existing symbol; keep ids unique
            tokens.append(merged)
    tokens += [START_TOKEN, END_TOKEN]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def tiny_clip_config(
    vocab_size: int, *, image_size: int = 32, patch_size: int = 8, width: int = 32, projection_dim: int = 32
) -> dict:
    """A small CLIPConfig of the same architecture family (ViT vision tower + causal text transformer)."""
    return {
        "projection_dim": projection_dim,
        "logit_scale_init_value": 2.6592,
        "text_config": {
            "vocab_size": vocab_size,
            "hidden_size": width,
            "intermediate_size": 2 * width,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
            "projection_dim": projection_dim,
            # The specials are the last two ids, exactly as in CLIP's own vocabulary.
            "bos_token_id": vocab_size - 2,
            "eos_token_id": vocab_size - 1,
            "pad_token_id": vocab_size - 1,
        },
        "vision_config": {
            "hidden_size": width,
            "intermediate_size": 2 * width,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": image_size,
            "patch_size": patch_size,
            "hidden_act": "quick_gelu",
            "projection_dim": projection_dim,
        },
    }


def write_random_clip_folder(path: str | Path, *, tiny: bool = True, seed: int = 0) -> Path:
    """Write a random CLIP model + working tokenizer in the `openai/clip-vit-large-patch14-336` folder layout.

    `tiny=True` gives a ~100k-parameter model for tests; `tiny=False` the full ViT-L/14@336 shapes
    (~430M parameters, 1.7 GB) for demos, with the tiny tokenizer padded into CLIP's 49,408-entry vocabulary.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_tokenizer_files()
    if tiny:
        config_dict = tiny_clip_config(len(vocab))
    else:
        config_dict = json.loads(json.dumps(FULL_SIZE_CONFIG))
        vocab = _pad_vocab_to_full_size(vocab, config_dict["text_config"]["vocab_size"])
    config = CLIPConfig(**config_dict)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(folder)

    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merge_lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(merge_lines) + "\n", encoding="utf-8")
    tokenizer_config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "bos_token": START_TOKEN,
        "eos_token": END_TOKEN,
        "unk_token": END_TOKEN,
        "pad_token": END_TOKEN,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")
    (folder / RANDOM_MARKER).write_text(f"random CLIP weights, seed {seed}, tiny={tiny}\n", encoding="utf-8")
    return folder


def _pad_vocab_to_full_size(vocab: dict[str, int], size: int) -> dict[str, int]:
    """Insert unused filler symbols before the specials so they sit at CLIP's ids 49406 / 49407."""
    ordinary = [tok for tok in sorted(vocab, key=vocab.get) if tok not in (START_TOKEN, END_TOKEN)]
    fillers = [f"<|unused{i}|>" for i in range(size - 2 - len(ordinary))]
    tokens = ordinary + fillers + [START_TOKEN, END_TOKEN]
    return {tok: i for i, tok in enumerate(tokens)}


def write_random_convnext_folder(path: str | Path, *, seed: int = 0) -> Path:
    """A tiny random ConvNeXt in the `facebook/convnext-xlarge-224-22k` folder layout (config.json +
    model.safetensors, with the ImageNet-22k classifier head the published folder has)."""
    from transformers import ConvNextConfig, ConvNextForImageClassification

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    config = ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], image_size=64, num_labels=10)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ConvNextForImageClassification(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    (folder / RANDOM_MARKER).write_text("random demo weights: features are meaningless\n")
    return folder
