"""DEMO/TESTS ONLY: a tiny random Stable Diffusion pipeline in the official diffusers layout.

The same folder layout (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/, all
safetensors) as the published v1.x / v2.x folders, at a size two CPU cores run in a fraction of a
second, so the prompts mode runs end to end without downloads. Its images are noise: the align
stage finds no face in them, which is what most random pipelines make.
"""

from __future__ import annotations

from pathlib import Path

import torch

DEMO_LATENT_SIZE = 32  # latent side; the VAE doubles it: 64-px images


def byte_vocab() -> dict[str, int]:
    """A CLIP-style byte-level vocabulary with no merges: every prompt tokenizes, one token per byte."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {char: i for i, char in enumerate(alphabet)}
    vocab.update({f"{char}</w>": len(alphabet) + i for i, char in enumerate(alphabet)})
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return vocab


def build_random_pipeline(seed: int = 0, latent_size: int = DEMO_LATENT_SIZE):  # -> StableDiffusionPipeline
    """A random pipeline: 2-level UNet (32/64 channels) with cross-attention, 2-level VAE, 2-layer
    CLIP text model, DDIM scheduler with SD's beta schedule."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
        sample_size=latent_size * 2,
    )
    vocab = byte_vocab()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
    )
    return assemble_pipeline(unet, vae, text_encoder, vocab)


def assemble_pipeline(unet, vae, text_encoder, vocab: dict[str, int]):  # -> StableDiffusionPipeline
    """A pipeline of the given networks with the byte-level tokenizer of `vocab` and a DDIM scheduler
    on SD's beta schedule (bench/diffusion.py builds full-size random networks the same way)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        unet=unet.eval(),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def write_random_diffusion_folder(path: str | Path, seed: int = 0) -> Path:
    """Save a random pipeline as a diffusers folder (safetensors) at `path`."""
    path = Path(path)
    build_random_pipeline(seed).save_pretrained(path, safe_serialization=True)
    return path
